"""What the machine runs fast, for the settings chosen automatically (``trainer.precision: auto``).

bf16 autocast pays off only where bf16 matrix maths is native: on a CPU without AVX512-BF16 or AMX, oneDNN
emulates it, and the default training step runs 16x slower than in float32 (benchmarks/README.md).
"""

from __future__ import annotations

import torch

from keypointdet.log import get_logger

log = get_logger(__name__)

AUTO = "auto"


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` (``"cpu"`` or ``"cuda"``) has native bf16 matrix maths: Ampere-class or newer
    GPUs, CPUs with AVX512-BF16 or AMX tiles."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def uses_cuda(accelerator: str) -> bool:
    """Whether a Lightning ``accelerator`` setting (``auto``, ``cpu``, ``gpu``, ``cuda``) trains on CUDA here."""
    return accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available())


def auto_precision(accelerator: str) -> str:
    """The Lightning precision for ``accelerator``: ``bf16-mixed`` where bf16 is native, ``16-mixed`` on
    older GPUs (V100 class), ``32`` on CPUs without native bf16."""
    device_type = "cuda" if uses_cuda(accelerator) else "cpu"
    if native_bf16(device_type):
        return "bf16-mixed"
    return "16-mixed" if device_type == "cuda" else "32"


def resolved_precision(precision: str | int, accelerator: str) -> str | int:
    """``precision`` with ``"auto"`` resolved by :func:`auto_precision` (and logged when so)."""
    if precision != AUTO:
        return precision
    chosen = auto_precision(accelerator)
    log.info(
        f"trainer.precision=auto: {chosen} (native bf16 on this {'GPU' if uses_cuda(accelerator) else 'CPU'}: "
        f"{chosen == 'bf16-mixed'}); set trainer.precision to override"
    )
    return chosen
