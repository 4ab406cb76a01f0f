"""Small checkpoints of both detectors, written by the real training code, for the inference tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from conftest import compose_config
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from keypointdet.checkpoints import checkpoint_metadata, load_checkpoint, save_detector
from keypointdet.inference import load_detector
from keypointdet.runs.train import build

ROOT = Path(__file__).resolve().parents[1]

# Tiny, fast variants of each model's default configuration.
TINY = {
    "centernet": ("model=centernet", "backbone=resnet18", "backbone.neck_channels=[32,32,32]", "model.head_channels=16"),
    "cornernet": ("model=cornernet", "model.pool_channels=16"),
    "centernet_pose": (
        "model=centernet_pose", "backbone=resnet18", "backbone.neck_channels=[32,32,32]", "model.head_channels=16"
    ),
}


def compose_tiny(dataset: Path, output_dir: Path, model: str, *overrides: str) -> DictConfig:
    """``conf/train.yaml`` for ``model`` (a :data:`TINY` key) on the tiny dataset: CPU, 64 px, no logger."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    tiny = [
        "trainer=cpu", "logger=none", f"data.root={dataset}", "data.num_workers=0", "data.batch_size=4",
        "data.val_batch_size=4", "data.input_size=64", "trainer.precision=32",
    ]  # fmt: skip
    cfg = compose_config([*TINY[model], *tiny, *overrides], output_dir)
    GlobalHydra.instance().clear()
    return cfg


def tiny_checkpoint(dataset: Path, directory: Path, model: str) -> Path:
    """Train ``model`` for one step on the tiny dataset and save ``directory/<model>.ckpt``."""
    cfg = compose_tiny(
        dataset, directory / "run", model, "~callbacks", "trainer.max_steps=1", "trainer.limit_val_batches=0"
    )
    datamodule, detector, trainer = build(cfg)
    trainer.fit(detector, datamodule=datamodule)
    path = directory / f"{model}.ckpt"
    trainer.save_checkpoint(path)
    return path


def sharpened(ckpt_path, directory):
    """The checkpoint with the output layers of its heads scaled up. A detector trained for one step scores
    every cell about the same, so that rounding differences between runtimes (1e-6) reorder near-equal
    detections; scaled up, the scores are well apart and the detections of every runtime must match."""
    checkpoint = load_checkpoint(ckpt_path)
    detector = load_detector(ckpt_path)
    with torch.no_grad():
        for name, parameter in detector.heads.named_parameters():
            if name.endswith("2.weight"):  # the 1x1 output conv of every prediction branch
                parameter.mul_(40)
    path = directory / f"sharp_{ckpt_path.name}"
    return save_detector(path, detector, checkpoint_metadata(checkpoint, ckpt_path)["input"])
