"""How the network runs: numeric precision and memory layout of inference, memory layout of training.

``inference.precision`` (``32`` | ``bf16``) and ``inference.channels_last`` (``conf/inference``) apply to
validation, ``eval.py`` and ``predict.py`` alike: the forward pass in bfloat16 autocast or float32 (the
decoders always compute in float32), the detector and its input images in channels-last (NHWC) or the
default (NCHW) memory layout. Channels-last changes only where values sit in memory, not the maths; bf16
rounds every convolution. The defaults are the fastest setting that keeps the default checkpoints' val/mAP
within 0.002 (the measurement: ``benchmarks/README.md``, "The fastest correct default").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

PRECISIONS = ("32", "bf16")


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory layout of images and convolution weights: NHWC with ``channels_last``, NCHW otherwise."""
    return torch.channels_last if channels_last else torch.contiguous_format


@dataclass(frozen=True)
class InferenceSettings:
    """``inference.*``: the precision and memory layout of the forward pass at inference.

    Args:
        precision: ``"32"`` (float32) or ``"bf16"`` (bfloat16 autocast; an enclosing autocast, e.g. the
            trainer's ``bf16-mixed`` around validation, is overridden either way).
        channels_last: run the detector and its input images in the channels-last memory layout.
    """

    precision: str = "32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", str(self.precision))
        if self.precision not in PRECISIONS:
            raise ValueError(f"inference.precision must be one of {PRECISIONS}, got {self.precision!r}")

    def prepare(self, detector: nn.Module) -> nn.Module:
        """Put ``detector``'s parameters in this layout (in place; nothing is copied when they already are)."""
        return detector.to(memory_format=memory_format(self.channels_last))

    def forward(self, detector: nn.Module, images: Tensor) -> list[dict[str, Tensor]]:
        """``detector(images)`` (``images [B, 3, H, W]``) in this precision and layout; the detector must have
        been :meth:`prepare`-d. The maps come back in the default (NCHW) layout: the decoders' peak search,
        top-k and gathers run 2-2.5x slower on channels-last maps (``benchmarks/README.md``)."""
        images = images.contiguous(memory_format=memory_format(self.channels_last))
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            stacks = detector(images)
        if not self.channels_last:
            return stacks
        return [{name: value.contiguous() for name, value in outputs.items()} for outputs in stacks]
