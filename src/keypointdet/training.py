"""The training run behind ``train.py``: everything is instantiated from the Hydra config."""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from keypointdet.evaluation import format_table


def _logged_in_to_wandb() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def default_wandb_mode() -> None:
    """W&B runs offline (files under the run directory, ``wandb sync`` later) unless the user is logged in."""
    if "WANDB_MODE" not in os.environ and not _logged_in_to_wandb():
        os.environ["WANDB_MODE"] = "offline"


def instantiate_group(config: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``."""
    if not config:
        return []
    return [instantiate(node) for node in config.values() if isinstance(node, DictConfig) and "_target_" in node]


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain, resolved values for the loggers (Hydra's own node left out)."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(config), resolve=True)


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """DataModule, detector (classes from the annotation file) and Trainer of a config."""
    datamodule = instantiate(cfg.data)
    categories = datamodule.categories()
    model = instantiate(
        cfg.model,
        _convert_="object",
        num_classes=len(categories),
        category_ids=[cat["id"] for cat in categories],
        class_names=[cat["name"] for cat in categories],
    )
    if cfg.get("logger") and "wandb" in cfg.logger:
        default_wandb_mode()
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(resolved_config(cfg))
    return datamodule, model, trainer


def final_metrics(
    cfg: DictConfig, datamodule: pl.LightningDataModule, model: pl.LightningModule, trainer: pl.Trainer
) -> dict[str, float]:
    """Validation metrics of the best checkpoint (or of the last validation when there is none)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("evaluate_best") and best:
        # weights_only=False: our own checkpoints hold the optimizer / scheduler partials of the config.
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=False)
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}


@rank_zero_only
def report(metrics: dict[str, float], output_dir: Path) -> None:
    """Write ``metrics.json`` and print the COCO table and the one-line summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(format_table({name.removeprefix("val/"): value for name, value in metrics.items()}))
    print(f"val/mAP={metrics.get('val/mAP', float('nan')):.4f} val/mAP50={metrics.get('val/mAP50', float('nan')):.4f}")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured detector, evaluate it, write ``metrics.json``; returns the final val metrics."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
    metrics = final_metrics(cfg, datamodule, model, trainer)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # its exit messages come now, so the summary line is the last one
    report(metrics, Path(cfg.paths.output_dir))
    return metrics
