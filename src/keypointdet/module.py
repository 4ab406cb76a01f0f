"""The LightningModule: training glue around a detector (steps, logging, COCO mAP, optimizers, checkpoints)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from hydra.utils import instantiate
from pycocotools.coco import COCO
import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from keypointdet.boxes import BoxMapping
from keypointdet.checkpoints import METADATA_KEY, metadata
from keypointdet.detectors import KeypointDetector
from keypointdet.detectors.base import plain
from keypointdet.log import get_logger
from keypointdet.metrics import CocoMeanAveragePrecision
from keypointdet.speed import InferenceSettings, memory_format
from keypointdet.tta import TestTimeAugmentation, detect

log = get_logger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term that is NaN or infinite: the run stops before the optimizer step."""


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` outside a multi-process run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class DetectionModule(pl.LightningModule):
    """Trains and validates ``detector``.

    Args:
        detector: the network, its loss and its decoder.
        ground_truth: the validation annotations (or a callable returning them) for the COCO mAP.
        input_record: how the DataModule prepares images (``input_size``, ``mean``, ``std``; stored in
            checkpoints for inference), or a callable returning it, read when a checkpoint is saved (the
            DataModule chooses ``input_size="auto"`` when it reads the training set).
        optimizer: Hydra config of a partial optimizer (``_partial_: true``), completed with the parameters.
        scheduler: Hydra config of a partial LR scheduler (or None), completed with the optimizer and, when it
            takes ``total_steps``, the trainer's estimated number of steps.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        tta: ``flip`` and ``scales`` of :class:`TestTimeAugmentation` for validation.
        voc07: also log ``val/mAP50_voc07`` (Pascal VOC2007's 11-point AP at IoU 0.5).
        keypoint_sigmas: the dataset's OKS sigmas (``data.keypoints.sigmas``); a pose detector is also evaluated
            by COCO keypoint AP (``val/kp_mAP``, ``val/kp_mAP50``, ``val/kp_mAP75``, ...) with them.
        inference: ``precision`` and ``channels_last`` of validation (:class:`keypointdet.speed.InferenceSettings`).
        channels_last: train the detector on channels-last (NHWC) batches, its parameters in that layout.
    """

    def __init__(
        self,
        detector: KeypointDetector,
        ground_truth: COCO | Callable[[], COCO],
        input_record: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        tta: Mapping[str, Any] | None = None,
        voc07: bool = False,
        keypoint_sigmas: Sequence[float] | None = None,
        inference: Mapping[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.detector = detector
        if detector.predicts_keypoints and keypoint_sigmas is None:
            raise ValueError(f"{detector.name} is evaluated on keypoints: give a keypoint dataset (data.keypoints)")
        sigmas = keypoint_sigmas if detector.predicts_keypoints else None
        self.metric = CocoMeanAveragePrecision(
            ground_truth, detector.category_ids, detector.max_detections, voc07, sigmas
        )
        self._input_record = input_record
        self.optimizer_config = plain(optimizer) if optimizer else None
        self.scheduler_config = plain(scheduler) if scheduler else None
        self.scheduler_interval = scheduler_interval
        self.tta = TestTimeAugmentation(**(tta or {}))
        self.inference = InferenceSettings(**(inference or {}))
        # Converted here, before a strategy wraps the detector (DDP expects the gradients in the parameters' layout).
        self.training_layout = memory_format(channels_last)
        detector.to(memory_format=self.training_layout)

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        return self.detector(images)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = batch["image"].contiguous(memory_format=self.training_layout)
        terms = self.detector.loss(self.detector(images), batch)
        self._stop_on_non_finite(terms, batch["image_id"])
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, prog_bar=True, batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        self._log_data_counts(batch, "data")
        return terms["loss"]

    def _stop_on_non_finite(self, terms: dict[str, Tensor], image_ids: Tensor) -> None:
        """Raise :class:`NonFiniteLossError` on every rank when a loss term of any rank is not finite (a flag summed
        over the ranks first, so that no rank waits for the others in the backward pass). Every rank's message
        names the terms and image ids of every rank that had one, whichever rank's error surfaces."""
        values = torch.stack([value.detach().float() for value in terms.values()])
        finite = torch.isfinite(values)
        if float(self.trainer.strategy.reduce((~finite).any().float(), reduce_op="sum")) == 0:
            return
        bad = ", ".join(f"{name}={value}" for name, value, ok in zip(terms, values.tolist(), finite.tolist()) if not ok)
        reports = gather_objects(f"loss term {bad} for the images {image_ids.tolist()}" if bad else None)
        where = "; ".join(
            report if len(reports) == 1 else f"rank {rank}: {report}"
            for rank, report in enumerate(reports)
            if report is not None
        )
        raise NonFiniteLossError(
            f"non-finite loss at step {self.global_step} (epoch {self.current_epoch}): {where}; no checkpoint "
            "written from this step, the last one on disk is intact"
        )

    def on_validation_start(self) -> None:
        self.inference.prepare(self.detector)

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING:  # training goes on in its own layout
            self.detector.to(memory_format=self.training_layout)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        mapping = BoxMapping.from_batch(batch)
        detections = detect(self.detector, batch["image"], mapping, self.tta, self.inference)
        self.metric.update(batch["image_id"], *detections)
        self._log_data_counts(batch, "val_data")

    def on_validation_epoch_end(self) -> None:
        metrics = self.metric.compute()
        # Identical on every rank (gathered and de-duplicated); sync_dist averages equal values.
        self.log_dict({f"val/{name}": value for name, value in metrics.items()}, sync_dist=True)
        self.metric.reset()
        self._warn_data_counts("val_data", "evaluation")

    def on_train_epoch_end(self) -> None:
        self._warn_data_counts("data", "training")

    def _log_data_counts(self, batch: dict[str, Tensor], prefix: str) -> None:
        """Sum every ``num_*`` count the data pipeline attaches (skipped boxes and images, dropped objects)
        over the epoch and the devices, as ``<prefix>/num_*``."""
        for name in sorted(key for key in batch if key.startswith("num_")):
            count = batch[name].sum().float()
            self.log(f"{prefix}/{name}", count, reduce_fx="sum", on_step=False, on_epoch=True, sync_dist=True)

    def _warn_data_counts(self, prefix: str, what: str) -> None:
        for name, count in self.trainer.callback_metrics.items():
            if name.startswith(f"{prefix}/num_") and count > 0:
                log.warning(f"epoch {self.current_epoch}: {name}={int(count)} were left out of {what}")

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_config is None:
            raise ValueError("no optimizer configured: this module was built for evaluation")
        optimizer = instantiate(self.optimizer_config)(params=self.parameters())
        if self.scheduler_config is None:
            return {"optimizer": optimizer}
        scheduler = self.plan_schedule(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def plan_schedule(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        """The configured scheduler of ``optimizer``, given ``total_steps`` when it takes them (re-planned
        under a time budget by :class:`keypointdet.schedules.TimeBudgetSchedule`)."""
        scheduler = instantiate(self.scheduler_config)
        kwargs = {"total_steps": total_steps} if "total_steps" in inspect.signature(scheduler).parameters else {}
        return scheduler(optimizer=optimizer, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what rebuilds the detector (:func:`keypointdet.inference.load_detector`)."""
        checkpoint[METADATA_KEY] = metadata(self.detector, self.input_record)

    @property
    def input_record(self) -> dict[str, Any]:
        """How images are prepared for the network (``input_size``, ``mean``, ``std``)."""
        record = self._input_record() if callable(self._input_record) else self._input_record
        return dict(record)
