"""COCO box evaluation (pycocotools): a torchmetrics Metric that is exact on any number of devices."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from keypointdet.boxes import xyxy_to_xywh

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


class CocoMeanAveragePrecision(Metric):
    """COCO box mAP as a :class:`torchmetrics.Metric`, exact on any number of devices.

    States are one row per image: its id and its ``max_detections`` best boxes (original pixels), scores
    and labels, concatenated over devices. :meth:`compute` keeps each image id once (a distributed sampler
    pads the last batch with duplicates: the first row wins), evaluates the images that were seen, returns
    the same metrics on every rank and leaves the COCO results in :attr:`results` (eval.py's results file).

    Args:
        ground_truth: the validation annotations, or a callable returning them (read when first needed).
        category_ids: dataset category id of each label.
        max_detections: detections per image (the detector's ``max_detections``); fewer are zero-padded.
    """

    full_state_update = False

    def __init__(
        self, ground_truth: COCO | Callable[[], COCO], category_ids: Sequence[int], max_detections: int = 100
    ) -> None:
        super().__init__()
        self._ground_truth = ground_truth
        self.category_ids = list(category_ids)
        self.max_detections = max_detections
        self.results: list[Detection] = []
        for name in ("image_ids", "boxes", "scores", "labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @property
    def ground_truth(self) -> COCO:
        if callable(self._ground_truth):
            self._ground_truth = self._ground_truth()
        return self._ground_truth

    def update(self, image_ids: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor) -> None:
        """Record ``image_ids [B]`` and their detections: xyxy ``boxes [B, K, 4]`` in original pixels,
        ``scores [B, K]`` (entries scoring 0 or less are padding), ``labels [B, K]``."""
        padding = self.max_detections - scores.shape[1]
        if padding < 0:
            raise ValueError(f"{scores.shape[1]} detections per image, more than max_detections={self.max_detections}")
        self.image_ids.append(image_ids.reshape(-1).long())
        self.boxes.append(F.pad(boxes.float(), (0, 0, 0, padding)))
        self.scores.append(F.pad(scores.float(), (0, padding)))
        self.labels.append(F.pad(labels.long(), (0, padding)))

    def compute(self) -> dict[str, float]:
        """COCO metrics (``STAT_NAMES``) plus ``AP/<class name>`` per category."""
        image_ids, boxes, scores, labels = (
            dim_zero_cat(state).cpu() for state in (self.image_ids, self.boxes, self.scores, self.labels)
        )
        _, first = np.unique(image_ids.numpy(), return_index=True)
        detections = {
            int(image_ids[row]): coco_results(int(image_ids[row]), boxes[row], scores[row], labels[row], self.category_ids)
            for row in first.tolist()
        }
        self.results = [detection for image_id in sorted(detections) for detection in detections[image_id]]
        return evaluate_detections(self.ground_truth, detections)



def coco_results(
    image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor, category_ids: Sequence[int]
) -> list[Detection]:
    """One image's detections (xyxy ``boxes [K, 4]`` in original pixels, ``scores [K]``, ``labels [K]``) as COCO
    results entries, best first; entries scoring 0 or less (padding, rejected pairs) are left out."""
    kept = scores > 0
    xywh = xyxy_to_xywh(boxes[kept].float()).tolist()
    return [
        {"image_id": image_id, "category_id": category_ids[label], "bbox": box, "score": score}
        for box, score, label in zip(xywh, scores[kept].tolist(), labels[kept].tolist())
    ]


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
