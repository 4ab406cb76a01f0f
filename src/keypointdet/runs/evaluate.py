"""The evaluation run behind ``eval.py``: COCO metrics of a checkpoint on a validation set, on any devices.

By default the checkpoint's own DataModule (its saved hyper-parameters: annotation files, input size) is
rebuilt; ``data=...`` evaluates on another COCO-format dataset instead. The images are always normalised
as the checkpoint's detector expects (its stored ``mean`` / ``std``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from keypointdet.checkpoints import checkpoint_metadata, detector_from_checkpoint, load_checkpoint
from keypointdet.data.datamodule import BaseDetectionDataModule, DetectionDataModule, VOCDataModule
from keypointdet.inference import apply_nms_overrides
from keypointdet.metrics import Detection
from keypointdet.module import DetectionModule
from keypointdet.runs.train import report


def build_datamodule(cfg: DictConfig, checkpoint: Mapping[str, Any], ckpt_path: str) -> BaseDetectionDataModule:
    """``cfg.data`` when given, else the DataModule the checkpoint was trained with at the input size it
    trained at; normalised as the checkpoint's detector expects."""
    record = checkpoint_metadata(checkpoint, ckpt_path)["input"]
    normalisation = {key: record[key] for key in ("mean", "std")}
    if cfg.get("data"):
        return instantiate(cfg.data, _convert_="all", **normalisation)
    hyper_parameters = checkpoint.get("datamodule_hyper_parameters")
    if hyper_parameters is None:
        raise ValueError(f"{ckpt_path} has no datamodule_hyper_parameters: give the dataset with data=...")
    # VOC is the DataModule with image sets; every other dataset is COCO-format files
    datamodule_class = VOCDataModule if "train_sets" in hyper_parameters else DetectionDataModule
    return datamodule_class(**{**hyper_parameters, **normalisation, "input_size": record["input_size"]})


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
    checkpoint = load_checkpoint(cfg.ckpt_path)
    detector = apply_nms_overrides(detector_from_checkpoint(checkpoint, cfg.ckpt_path), cfg.get("model"))
    datamodule = build_datamodule(cfg, checkpoint, cfg.ckpt_path)
    datamodule.configure_targets(None, detector.stride, detector.size_divisor)
    tta = cfg.model.get("tta") if cfg.get("model") else None
    model = DetectionModule(
        detector, datamodule.ground_truth, datamodule.input_record, tta=tta, voc07=datamodule.voc07_metric,
        keypoint_sigmas=datamodule.keypoint_sigmas,
        inference=cfg.get("inference"),
    )  # fmt: skip
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    output_dir = Path(cfg.paths.output_dir)
    write_results(model.metric.results, output_dir)
    report(metrics, output_dir)
    return metrics
