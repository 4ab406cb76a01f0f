"""Small checkpoints of both detectors, written by the real training code, for the inference tests."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from keypointdet.training import build

ROOT = Path(__file__).resolve().parents[1]

# Tiny, fast variants of each model's default configuration.
TINY = {
    "centernet": ("model=centernet", "backbone=resnet18", "backbone.neck_channels=[32,32,32]", "model.head_channels=16"),
    "cornernet": ("model=cornernet", "model.pool_channels=16"),
}


def compose_tiny(dataset: Path, output_dir: Path, model: str, *overrides: str) -> DictConfig:
    """``conf/train.yaml`` for ``model`` (a :data:`TINY` key) on the tiny dataset: CPU, 64 px, no logger."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            return_hydra_config=True,
            overrides=[
                *TINY[model], "trainer=cpu", "logger=none", f"data.root={dataset}", "data.num_workers=0",
                "data.batch_size=4", "data.val_batch_size=4", "data.input_size=64", "trainer.precision=32",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
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
