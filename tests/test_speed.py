"""Precision and memory layout of inference (``inference.*``) and of training (``channels_last``)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from detector_checkpoint import compose_tiny

from keypointdet.detectors import CenterNet
from keypointdet.models.backbones.resnet import ResNet
from keypointdet.runs.train import build
from keypointdet.speed import InferenceSettings


@pytest.fixture(scope="module")
def detector() -> CenterNet:
    torch.manual_seed(0)
    return CenterNet(ResNet(18, neck_channels=[16, 16, 16]), num_classes=3, head_channels=8).eval()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="inference.precision must be one of"):
        InferenceSettings(precision="16")


def test_channels_last_changes_the_layout_not_the_outputs(detector):
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = InferenceSettings().forward(InferenceSettings().prepare(detector), images)[-1]
        fast = InferenceSettings(channels_last=True)
        outputs = fast.forward(fast.prepare(detector), images)[-1]
    assert next(detector.parameters()).is_contiguous(memory_format=torch.channels_last)
    for name, value in expected.items():
        assert outputs[name].is_contiguous()  # the maps come back in the decoders' (NCHW) layout
        torch.testing.assert_close(outputs[name], value, rtol=1e-4, atol=1e-4)
    InferenceSettings().prepare(detector)


def test_precision_overrides_an_enclosing_autocast(detector):
    """``32`` runs float32 even inside the trainer's bf16 autocast (validation under ``bf16-mixed``); ``bf16``
    runs the convolutions in bfloat16, within bfloat16 rounding of float32."""
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        exact = InferenceSettings("32").forward(detector, images)[-1]
        rounded = InferenceSettings("bf16").forward(detector, images)[-1]
    with torch.no_grad():
        reference = detector(images)[-1]
    for name, value in reference.items():
        assert exact[name].dtype == torch.float32 and rounded[name].dtype == torch.bfloat16
        torch.testing.assert_close(exact[name], value, rtol=0, atol=0)
        scale = value.abs().max().item()
        assert (rounded[name].float() - value).abs().max().item() <= 0.05 * scale


class StepLosses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def train_steps(tiny_dataset, tmp_path, channels_last: bool) -> tuple[list[float], torch.Tensor]:
    """The loss of each of three training steps of the tiny CenterNet, and its first convolution's weight."""
    cfg = compose_tiny(
        tiny_dataset, tmp_path / str(channels_last), "centernet", "~callbacks", "trainer.max_steps=3",
        "trainer.limit_val_batches=0", "trainer.precision=32", f"channels_last={str(channels_last).lower()}",
    )  # fmt: skip
    torch.manual_seed(0)
    datamodule, module, trainer = build(cfg)
    recorder = StepLosses()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    first_conv = next(p for p in module.detector.parameters() if p.dim() == 4)
    return recorder.losses, first_conv


def test_channels_last_training_is_numerically_equivalent(tiny_dataset, tmp_path):
    """The same batches and initial weights: the first loss equals NCHW's to float rounding; the next ones,
    after Adam steps (which amplify rounding in gradients near zero to whole steps), stay within 2%."""
    losses, _ = train_steps(tiny_dataset, tmp_path, channels_last=False)
    fast_losses, first_conv = train_steps(tiny_dataset, tmp_path, channels_last=True)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    assert len(fast_losses) == len(losses) == 3
    assert fast_losses[0] == pytest.approx(losses[0], rel=1e-5)
    assert fast_losses == pytest.approx(losses, rel=2e-2)
