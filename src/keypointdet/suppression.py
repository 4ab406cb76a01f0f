"""Ranking and suppression of detections, shared by both detectors: a canonical top-k, soft-NMS (CornerNet,
test-time augmentation merges) and the optional hard NMS of CenterNet (``model.nms``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row of ``values [B, N]`` -> ``(values [B, k], indices [B, k])``
    (all ``N`` when ``k > N``).

    Descending, equal values in ascending index order: a canonical order (``torch.topk``'s order of ties
    is implementation-defined), the one of ONNX's ``TopK``, so exported decoders give the same detections.
    """
    ordered, order = values.sort(dim=1, descending=True, stable=True)
    return ordered[:, :k], order[:, :k]


def _area(boxes: Tensor) -> Tensor:
    """Area of xyxy ``boxes [..., 4]`` (0 for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _iou_with(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of ``box [B, 4]`` with each of ``boxes [B, D, 4]`` (xyxy) -> ``[B, D]``; 0 for two empty boxes."""
    box = box.unsqueeze(1)
    overlap = (torch.minimum(box[..., 2:], boxes[..., 2:]) - torch.maximum(box[..., :2], boxes[..., :2])).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = _area(box) + _area(boxes) - intersection
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)


def take(values: Tensor, order: Tensor) -> Tensor:
    """The rows ``order [B, K]`` of each image's ``values [B, N, ...]`` -> ``[B, K, ...]`` (e.g. the keypoints of
    the detections a suppression kept)."""
    index = order.reshape(*order.shape, *(1,) * (values.dim() - 2)).expand(-1, -1, *values.shape[2:])
    return values.gather(1, index)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None = None,
    sigma: float = 0.5,
    method: Literal["gaussian", "linear"] = "gaussian",
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_dets: int = 100,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Greedy soft-NMS (Bodla et al. 2017), batched over images and candidates.

    Repeatedly selects the best remaining candidate and decays the score ``s`` of every other one by
    its IoU with it: ``s * exp(-iou^2 / sigma)`` (gaussian) or ``s * (1 - iou)`` when
    ``iou > iou_threshold`` (linear). With ``labels``, only boxes of the selected box's class decay
    (soft-NMS per class). Candidates whose score is or falls below ``score_threshold`` are discarded.
    Decayed scores never exceed the last selected one, so the first ``max_dets`` selections are the
    best ``max_dets`` results and the loop stops there.

    Args:
        boxes: ``[B, D, 4]`` xyxy.
        scores: ``[B, D]``.
        labels: ``[B, D]`` class indices, or None for class-agnostic suppression.

    Returns:
        ``boxes [B, max_dets, 4]``, ``scores [B, max_dets]`` (decayed, descending) and ``labels
        [B, max_dets]`` (None without labels); the entries after an image's last selection are zeros.
    """
    selected, selected_scores, found = soft_nms_selection(
        boxes, scores, labels, sigma, method, iou_threshold, score_threshold, max_dets
    )
    kept_boxes = torch.where(found.unsqueeze(-1), take(boxes, selected), 0.0)
    kept_labels = None if labels is None else torch.where(found, take(labels, selected), 0)
    return kept_boxes, selected_scores, kept_labels


def soft_nms_selection(  # the arguments of soft_nms
    boxes: Tensor, scores: Tensor, labels: Tensor | None = None, sigma: float = 0.5,
    method: Literal["gaussian", "linear"] = "gaussian", iou_threshold: float = 0.3, score_threshold: float = 0.001,
    max_dets: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`soft_nms` as the candidates it selects: ``selected [B, max_dets]`` (indices into ``D``), their
    decayed ``scores [B, max_dets]`` and ``found [B, max_dets]`` (False after an image's last selection)."""
    if method not in ("gaussian", "linear"):
        raise ValueError(f"unknown soft-NMS method {method!r}; use 'gaussian' or 'linear'")
    batch, num_candidates = scores.shape
    device = scores.device
    # Class-agnostic suppression is the per-class one with a single class.
    classes = labels if labels is not None else torch.zeros(batch, num_candidates, dtype=torch.int64, device=device)
    candidate_index, column_index = torch.arange(num_candidates, device=device), torch.arange(max_dets, device=device)

    def select(step: Tensor, current: Tensor, alive: Tensor, selected: Tensor, selected_scores: Tensor,
               found: Tensor) -> tuple[Tensor, ...]:  # fmt: skip
        """One greedy step: the best alive candidate of each image goes to column ``step``; the others decay."""
        found_now = alive.any(dim=1)
        best_score, best = torch.where(alive, current, float("-inf")).max(dim=1)
        column = (column_index == step).unsqueeze(0)
        selected = torch.where(column, best.unsqueeze(1), selected)
        selected_scores = torch.where(column, torch.where(found_now, best_score, 0.0).unsqueeze(1), selected_scores)
        found = found | (column & found_now.unsqueeze(1))
        iou = _iou_with(boxes.gather(1, best.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1), boxes)
        if method == "gaussian":
            decay = torch.exp(-iou.pow(2) / sigma)
        else:
            decay = torch.where(iou > iou_threshold, 1 - iou, 1.0)
        current = current * torch.where(classes == classes.gather(1, best.unsqueeze(1)), decay, 1.0)
        alive = alive & (candidate_index != best.unsqueeze(1)) & (current >= score_threshold)
        return step + 1, current, alive, selected, selected_scores, found

    current = scores.clone()
    state = (
        torch.zeros((), dtype=torch.int64, device=device), current, current >= score_threshold,
        torch.zeros(batch, max_dets, dtype=torch.int64, device=device), scores.new_zeros(batch, max_dets),
        torch.zeros(batch, max_dets, dtype=torch.bool, device=device),
    )  # fmt: skip
    steps = min(num_candidates, max_dets)
    if torch.compiler.is_exporting():  # one loop in the graph (an ONNX Loop), rather than `steps` copies of the step
        state = torch.while_loop(lambda step, _, alive, *rest: (step < steps) & alive.any(), select, state)
    else:
        for _ in range(steps):
            # Every image done: stop (one host sync per step). A traced graph (TorchScript) runs every step
            # instead; steps after the last selection change nothing.
            if not torch.jit.is_tracing() and not state[2].any():
                break
            state = select(*state)
    _, _, _, selected, selected_scores, found = state
    return selected, selected_scores, found


# model.nms: within each class, or across classes
NMS_MODES = ("class", "agnostic")


def hard_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, class_wise: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy NMS of every image's detections (``boxes [B, K, 4]`` xyxy, ``scores [B, K]``, ``labels [B, K]``)
    with :func:`torchvision.ops.batched_nms`: a detection is dropped when it overlaps a better one (of its
    class with ``class_wise``, of any class otherwise) by more than ``iou_threshold``.

    The shapes do not change: suppressed detections get score 0 (the padding's) and every row is re-sorted by
    descending score (ties in their previous order), so that whatever reads decoded detections reads these.
    The IoUs are computed in float64, where ``batched_nms``'s two strategies (a loop over the groups, or one
    NMS with every group shifted apart, its choice under tracing) add no rounding: eager and exported
    detectors keep the same boxes. Except under ``torch.export`` (the ONNX export): ONNX's ``NonMaxSuppression``
    takes float32 only, so an ONNX graph may decide differently for an IoU within float32 rounding of the threshold.
    """
    scores, order = hard_nms_order(boxes, scores, labels, iou_threshold, class_wise)
    return take(boxes, order), scores, take(labels, order)


def hard_nms_order(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, class_wise: bool = True
) -> tuple[Tensor, Tensor]:
    """:func:`hard_nms` as ``(scores [B, K], order [B, K])``: the new scores and where each row's detections came
    from (``take(values, order)`` reorders whatever else the detections carry)."""
    from torchvision.ops import batched_nms, nms

    batch, k = scores.shape
    groups = labels if class_wise else torch.zeros_like(labels)
    # Every image its own groups: (image, label) -> image * (max label + 1) + label.
    groups = groups + torch.arange(batch, device=labels.device).unsqueeze(1) * (labels.max() + 1 if class_wise else 1)
    exporting = torch.compiler.is_exporting()
    precision = torch.float32 if exporting else torch.float64
    flat_boxes, flat_scores = boxes.reshape(-1, 4).to(precision), scores.reshape(-1).to(precision)
    flat_groups = groups.reshape(-1)
    if exporting:
        # batched_nms's own "coordinate trick" (each group shifted apart, one NMS), chosen here: batched_nms picks a
        # strategy by the number of boxes, a branch on the batch size that a dynamic-batch export cannot keep.
        # Shifted by the boxes' whole extent, so that negative coordinates cannot bring two groups together.
        shift = flat_groups.to(flat_boxes.dtype) * (flat_boxes.max() - flat_boxes.min() + 1)
        keep = nms(flat_boxes + shift.unsqueeze(1), flat_scores, iou_threshold)
    else:
        keep = batched_nms(flat_boxes, flat_scores, flat_groups, iou_threshold)
    kept = torch.zeros(batch * k, dtype=torch.bool, device=scores.device)
    kept = kept.scatter(0, keep, torch.ones_like(keep, dtype=torch.bool)).view(batch, k)
    return top_k(torch.where(kept, scores, torch.zeros_like(scores)), k)
