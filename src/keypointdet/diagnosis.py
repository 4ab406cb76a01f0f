"""A learning check a user can read: the usual reasons a first run on new data learns little, in plain words.

Each ``*_finding`` function looks at one cause and returns a sentence when it applies (None otherwise):
images resized by more than 2x, objects smaller than the output stride, centre collisions, classes with
few training images, a learning rate that never left its warm-up, a loss that did not fall.
:func:`data_findings` runs the data checks on a dataset; :class:`LearningCheck` records the learning rate
and the loss of every training step for the others; :func:`paragraph` joins the findings.
``train.py`` prints the paragraph when the final ``val/mAP`` is below :data:`POOR_MAP`, and
``python -m keypointdet.tools.dataset_stats`` prints the data findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl

from keypointdet.data.coco import CocoDetection

POOR_MAP = 0.2
MAX_RESIZE = 2.0
SMALL_OBJECT_SHARE = 0.05
COLLISION_SHARE = 0.02
MIN_IMAGES_PER_CLASS = 20
WARMED_UP = 0.5
LOSS_FALL = 0.8


def scale_finding(median_long_side: float, input_size: int) -> str | None:
    """Images resized by more than :data:`MAX_RESIZE` x (their median long side against ``input_size``)."""
    factor = input_size / median_long_side
    if factor > MAX_RESIZE:
        return (
            f"the images are upscaled {factor:.1f}x (median long side {median_long_side:.0f} px, data.input_size "
            f"{input_size}), so every step costs about {factor**2:.0f}x what the images need: use "
            f"data.input_size=auto or a size near {median_long_side:.0f}"
        )
    if factor < 1 / MAX_RESIZE:
        return (
            f"the images are downscaled {1 / factor:.1f}x (median long side {median_long_side:.0f} px, "
            f"data.input_size {input_size}), which shrinks small objects: try a larger data.input_size"
        )
    return None


def small_object_finding(widths: np.ndarray, heights: np.ndarray, stride: int) -> str | None:
    """Objects whose boxes ``[N]`` (input pixels) fit inside one output cell, when they are at least
    :data:`SMALL_OBJECT_SHARE` of all."""
    small = int((np.maximum(widths, heights) < stride).sum())
    if not len(widths) or small / len(widths) < SMALL_OBJECT_SHARE:
        return None
    return (
        f"{100 * small / len(widths):.0f}% of the objects are smaller than the output stride ({stride} input px) "
        f"at this input size, too small to get a heatmap peak of their own: use a larger data.input_size"
    )


def collision_finding(collisions: int, num_objects: int, stride: int) -> str | None:
    """Objects sharing their centre's output cell with one of their class, at least :data:`COLLISION_SHARE`."""
    if not num_objects or collisions / num_objects < COLLISION_SHARE:
        return None
    return (
        f"{100 * collisions / num_objects:.1f}% of the objects share their centre's output cell (stride {stride}) "
        f"with another object of their class and cannot all be detected: use a larger data.input_size"
    )


def class_size_finding(images_per_class: dict[str, int]) -> str | None:
    """Classes with fewer than :data:`MIN_IMAGES_PER_CLASS` training images."""
    rare = sorted((count, name) for name, count in images_per_class.items() if count < MIN_IMAGES_PER_CLASS)
    if not rare:
        return None
    listed = ", ".join(f"{name} ({count})" for count, name in rare[:5]) + (", ..." if len(rare) > 5 else "")
    return (
        f"{len(rare)} of {len(images_per_class)} classes have fewer than {MIN_IMAGES_PER_CLASS} training images "
        f"({listed}): expect little AP on them without more examples"
    )


def warmup_finding(learning_rates: Sequence[float], configured_lr: float) -> str | None:
    """A run whose learning rate never reached :data:`WARMED_UP` of ``model.optimizer.lr``."""
    if not learning_rates or max(learning_rates) >= WARMED_UP * configured_lr:
        return None
    return (
        f"the learning rate never left its warm-up (at most {max(learning_rates):.2g} of model.optimizer.lr "
        f"{configured_lr:.2g} in {len(learning_rates)} steps): the schedule was planned for a longer run than "
        f"the one that happened; bound runs by trainer.max_time or trainer.max_epochs, not by limits the "
        f"schedule does not know"
    )


def loss_finding(losses: Sequence[float]) -> str | None:
    """A training loss whose mean over the last tenth of the steps is above :data:`LOSS_FALL` x the first tenth's."""
    if len(losses) < 10:
        return None
    tenth = len(losses) // 10
    first, last = float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))
    if last < LOSS_FALL * first:
        return None
    return (
        f"the training loss did not fall ({first:.3g} over the first {tenth} steps, {last:.3g} over the last "
        f"{tenth}): check the learning rate and the annotations (draw a few with their boxes)"
    )


def images_per_class(dataset: CocoDetection) -> dict[str, int]:
    """Number of images with at least one (non-crowd) object of each class, by class name."""
    images: dict[int, set[int]] = {cat_id: set() for cat_id in dataset.category_ids}
    for ann in dataset.coco.dataset["annotations"]:
        if not ann.get("iscrowd", 0):
            images[ann["category_id"]].add(ann["image_id"])
    return {dataset.coco.cats[cat_id]["name"]: len(ids) for cat_id, ids in images.items()}


def data_findings(dataset: CocoDetection, input_size: int, stride: int, stats: dict[str, Any]) -> list[str]:
    """The data checks on ``dataset`` at ``input_size``; ``stats``: its
    :func:`keypointdet.tools.dataset_stats.dataset_statistics` at that size."""
    long_sides = [max(info["height"], info["width"]) for info in dataset.coco.imgs.values()]
    findings = [
        scale_finding(float(np.median(long_sides)), input_size) if long_sides else None,
        small_object_finding(stats["box_width"], stats["box_height"], stride),
        collision_finding(stats["centre_collisions"], stats["num_objects"], stride),
        class_size_finding(images_per_class(dataset)),
    ]
    return [finding for finding in findings if finding]


def paragraph(findings: list[str], mean_ap: float | None = None) -> str:
    """One paragraph: the result (when given) and the findings, or that none of the usual causes applies."""
    opening = f"Learning check: val/mAP {mean_ap:.3f} is low. " if mean_ap is not None else "Learning check: "
    if not findings:
        return opening + "None of the usual causes was found (image scale, object size, centre collisions, " + (
            "examples per class, learning-rate warm-up, loss)."
        )
    sentences = [finding[0].upper() + finding[1:] for finding in findings]
    return opening + "Likely causes: " + " ".join(f"({i}) {s}." for i, s in enumerate(sentences, 1))


class LearningCheck(pl.Callback):
    """Records the learning rate and the loss of every training step (for :func:`warmup_finding` and
    :func:`loss_finding`)."""

    def __init__(self) -> None:
        self.learning_rates: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.learning_rates.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def findings(self, configured_lr: float) -> list[str]:
        return [f for f in (warmup_finding(self.learning_rates, configured_lr), loss_finding(self.losses)) if f]
