"""The training run behind ``train.py``: everything is instantiated from the Hydra config."""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from keypointdet.callbacks import LatestCheckpoint
from keypointdet.checkpoints import initialise_from, load_checkpoint
from keypointdet.config_checks import check_training_config
from keypointdet.data.datamodule import BaseDetectionDataModule
from keypointdet.detectors import KeypointDetector
from keypointdet.diagnosis import POOR_MAP, LearningCheck, data_findings, paragraph
from keypointdet.hardware import resolved_precision
from keypointdet.log import get_logger
from keypointdet.metrics import format_table
from keypointdet.module import DetectionModule
from keypointdet.schedules import TimeBudgetSchedule
from keypointdet.tools.dataset_stats import dataset_statistics

log = get_logger(__name__)


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


def in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def swept_keys(hydra: DictConfig) -> set[str]:
    """The keys a sweep varies: the sweeper's ``params`` (Optuna's search space) and the command line's
    sweep overrides (``key=a,b``), which the basic sweeper records in ``<sweep dir>/multirun.yaml``."""
    keys = set(hydra.sweeper.get("params") or {})
    multirun_file = Path(hydra.sweep.dir) / "multirun.yaml"
    if multirun_file.is_file():
        task = OmegaConf.load(multirun_file).hydra.overrides.task
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(list(task)) if o.is_sweep_override()}
    return keys


def configure_sweep_wandb(cfg: DictConfig) -> None:
    """In a multirun, group each job's W&B run by sweep and tag it with the job's values of the swept keys.

    ``logger.wandb.group`` defaults to the sweep directory's name; tags such as ``model.loss.alpha=2`` are
    added to ``logger.wandb.tags`` (every override of the job when the swept keys are not known). The
    other overrides are in the logged config.
    """
    if not (in_multirun() and cfg.get("logger") and "wandb" in cfg.logger):
        return
    hydra = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    keys = swept_keys(hydra)
    tags = [o.input_line for o in overrides if not keys or o.key_or_group in keys]
    with open_dict(cfg):
        wandb_cfg = cfg.logger.wandb
        if wandb_cfg.get("group") is None:
            wandb_cfg.group = Path(hydra.sweep.dir).name
        # W&B rejects tags longer than 64 characters.
        wandb_cfg.tags = list(dict.fromkeys([*(wandb_cfg.get("tags") or []), *(tag for tag in tags if len(tag) <= 64)]))


def check_multirun_strategy(trainer: pl.Trainer) -> None:
    """Refuse a Hydra multirun with a strategy that re-runs the command line to start its processes.

    Lightning's ``ddp`` (and ``strategy=auto`` on several GPUs) starts ranks 1..N-1 by running the
    command again: inside ``python train.py -m ...`` every rank would run the whole sweep.
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    if (
        in_multirun()
        and trainer.num_devices > 1
        and isinstance(launcher, _SubprocessScriptLauncher)
        and not trainer.strategy.cluster_environment.creates_processes_externally
    ):
        raise ValueError(
            "a Hydra multirun (-m) cannot use the 'ddp' strategy on several devices: it starts the other "
            "processes by re-running the command line, so each would re-run the sweep. Use "
            "trainer.strategy=ddp_spawn (processes started by torch.multiprocessing), or launch one process "
            "per device from outside: hydra/launcher=slurm on a SLURM cluster, or torchrun per job."
        )


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


# Keys of ``model`` that configure training and evaluation; the others are the detector's arguments.
TRAINING_KEYS = ("optimizer", "scheduler", "scheduler_interval", "tta", "init_from")


def build_detector(model: DictConfig, backbone: DictConfig, categories: list[dict[str, Any]]) -> KeypointDetector:
    """The detector of ``model`` (its ``_target_`` and arguments) on ``backbone``, with the dataset's classes."""
    # resolved here: once copied out of the config tree, interpolations such as ${data.batch_size} cannot be
    arguments = {
        key: OmegaConf.to_container(model[key], resolve=True) if OmegaConf.is_config(model[key]) else model[key]
        for key in model
        if key not in TRAINING_KEYS
    }
    return instantiate(
        arguments,
        _recursive_=False,
        backbone=backbone,
        num_classes=len(categories),
        category_ids=[cat["id"] for cat in categories],
        class_names=[cat["name"] for cat in categories],
    )


def build(cfg: DictConfig) -> tuple[BaseDetectionDataModule, DetectionModule, pl.Trainer]:
    """DataModule, LightningModule (detector with the dataset's classes) and Trainer of a config, wired
    explicitly: the detector's target encoder goes to the DataModule, the validation annotations to the metric."""
    datamodule: BaseDetectionDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    detector = build_detector(cfg.model, cfg.backbone, datamodule.categories())
    if cfg.model.get("init_from"):
        initialise_from(detector, cfg.model.init_from)
    datamodule.configure_targets(detector.encoder, detector.stride, detector.size_divisor)
    model = DetectionModule(
        detector,
        ground_truth=datamodule.ground_truth,
        input_record=datamodule.input_record,
        optimizer=cfg.model.optimizer,
        scheduler=cfg.model.get("scheduler"),
        scheduler_interval=cfg.model.get("scheduler_interval", "epoch"),
        tta=cfg.model.get("tta"),
        voc07=datamodule.voc07_metric,
        keypoint_sigmas=datamodule.keypoint_sigmas,
        inference=cfg.get("inference"),
        channels_last=cfg.get("channels_last", False),
    )
    if cfg.get("logger") and "wandb" in cfg.logger:
        default_wandb_mode()
        configure_sweep_wandb(cfg)
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    callbacks = [*instantiate_group(cfg.get("callbacks")), TimeBudgetSchedule(), LearningCheck()]
    precision = resolved_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision)
    check_multirun_strategy(trainer)
    global_batch_size = cfg.data.batch_size * trainer.num_devices * trainer.num_nodes
    log.info(
        f"global batch {global_batch_size} = data.batch_size {cfg.data.batch_size} x {trainer.num_devices} devices "
        f"x {trainer.num_nodes} nodes; model.optimizer.lr applies to it as configured"
    )
    for logger in loggers:
        logger.log_hyperparams({**resolved_config(cfg), "global_batch_size": global_batch_size})
    return datamodule, model, trainer


def final_metrics(
    cfg: DictConfig, datamodule: pl.LightningDataModule, model: pl.LightningModule, trainer: pl.Trainer
) -> dict[str, float]:
    """Validation metrics of the best checkpoint (or of the last validation when there is none; of the final
    weights when no validation ran, e.g. in a time budget shorter than ``check_val_every_n_epoch`` epochs)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("evaluate_best") and best:
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
    elif "val/mAP" not in trainer.callback_metrics:
        trainer.validate(model, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}


def log_per_class_ap(loggers: list[Logger], metrics: dict[str, float]) -> None:
    """The final per-class AP (``val/AP/<class name>``) as a W&B table ``val/AP_per_class``."""
    rows = [[name.removeprefix("val/AP/"), value] for name, value in metrics.items() if name.startswith("val/AP/")]
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rows:
            logger.log_table(key="val/AP_per_class", columns=["class", "AP"], data=rows)


def finish_wandb(exit_code: int) -> None:
    """End this process's W&B run (exit code 1 marks it failed), so the next job of a sweep starts its own.

    The run is W&B's current one rather than the logger's: ``fast_dev_run`` swaps the trainer's loggers
    for dummies after the run was created with the config.
    """
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def learning_check(
    datamodule: BaseDetectionDataModule, model: DetectionModule, trainer: pl.Trainer, metrics: dict[str, float]
) -> str | None:
    """The learning check's paragraph (:mod:`keypointdet.diagnosis`) when ``val/mAP`` is below ``POOR_MAP``."""
    mean_ap = metrics.get("val/mAP")
    if mean_ap is None or mean_ap >= POOR_MAP or datamodule.train_dataset is None:
        return None
    detector, dataset = model.detector, datamodule.train_dataset
    input_size = datamodule.input_record()["input_size"]
    stats = dataset_statistics(dataset, input_size, detector.stride, **detector.encoder.settings())
    findings = data_findings(dataset, input_size, detector.stride, stats)
    for callback in trainer.callbacks:
        if isinstance(callback, LearningCheck):
            findings += callback.findings(model.optimizer_config["lr"])
    return paragraph(findings, mean_ap)


@rank_zero_only
def report(metrics: dict[str, float], output_dir: Path) -> None:
    """Write ``metrics.json`` and print the COCO table and the one-line summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(format_table({name.removeprefix("val/"): value for name, value in metrics.items()}))
    nan = float("nan")
    summary = f"val/mAP={metrics.get('val/mAP', nan):.4f} val/mAP50={metrics.get('val/mAP50', nan):.4f}"
    if "val/kp_mAP" in metrics:
        summary += f" val/kp_mAP={metrics['val/kp_mAP']:.4f} val/kp_mAP50={metrics['val/kp_mAP50']:.4f}"
    print(summary)


def resume_command(trainer: pl.Trainer) -> str:
    """How to continue a stopped run (the run's other overrides unchanged)."""
    latest = [callback for callback in trainer.callbacks if isinstance(callback, LatestCheckpoint)]
    if not latest:
        return "no resumable checkpoint is configured (callbacks.last_checkpoint)"
    return f"resume with: python train.py ckpt_path={latest[0].last_path} [the run's overrides]"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured detector, evaluate it, write ``metrics.json``; returns the final val metrics."""
    check_training_config(cfg)
    if cfg.get("ckpt_path") is not None:
        load_checkpoint(cfg.ckpt_path)  # a truncated or unsafe file: an error naming it, not a pickle traceback
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics = final_metrics(cfg, datamodule, model, trainer)
        log_per_class_ap(trainer.loggers, metrics)
        diagnosis = learning_check(datamodule, model, trainer, metrics)
        if diagnosis:
            log.warning(diagnosis)
    except SIGTERMException as stop:
        finish_wandb(exit_code=1)
        raise SystemExit(f"stopped by SIGTERM / SIGINT; {resume_command(trainer)}") from stop
    except BaseException:
        finish_wandb(exit_code=1)
        raise
    finish_wandb(exit_code=0)  # its exit messages come now, so the summary line is the last one
    report(metrics, Path(cfg.paths.output_dir))
    return metrics
