"""``trainer.precision: auto``: bf16 autocast only where bf16 is native."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keypointdet import hardware
from keypointdet.hardware import auto_precision, native_bf16, resolved_precision
from keypointdet.runs.train import build


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (read independently of torch)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_native_cpu_bf16_follows_the_kernels_cpu_flags():
    flags = cpu_flags()
    assert native_bf16("cpu") == bool({"avx512_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize(
    ("accelerator", "cuda", "native", "expected"),
    [
        ("cpu", False, True, "bf16-mixed"),
        ("cpu", False, False, "32"),
        ("auto", False, False, "32"),
        ("cpu", True, False, "32"),  # a GPU present but not asked for: the CPU decides
        ("gpu", True, True, "bf16-mixed"),
        ("auto", True, False, "16-mixed"),
        ("cuda", True, False, "16-mixed"),
    ],
)
def test_auto_precision(monkeypatch, accelerator, cuda, native, expected):
    asked: list[str] = []

    def fake_native(device_type: str) -> bool:
        asked.append(device_type)
        return native

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(hardware, "native_bf16", fake_native)
    assert auto_precision(accelerator) == expected
    assert asked == ["cuda" if cuda and accelerator != "cpu" else "cpu"]


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type: False)
    assert resolved_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolved_precision(32, "cpu") == 32
    assert resolved_precision("auto", "cpu") == "32"


@pytest.mark.parametrize("native", [True, False])
def test_the_default_trainer_gets_the_machines_precision(compose_train, monkeypatch, native):
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type: native)
    cfg = compose_train("trainer.max_steps=1")
    assert cfg.trainer.precision == "auto"
    _, _, trainer = build(cfg)
    assert trainer.precision == ("bf16-mixed" if native else "32-true")
