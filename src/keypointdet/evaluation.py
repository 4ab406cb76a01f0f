"""COCO box evaluation (pycocotools) that is correct on any number of devices.

Every rank collects its detections per image; ``compute`` gathers them on all ranks, keeps each
image id once (a distributed sampler pads the last batch with duplicates), evaluates the images
that were seen, and returns the same metrics on every rank; the gathered detections stay in
``results`` (the COCO results file of eval.py).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Names of COCOeval.stats, in order.
STAT_NAMES = (
    "mAP",
    "mAP50",
    "mAP75",
    "mAP_small",
    "mAP_medium",
    "mAP_large",
    "mAR1",
    "mAR10",
    "mAR100",
    "mAR_small",
    "mAR_medium",
    "mAR_large",
)

Detection = dict[str, Any]  # COCO results entry: image_id, category_id, bbox [x, y, w, h], score


def _gather(obj: Any) -> list[Any]:
    """``obj`` from every rank (just ``[obj]`` outside a distributed run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class CocoEvaluator:
    """Accumulates detections per image and evaluates them against a COCO ground truth."""

    def __init__(self, ground_truth: COCO) -> None:
        self.ground_truth = ground_truth
        self.detections: dict[int, list[Detection]] = {}
        self.results: list[Detection] = []

    def reset(self) -> None:
        self.detections = {}
        self.results = []

    def add(self, image_id: int, detections: Sequence[Detection]) -> None:
        """Record the detections of one image (an image with none still counts as evaluated)."""
        self.detections.setdefault(int(image_id), list(detections))

    def compute(self) -> dict[str, float]:
        """COCO metrics (``STAT_NAMES``) plus ``AP/<class name>`` per category, identical on every rank."""
        merged: dict[int, list[Detection]] = {}
        for part in _gather(self.detections):
            for image_id, detections in part.items():
                merged.setdefault(image_id, detections)
        self.results = [detection for image_id in sorted(merged) for detection in merged[image_id]]
        return evaluate_detections(self.ground_truth, merged)


def evaluate_detections(ground_truth: COCO, detections: dict[int, list[Detection]]) -> dict[str, float]:
    """COCO bbox evaluation of ``{image_id: detections}`` restricted to those image ids.

    Scores are kept at full precision: rounding them creates ties that change AP; tied scores are
    ranked in a canonical order (by category and box).
    """
    image_ids = sorted(detections)
    # COCOeval ranks equal scores in input order, and equal scores are common (e.g. the constant letterbox
    # padding): a canonical order makes AP independent of how top-k broke ties on each device.
    results = sorted(
        (det for image_id in image_ids for det in detections[image_id]),
        key=lambda det: (det["image_id"], -det["score"], det["category_id"], *det["bbox"]),
    )
    category_names = {cat["id"]: cat["name"] for cat in ground_truth.loadCats(ground_truth.getCatIds())}
    if not results:
        metrics = {name: 0.0 for name in STAT_NAMES}
        metrics.update({f"AP/{name}": 0.0 for name in category_names.values()})
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys (area, id, segmentation) to the entries it is given: give it copies.
        evaluation = COCOeval(ground_truth, ground_truth.loadRes([dict(det) for det in results]), "bbox")
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    metrics = {name: float(value) for name, value in zip(STAT_NAMES, evaluation.stats)}
    metrics.update(_per_class_ap(evaluation, category_names))
    return metrics


def _per_class_ap(evaluation: COCOeval, category_names: dict[int, str]) -> dict[str, float]:
    """AP@[.5:.95] per category (all areas, 100 detections); -1 for a category with no ground truth."""
    precision = evaluation.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    per_class = {}
    for k, category_id in enumerate(evaluation.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[f"AP/{category_names[category_id]}"] = float(np.mean(values)) if values.size else -1.0
    return per_class


def format_table(metrics: dict[str, float]) -> str:
    """A plain-text table of the COCO metrics followed by per-class AP."""
    lines = [f"{name:>12s}  {metrics[name]:.4f}" for name in STAT_NAMES if name in metrics]
    lines += [f"{name:>12s}  {value:.4f}" for name, value in metrics.items() if name.startswith("AP/")]
    return "\n".join(lines)
