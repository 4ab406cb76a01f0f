"""Lightning callbacks: the resumable latest checkpoint, and validation images with boxes and heatmaps for W&B.
The sweep summary (a Hydra callback) is in :mod:`keypointdet.sweeps`."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import wandb
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor

from keypointdet.boxes import BoxMapping
from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import collate
from keypointdet.data.keypoints import KeypointSet
from keypointdet.drawing import draw_keypoints
from keypointdet.log import get_logger

log = get_logger(__name__)
PREDICTED = (255, 0, 255)  # the colour of the predicted skeletons in the validation images


class LatestCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: the latest resumable state, whatever the validation metric did.

    Written at the end of every training epoch, every ``every_n_train_steps`` steps or every
    ``every_n_minutes`` minutes when one of them is set (long epochs), and when a SIGTERM (SLURM
    preemption) or SIGINT (Ctrl-C) stops the run: Lightning stops every rank after the current batch, then
    this writes the checkpoint and the run exits with an error naming it. The best-by-metric checkpoint is
    another :class:`ModelCheckpoint`'s. Writes go through the trainer's checkpoint IO (atomic, see
    :class:`keypointdet.checkpoints.AtomicCheckpointIO`).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, every_n_minutes: float | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=timedelta(minutes=every_n_minutes) if every_n_minutes else None,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self._previous_sigint_handler: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(latest=True, dirpath=self.dirpath)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: the state after a validation is written at the end of the epoch."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """(After Lightning's own signal handlers are set.) SIGINT (Ctrl-C) stops like SIGTERM: after the current batch, with this checkpoint written."""
        super().on_train_start(trainer, pl_module)  # starts the every_n_minutes clock

        def stop_after_batch(signum: int, frame: Any) -> None:
            trainer._signal_connector.received_sigterm = True  # Lightning's own stop-after-this-batch flag

        self._previous_sigint_handler = signal.signal(signal.SIGINT, stop_after_batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_sigint_handler()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_sigint_handler()
        if isinstance(exception, SIGTERMException):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
            log.warning(f"stopped by a signal at step {trainer.global_step}: resumable checkpoint {self.last_path}")

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"last{self.FILE_EXTENSION}"

    def _restore_sigint_handler(self) -> None:
        if self._previous_sigint_handler is not None:
            signal.signal(signal.SIGINT, self._previous_sigint_handler)
            self._previous_sigint_handler = None


class WandbValidationImages(pl.Callback):
    """Log a fixed set of validation images to W&B with ground-truth and predicted boxes and heatmaps.

    After every ``every_n_validations``-th validation (the first one included), the first ``num_images``
    images of the validation set go through the model in evaluation mode. For every raw output whose
    name ends with ``heatmap`` (CenterNet: ``heatmap``; CornerNet: ``tl_heatmap``, ``br_heatmap``), one
    W&B image per validation image is logged under ``val/images/<name>``: the network input with the
    predicted probabilities (max over classes) overlaid, and two box layers, ``ground_truth`` and
    ``predictions`` (class name and score; W&B's slider filters them by score). A pose detector's images also go
    to ``val/images/keypoints``: the input with the ground-truth skeletons drawn in white and the predicted ones
    (detections scoring at least ``min_score``) in magenta, with the same box layers. Does nothing without a
    W&B logger.

    Args:
        num_images: validation images shown (always the same ones: the first by image id).
        every_n_validations: log at validations 1, 1 + n, 1 + 2n, ... (sanity checks not counted).
        min_score: predicted boxes below this score are not drawn.
        heatmap_opacity: opacity of the overlay where the predicted probability is 1.
    """

    def __init__(
        self,
        num_images: int = 8,
        every_n_validations: int = 1,
        min_score: float = 0.1,
        heatmap_opacity: float = 0.6,
    ) -> None:
        if num_images < 1 or every_n_validations < 1:
            raise ValueError("num_images and every_n_validations must be >= 1")
        self.num_images = num_images
        self.every_n_validations = every_n_validations
        self.min_score = min_score
        self.heatmap_opacity = heatmap_opacity
        self.num_validations = 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.num_validations += 1
        if (self.num_validations - 1) % self.every_n_validations:
            return
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        dataset = getattr(trainer.datamodule, "val_dataset", None)  # None when fitted on bare dataloaders
        if loggers and dataset is not None and trainer.is_global_zero:
            images = self.render(pl_module, dataset)
            loggers[0].experiment.log({**images, "trainer/global_step": trainer.global_step})

    @torch.no_grad()
    def render(self, model: pl.LightningModule, dataset: CocoDetection) -> dict[str, list[wandb.Image]]:
        """``{"val/images/<heatmap name>": [one wandb.Image per fixed validation image]}``, drawn in input pixels
        from one forward pass (boxes decoded from the last stack, without test-time augmentation)."""
        detector = model.detector
        batch = collate([dataset[index] for index in range(min(self.num_images, len(dataset)))])
        was_training = detector.training
        detector.eval()
        outputs = detector(batch["image"].to(model.device))[-1]
        boxes, scores, labels, *keypoints = (value.cpu() for value in detector.decode(outputs))
        detector.train(was_training)

        pictures = denormalise(batch["image"], dataset.transform.mean, dataset.transform.std)
        class_labels = dict(enumerate(detector.class_names))
        mapping = BoxMapping.from_batch(batch)
        boxes = boxes * detector.stride
        image_boxes = []
        for index, image_id in enumerate(batch["image_id"].tolist()):
            gt_boxes, gt_labels, _ = dataset.annotations(image_id)
            gt_input = mapping.to_input(torch.as_tensor(gt_boxes, dtype=torch.float32)[None])[0]
            kept = (scores[index] > 0) & (scores[index] >= self.min_score)  # 0: CornerNet's padding
            image_boxes.append(
                {
                    "ground_truth": self._layer(gt_input, torch.as_tensor(gt_labels), None, class_labels),
                    "predictions": self._layer(boxes[index][kept], labels[index][kept], scores[index][kept], class_labels),
                }
            )

        logged = {}
        if keypoints:
            poses = self._poses(pictures, batch, dataset, keypoints[0] * detector.stride, scores, detector.keypoints)
            logged["val/images/keypoints"] = [
                wandb.Image(picture, boxes=layers, caption=f"image {image_id}")
                for picture, layers, image_id in zip(poses, image_boxes, batch["image_id"].tolist())
            ]
        for name in sorted(key for key in outputs if key.endswith("heatmap")):
            probability = outputs[name].float().sigmoid().amax(dim=1, keepdim=True).cpu()
            probability = F.interpolate(probability, size=pictures.shape[-2:], mode="bilinear", align_corners=False)
            overlaid = overlay(pictures, probability[:, 0], self.heatmap_opacity)
            logged[f"val/images/{name}"] = [
                wandb.Image(picture, boxes=layers, caption=f"image {image_id}")
                for picture, layers, image_id in zip(overlaid, image_boxes, batch["image_id"].tolist())
            ]
        return logged

    def _poses(
        self, pictures: Tensor, batch: dict[str, Tensor], dataset: CocoDetection, keypoints: Tensor, scores: Tensor,
        keypoint_set: KeypointSet,
    ) -> list[np.ndarray]:  # fmt: skip
        """``pictures`` as uint8 ``[H, W, 3]`` with the ground-truth skeletons (white) and, over them, the skeletons
        of the detections scoring at least ``min_score`` (``keypoints [B, K, J, 3]`` in input pixels)."""
        images = (pictures.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        drawn = []
        for index, image_id in enumerate(batch["image_id"].tolist()):
            truth = dataset.keypoints(image_id).copy()
            truth[..., :2] = truth[..., :2] * batch["scale"][index].numpy() + batch["shift"][index].numpy()
            kept = (scores[index] > 0) & (scores[index] >= self.min_score)
            image = draw_keypoints(images[index], truth, keypoint_set.skeleton)
            predicted = keypoints[index][kept].numpy().copy()
            predicted[..., 2] = 1  # every joint of a kept detection is drawn, whatever its score
            drawn.append(draw_keypoints(image, predicted, keypoint_set.skeleton, PREDICTED))
        return drawn

    @staticmethod
    def _layer(boxes: Tensor, labels: Tensor, scores: Tensor | None, class_labels: dict[int, str]) -> dict[str, Any]:
        """A W&B box layer of xyxy ``boxes [N, 4]`` in input pixels (captions with the score when given)."""
        entries = [
            wandb_box(box, label, class_labels, None if scores is None else float(scores[i]))
            for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist()))
        ]
        return {"box_data": entries, "class_labels": class_labels}


def denormalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``images [B, 3, H, W]`` normalised -> ``[B, 3, H, W]`` RGB in [0, 1]."""
    mean_ = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_ = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * std_ + mean_).clamp(0, 1)


def overlay(pictures: Tensor, probability: Tensor, opacity: float) -> np.ndarray:
    """``pictures [B, 3, H, W]`` in [0, 1], ``probability [B, H, W]`` -> ``[B, H, W, 3]`` uint8.

    The heatmap's colour (matplotlib's ``turbo``) is blended in with an opacity proportional to the
    probability, so that the image stays visible where the network predicts nothing.
    """
    probability = probability.clamp(0, 1).cpu().numpy()
    colours = matplotlib.colormaps["turbo"](probability)[..., :3]
    weight = opacity * probability[..., None]
    blended = (1 - weight) * pictures.permute(0, 2, 3, 1).cpu().numpy() + weight * colours
    return (blended * 255).round().astype(np.uint8)


def wandb_box(box: Sequence[float], label: int, class_labels: dict[int, str], score: float | None = None) -> dict[str, Any]:
    """One W&B box from an xyxy ``box`` in input pixels."""
    x0, y0, x1, y1 = (float(value) for value in box)
    entry: dict[str, Any] = {
        "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
        "domain": "pixel",
        "class_id": int(label),
        "box_caption": class_labels[int(label)] if score is None else f"{class_labels[int(label)]} {score:.2f}",
    }
    if score is not None:
        entry["scores"] = {"score": float(score)}
    return entry
