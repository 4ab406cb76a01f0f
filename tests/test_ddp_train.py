"""DDP on CPU (trainer=ddp_cpu, 2 gloo processes): the gradient does not depend on how a batch is split."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from keypointdet.data.datamodule import collate
from keypointdet.runs.train import build

TINY_HOURGLASS = (
    "backbone.dims=[16,16,24,32]", "backbone.modules=[1,1,1,1]", "backbone.stem_channels=16",
    "backbone.out_channels=16", "model.head_channels=16",
)
DETECTORS = {
    # two stacks: the intermediate-supervision average is part of what is split
    "centernet": ("model=centernet", "backbone=hourglass_small", *TINY_HOURGLASS),
    "cornernet": ("model=cornernet", "model.pool_channels=16", *TINY_HOURGLASS),
}


class GradientRecorder(pl.Callback):
    """Freezes BatchNorm (SyncBatchNorm needs GPUs) and saves the first step's averaged gradients (rank 0)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for module in pl_module.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if trainer.global_rank == 0 and not self.path.exists():
            gradients = {name: parameter.grad.detach().clone() for name, parameter in pl_module.named_parameters()}
            torch.save(gradients, self.path)


def one_step_gradients(compose_train, overrides: tuple[str, ...], model, samples, path: Path) -> dict:
    """Gradients of one training step of ``model`` on ``samples`` (the whole batch, split over the devices)."""
    cfg = compose_train(*overrides, "trainer.max_steps=1", "trainer.limit_val_batches=0", "trainer.precision=32",
                        "~callbacks")
    _, _, trainer = build(cfg)
    trainer.callbacks.append(GradientRecorder(path))
    per_device = len(samples) // trainer.world_size
    loader = DataLoader(samples, batch_size=per_device, shuffle=False, collate_fn=collate)
    trainer.fit(model, train_dataloaders=loader)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_two_processes_with_half_batches_give_the_gradient_of_one_process(compose_train, tmp_path, detector):
    overrides = (*DETECTORS[detector], "data.input_size=64")
    datamodule, model, _ = build(compose_train(*overrides))
    detector = model.detector
    datamodule.configure_targets(detector.encoder, detector.stride, detector.size_divisor)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    # (index, augmentation seed): the same samples whatever the global random state
    by_objects = sorted((dataset[(index, 0)] for index in range(len(dataset))), key=lambda s: -int(s["mask"].sum()))
    # ranks take every other sample: the two most crowded images on rank 0, the two emptiest on rank 1, so the
    # halves differ in their normalisers and per-device normalisation would give a different gradient
    samples = [by_objects[0], by_objects[-1], by_objects[1], by_objects[-2]]
    objects = [sum(int(sample["mask"].sum()) for sample in samples[rank::2]) for rank in (0, 1)]
    assert objects[0] != objects[1]

    single = one_step_gradients(compose_train, (*overrides, "trainer=cpu"), copy.deepcopy(model), samples,
                                tmp_path / "single.pt")
    distributed = one_step_gradients(compose_train, (*overrides, "trainer=ddp_cpu"), copy.deepcopy(model), samples,
                                     tmp_path / "ddp.pt")
    assert single.keys() == distributed.keys()
    assert any(gradient.abs().max() > 0 for gradient in single.values())
    for name, gradient in single.items():
        scale = float(gradient.abs().max()) + 1e-12
        torch.testing.assert_close(distributed[name], gradient, rtol=1e-4, atol=1e-5 * scale, msg=name)
