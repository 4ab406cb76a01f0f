"""The evaluation run behind ``eval.py``: COCO metrics of a checkpoint on a validation set, on any devices.

By default the checkpoint's own DataModule (its saved hyper-parameters: annotation files, input size,
normalisation) is rebuilt; ``data=...`` evaluates on another COCO-format dataset instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from keypointdet.data.datamodule import DetectionDataModule, VOCDataModule
from keypointdet.evaluation import Detection
from keypointdet.inference import load_checkpoint, load_detector
from keypointdet.training import report


def build_datamodule(cfg: DictConfig, ckpt_path: str) -> pl.LightningDataModule:
    """``cfg.data`` when given, else the DataModule the checkpoint was trained with."""
    if cfg.get("data"):
        return instantiate(cfg.data)
    hyper_parameters = load_checkpoint(ckpt_path).get("datamodule_hyper_parameters")
    if hyper_parameters is None:
        raise ValueError(f"{ckpt_path} has no datamodule_hyper_parameters: give the dataset with data=...")
    # VOC is the DataModule with image sets; every other dataset is COCO-format files
    datamodule_class = VOCDataModule if "train_sets" in hyper_parameters else DetectionDataModule
    return datamodule_class(**hyper_parameters)


@rank_zero_only
def write_results(results: list[Detection], output_dir: Path) -> Path:
    """The COCO results file (scores at full precision: rounding creates ties that change AP)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "results.json"
    path.write_text(json.dumps(results))
    return path


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg.ckpt_path``; print the COCO table, write ``metrics.json`` and ``results.json``.

    Returns the ``val/*`` metrics, identical on every rank.
    """
    if cfg.get("ckpt_path") is None:
        raise ValueError("give the checkpoint to evaluate: python eval.py ckpt_path=FILE")
    tta = OmegaConf.to_container(cfg.model.tta, resolve=True) if cfg.get("model") else None
    model = load_detector(cfg.ckpt_path, tta=tta)
    datamodule = build_datamodule(cfg, cfg.ckpt_path)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    output_dir = Path(cfg.paths.output_dir)
    write_results(model.evaluator.results, output_dir)
    report(metrics, output_dir)
    return metrics
