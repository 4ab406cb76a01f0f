"""COCO box (and keypoint) evaluation (pycocotools): a torchmetrics Metric that is exact on any number of devices."""

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

# Names of COCOeval.stats of keypoints (OKS), in order; logged beside the box metrics as val/kp_*.
KEYPOINT_STAT_NAMES = (
    "kp_mAP",
    "kp_mAP50",
    "kp_mAP75",
    "kp_mAP_medium",
    "kp_mAP_large",
    "kp_mAR",
    "kp_mAR50",
    "kp_mAR75",
    "kp_mAR_medium",
    "kp_mAR_large",
)

# Pascal VOC2007's AP at IoU 0.5 with 11-point interpolation, reported next to STAT_NAMES when asked for.
VOC07_NAME = "mAP50_voc07"

# COCO results entry: image_id, category_id, bbox [x, y, w, h], score (pose: keypoints [x1, y1, s1, ...])
Detection = dict[str, Any]


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
        voc07: also report :data:`VOC07_NAME`, Pascal VOC2007's 11-point AP at IoU 0.5 (:func:`voc07_map50`).
        sigmas: the per-joint OKS sigmas of a keypoint dataset: detections then carry keypoints, and the COCO
            keypoint metrics (:data:`KEYPOINT_STAT_NAMES`, :func:`evaluate_keypoints`) are reported too.
    """

    full_state_update = False

    def __init__(
        self,
        ground_truth: COCO | Callable[[], COCO],
        category_ids: Sequence[int],
        max_detections: int = 100,
        voc07: bool = False,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.voc07 = voc07
        self.sigmas = None if sigmas is None else [float(sigma) for sigma in sigmas]
        self._ground_truth = ground_truth
        self.category_ids = list(category_ids)
        self.max_detections = max_detections
        self.results: list[Detection] = []
        for name in ("image_ids", "boxes", "scores", "labels") + (("keypoints",) if sigmas is not None else ()):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @property
    def ground_truth(self) -> COCO:
        if callable(self._ground_truth):
            self._ground_truth = self._ground_truth()
        return self._ground_truth

    def update(
        self, image_ids: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, keypoints: Tensor | None = None
    ) -> None:
        """Record ``image_ids [B]`` and their detections: xyxy ``boxes [B, K, 4]`` in original pixels,
        ``scores [B, K]`` (entries scoring 0 or less are padding), ``labels [B, K]`` and, with ``sigmas``,
        ``keypoints [B, K, J, 3]`` (x, y in original pixels, score)."""
        padding = self.max_detections - scores.shape[1]
        if padding < 0:
            raise ValueError(f"{scores.shape[1]} detections per image, more than max_detections={self.max_detections}")
        if (keypoints is None) != (self.sigmas is None):
            raise ValueError("keypoints are recorded exactly when the metric has OKS sigmas (a keypoint dataset)")
        if keypoints is not None:
            self.keypoints.append(F.pad(keypoints.float(), (0, 0, 0, 0, 0, padding)))
        self.image_ids.append(image_ids.reshape(-1).long())
        self.boxes.append(F.pad(boxes.float(), (0, 0, 0, padding)))
        self.scores.append(F.pad(scores.float(), (0, padding)))
        self.labels.append(F.pad(labels.long(), (0, padding)))

    def compute(self) -> dict[str, float]:
        """COCO metrics (``STAT_NAMES``) plus ``AP/<class name>`` per category (and :data:`VOC07_NAME`)."""
        image_ids, boxes, scores, labels = (
            dim_zero_cat(state).cpu() for state in (self.image_ids, self.boxes, self.scores, self.labels)
        )
        keypoints = dim_zero_cat(self.keypoints).cpu() if self.sigmas is not None else None
        _, first = np.unique(image_ids.numpy(), return_index=True)
        detections = {
            int(image_ids[row]): coco_results(
                int(image_ids[row]), boxes[row], scores[row], labels[row], self.category_ids,
                None if keypoints is None else keypoints[row],
            )  # fmt: skip
            for row in first.tolist()
        }
        self.results = [detection for image_id in sorted(detections) for detection in detections[image_id]]
        metrics = evaluate_detections(self.ground_truth, detections)
        if self.voc07:
            metrics[VOC07_NAME] = voc07_map50(self.ground_truth, detections)
        if self.sigmas is not None:
            metrics.update(evaluate_keypoints(self.ground_truth, detections, self.sigmas))
        return metrics


def coco_results(
    image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor, category_ids: Sequence[int],
    keypoints: Tensor | None = None,
) -> list[Detection]:  # fmt: skip
    """One image's detections (xyxy ``boxes [K, 4]`` in original pixels, ``scores [K]``, ``labels [K]``, a pose
    detector's ``keypoints [K, J, 3]``) as COCO results entries, best first; entries scoring 0 or less (padding,
    rejected pairs) are left out. Keypoints are COCO's flat ``[x1, y1, s1, ...]`` with each joint's score as the
    third value (which COCO's evaluation does not read)."""
    kept = scores > 0
    xywh = xyxy_to_xywh(boxes[kept].float()).tolist()
    results = [
        {"image_id": image_id, "category_id": category_ids[label], "bbox": box, "score": score}
        for box, score, label in zip(xywh, scores[kept].tolist(), labels[kept].tolist())
    ]
    if keypoints is not None:
        for result, points in zip(results, keypoints[kept].float().flatten(1).tolist()):
            result["keypoints"] = points
    return results


def evaluate_detections(ground_truth: COCO, detections: dict[int, list[Detection]]) -> dict[str, float]:
    """COCO bbox evaluation of ``{image_id: detections}`` restricted to those image ids.

    Scores are kept at full precision: rounding them creates ties that change AP; tied scores are
    ranked in a canonical order (by category and box).
    """
    category_names = {cat["id"]: cat["name"] for cat in ground_truth.loadCats(ground_truth.getCatIds())}
    evaluation = _coco_evaluation(ground_truth, detections, "bbox")
    if evaluation is None:
        metrics = {name: 0.0 for name in STAT_NAMES}
        metrics.update({f"AP/{name}": 0.0 for name in category_names.values()})
        return metrics
    metrics = {name: float(value) for name, value in zip(STAT_NAMES, evaluation.stats)}
    metrics.update(_per_class_ap(evaluation, category_names))
    return metrics


def evaluate_keypoints(
    ground_truth: COCO, detections: dict[int, list[Detection]], sigmas: Sequence[float]
) -> dict[str, float]:
    """COCO keypoint evaluation (OKS, ``iouType="keypoints"``, 20 detections per image) of ``{image_id: detections
    with keypoints}`` restricted to those image ids, with the per-joint ``sigmas`` (:data:`KEYPOINT_STAT_NAMES`).

    The OKS of a detection with a ground-truth object of area ``s^2`` is the mean over the labelled joints of
    ``exp(-d_j^2 / (2 s^2 (2 sigma_j)^2))``; objects without labelled joints and crowds are ignored.
    """
    evaluation = _coco_evaluation(ground_truth, detections, "keypoints", sigmas)
    if evaluation is None:
        return {name: 0.0 for name in KEYPOINT_STAT_NAMES}
    return {name: float(value) for name, value in zip(KEYPOINT_STAT_NAMES, evaluation.stats)}


def _coco_evaluation(
    ground_truth: COCO, detections: dict[int, list[Detection]], iou_type: str, sigmas: Sequence[float] | None = None
) -> COCOeval | None:
    """COCOeval of ``detections`` on their image ids, summarised (None when there is no detection)."""
    image_ids = sorted(detections)
    # COCOeval ranks equal scores in input order, and equal scores are common (e.g. the constant letterbox
    # padding): a canonical order makes AP independent of how top-k broke ties on each device.
    results = sorted(
        (det for image_id in image_ids for det in detections[image_id]),
        key=lambda det: (det["image_id"], -det["score"], det["category_id"], *det["bbox"]),
    )
    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys (area, id, segmentation) to the entries it is given: give it copies.
        evaluation = COCOeval(ground_truth, ground_truth.loadRes([dict(det) for det in results]), iou_type)
        evaluation.params.imgIds = image_ids
        if sigmas is not None:
            evaluation.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def voc07_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007's 11-point AP: the mean over ``t = 0, 0.1, ..., 1`` of the best precision at recall >= ``t``
    (0 when that recall is never reached); ``recall``, ``precision`` ``[D]`` along the ranked detections."""
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of xyxy ``box [4]`` with ``boxes [N, 4]`` (continuous pixels: VOC's inclusive ``+ 1`` is in the boxes)."""
    width = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(min=0)
    height = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(min=0)
    intersection = width * height
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return intersection / ((box[2] - box[0]) * (box[3] - box[1]) + areas - intersection)


def voc07_map50(ground_truth: COCO, detections: dict[int, list[Detection]]) -> float:
    """Pascal VOC2007 mAP at IoU 0.5 (``voc_eval.py`` with ``use_07_metric``, the official CenterNet ``reval.py``).

    Per category, over the images of ``detections``: detections ranked by score (ties as
    :func:`evaluate_detections`), each matched to the ground-truth box of its image it overlaps most; IoU
    above 0.5 with a box not yet matched is a hit, with one already matched a false positive, and with a
    crowd (VOC ``difficult``) box neither; the rest are false positives. Crowd boxes are not counted as
    positives. The 11-point AP (:func:`voc07_average_precision`) is averaged over the categories that have
    positives.
    """
    image_ids = sorted(detections)
    ranked = sorted(
        (det for image_id in image_ids for det in detections[image_id]),
        key=lambda det: (-det["score"], det["image_id"], det["category_id"], *det["bbox"]),
    )
    average_precisions = []
    for category_id in ground_truth.getCatIds():
        truth = {}
        for ann in ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=image_ids, catIds=[category_id])):
            boxes, difficult = truth.setdefault(ann["image_id"], ([], []))
            boxes.append(_xyxy(ann["bbox"]))
            difficult.append(bool(ann.get("iscrowd", 0)))
        truth = {image_id: (np.array(b, dtype=np.float64), np.array(d)) for image_id, (b, d) in truth.items()}
        num_positives = sum(int((~difficult).sum()) for _, difficult in truth.values())
        if num_positives == 0:
            continue
        matched = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, (boxes, _) in truth.items()}
        hits = []
        for det in (det for det in ranked if det["category_id"] == category_id):
            boxes, difficult = truth.get(det["image_id"], (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
            overlaps = _iou(np.array(_xyxy(det["bbox"])), boxes) if len(boxes) else np.zeros(0)
            best = int(overlaps.argmax()) if len(overlaps) else -1
            if best >= 0 and overlaps[best] > 0.5:
                if difficult[best]:
                    continue
                hits.append(not matched[det["image_id"]][best])
                matched[det["image_id"]][best] = True
            else:
                hits.append(False)
        true_positives = np.cumsum(hits, dtype=np.float64)
        false_positives = np.cumsum(np.logical_not(hits), dtype=np.float64)
        recall = true_positives / num_positives
        precision = true_positives / np.maximum(true_positives + false_positives, np.finfo(np.float64).eps)
        average_precisions.append(voc07_average_precision(recall, precision))
    return float(np.mean(average_precisions)) if average_precisions else 0.0


def _xyxy(box: Sequence[float]) -> list[float]:
    """COCO ``[x, y, width, height]`` -> ``[x1, y1, x2, y2]``."""
    x, y, width, height = box
    return [x, y, x + width, y + height]


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
    """A plain-text table of the COCO metrics (box, then keypoint) followed by per-class AP."""
    names = [name for name in (*STAT_NAMES, VOC07_NAME, *KEYPOINT_STAT_NAMES) if name in metrics]
    names += [name for name in metrics if name.startswith("AP/")]
    width = max([12] + [len(name) for name in names if not name.startswith("AP/")])
    return "\n".join(f"{name:>{width}s}  {metrics[name]:.4f}" for name in names)
