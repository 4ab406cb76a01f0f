"""Decoding raw head outputs into boxes, shared by CenterNet and CornerNet.

Boxes come out as ``xyxy`` in output-map pixels; the LightningModule maps them to original
image pixels with the transform recorded per image.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from keypointdet.losses import gather_at


class Peaks(NamedTuple):
    """Top-K keypoints over all classes of a heatmap: each field ``[B, K]``."""

    scores: Tensor
    labels: Tensor
    index: Tensor
    xs: Tensor
    ys: Tensor


def peak_nms(heatmap: Tensor, kernel: int = 3, suppressed: float = 0.0) -> Tensor:
    """Set every value of ``heatmap [B, C, H, W]`` that is not the maximum of its ``kernel x kernel`` window
    (clipped at the borders) to ``suppressed`` (0 for probabilities, ``-inf`` for logits).

    A value is the window's maximum when it is at least the row maximum (a 1-D pool along ``W``) of each
    of the window's rows: the same test as against ``F.max_pool2d``, several times faster on CPU, where the
    2-D pool of an NCHW map is slow.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"peak kernel must be a positive odd size, got {kernel}")
    batch, channels, height, width = heatmap.shape
    half = (kernel - 1) // 2
    row_max = F.max_pool1d(heatmap.reshape(batch * channels, height, width), kernel, 1, half).reshape(heatmap.shape)
    keep = heatmap >= row_max
    for distance in range(1, half + 1):  # the rows `distance` above and below
        keep[:, :, distance:] &= heatmap[:, :, distance:] >= row_max[:, :, :-distance]
        keep[:, :, :-distance] &= heatmap[:, :, :-distance] >= row_max[:, :, distance:]
    return torch.where(keep, heatmap, suppressed)


def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row of ``values [B, N]`` -> ``(values [B, k], indices [B, k])``
    (all ``N`` when ``k > N``).

    Descending, equal values in ascending index order: a canonical order (``torch.topk``'s order of ties
    is implementation-defined), the one of ONNX's ``TopK``, so exported decoders give the same detections.
    """
    ordered, order = values.sort(dim=1, descending=True, stable=True)
    return ordered[:, :k], order[:, :k]


def topk_peaks(heatmap: Tensor, k: int) -> Peaks:
    """The ``k`` highest values of ``heatmap [B, C, H, W]`` over all classes and positions (ties: lower
    class, then lower position first, as :func:`top_k`).

    ``k`` is capped at ``C * H * W``. ``index`` is the flat position ``y * W + x`` within a class map.
    Only the ``k`` rows (of ``W`` values) with the highest maxima can hold them: each row ranked before
    a row holding one of them has a maximum ranked before it, so the rows are chosen first and only
    their values sorted.
    """
    batch, classes, height, width = heatmap.shape
    rows = heatmap.reshape(batch, classes * height, width)
    _, best_rows = top_k(rows.amax(dim=2), k)
    best_rows = best_rows.sort(dim=1).values  # map order, so that ties among the candidates stay in map order
    candidates = rows.gather(1, best_rows.unsqueeze(2).expand(-1, -1, width)).flatten(1)
    scores, pick = top_k(candidates, k)
    columns = torch.arange(width, device=heatmap.device)
    flat = (best_rows.unsqueeze(2) * width + columns).flatten(1).gather(1, pick)
    labels = torch.div(flat, height * width, rounding_mode="floor")
    index = flat - labels * height * width
    ys = torch.div(index, width, rounding_mode="floor")
    return Peaks(scores, labels, index, index - ys * width, ys)


def refined_peaks(heatmap: Tensor, offset: Tensor, k: int, nms_kernel: int = 3) -> tuple[Peaks, Tensor, Tensor]:
    """The ``k`` best peaks of ``heatmap [B, C, H, W]`` and their refined positions.

    The peaks' ``scores`` are values of ``heatmap`` (``-inf`` where fewer than ``k`` peaks exist). Returns
    them and ``xs``, ``ys`` ``[B, K]``: each peak's cell plus the sub-cell ``offset [B, 2, H, W]`` (x, y)
    predicted there, in output pixels.
    """
    peaks = topk_peaks(peak_nms(heatmap.float(), nms_kernel, float("-inf")), k)
    shift = gather_at(offset.float(), peaks.index)
    return peaks, peaks.xs + shift[..., 0], peaks.ys + shift[..., 1]


def logit_peaks(heatmap: Tensor, offset: Tensor, k: int, nms_kernel: int = 3) -> tuple[Peaks, Tensor, Tensor]:
    """:func:`refined_peaks` of heatmap logits with the scores turned into probabilities.

    Peaks and their order are found on the logits and only the ``k`` kept are passed through the sigmoid
    (monotonic): the peaks of the probabilities, except where two different logits round to the same
    float32 probability (e.g. neighbours both above 17, both 1.0), where only the larger is a peak.
    """
    peaks, xs, ys = refined_peaks(heatmap, offset, k, nms_kernel)
    return peaks._replace(scores=torch.sigmoid(peaks.scores)), xs, ys


def centernet_decode(
    heatmap: Tensor, size: Tensor, offset: Tensor, k: int = 100, nms_kernel: int = 3
) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes from CenterNet's raw head outputs.

    Args:
        heatmap: ``[B, C, H, W]`` logits.
        size: ``[B, 2, H, W]`` box (w, h) in output pixels.
        offset: ``[B, 2, H, W]`` sub-cell centre offset (x, y).
        k: detections kept per image (capped at ``C * H * W``).

    Returns:
        ``boxes [B, K, 4]`` xyxy in output pixels, ``scores [B, K]`` in [0, 1] (descending; ties: lower
        class, then lower position first), ``labels [B, K]`` int64 class indices.
    """
    return _centernet_boxes(*logit_peaks(heatmap, offset, k, nms_kernel), size)


def centernet_decode_scores(
    scores: Tensor, size: Tensor, offset: Tensor, k: int = 100, nms_kernel: int = 3
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`centernet_decode` of a heatmap already turned into probabilities ``scores [B, C, H, W]``
    (e.g. the mean of an image's and its mirror's, for flip test-time augmentation)."""
    peaks, cx, cy = refined_peaks(scores, offset, k, nms_kernel)
    return _centernet_boxes(peaks._replace(scores=peaks.scores.clamp(min=0)), cx, cy, size)


def _centernet_boxes(peaks: Peaks, cx: Tensor, cy: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes [B, K, 4], scores, labels)`` of peaks centred at ``cx``, ``cy`` ``[B, K]`` with the
    ``size [B, 2, H, W]`` (w, h) predicted there."""
    half_size = gather_at(size.float(), peaks.index) / 2
    boxes = torch.stack(
        [cx - half_size[..., 0], cy - half_size[..., 1], cx + half_size[..., 0], cy + half_size[..., 1]], dim=-1
    )
    return boxes, peaks.scores, peaks.labels


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
    if method not in ("gaussian", "linear"):
        raise ValueError(f"unknown soft-NMS method {method!r}; use 'gaussian' or 'linear'")
    batch, num_candidates = scores.shape
    rows = torch.arange(batch, device=scores.device)
    current = scores.clone()
    alive = current >= score_threshold
    selected = torch.zeros(batch, max_dets, dtype=torch.int64, device=scores.device)
    selected_scores = scores.new_zeros(batch, max_dets)
    found = torch.zeros(batch, max_dets, dtype=torch.bool, device=scores.device)
    for step in range(min(num_candidates, max_dets)):
        # Every image done: stop (one host sync per step). An exported graph runs every step instead;
        # steps after the last selection change nothing.
        if not (torch.compiler.is_exporting() or torch.jit.is_tracing()) and not alive.any():
            break
        found[:, step] = alive.any(dim=1)
        best_score, best = torch.where(alive, current, float("-inf")).max(dim=1)
        selected[:, step] = best
        selected_scores[:, step] = torch.where(found[:, step], best_score, 0.0)
        alive[rows, best] = False
        iou = _iou_with(boxes[rows, best], boxes)
        if method == "gaussian":
            decay = torch.exp(-iou.pow(2) / sigma)
        else:
            decay = torch.where(iou > iou_threshold, 1 - iou, 1.0)
        if labels is not None:
            decay = torch.where(labels == labels[rows, best].unsqueeze(1), decay, 1.0)
        current = current * decay
        alive &= current >= score_threshold
    kept_boxes = torch.where(found.unsqueeze(-1), boxes[rows.unsqueeze(1), selected], 0.0)
    kept_labels = None if labels is None else torch.where(found, labels[rows.unsqueeze(1), selected], 0)
    return kept_boxes, selected_scores, kept_labels


def cornernet_pairs(
    tl_heatmap: Tensor,
    br_heatmap: Tensor,
    tl_embedding: Tensor,
    br_embedding: Tensor,
    tl_offset: Tensor,
    br_offset: Tensor,
    k: int = 100,
    ae_threshold: float = 0.5,
    num_dets: int = 1000,
) -> tuple[Tensor, Tensor, Tensor]:
    """CornerNet's candidate boxes before soft-NMS: the top-``k`` corners of each kind, paired.

    Each of the ``k x k`` (top-left, bottom-right) pairs scores the mean of its two corner scores
    and is rejected when the classes differ, when ``|e_tl - e_br| > ae_threshold``, or when the
    bottom-right corner lies left of or above the top-left one. The best ``num_dets`` pairs are kept.

    Args:
        tl_heatmap, br_heatmap: ``[B, C, H, W]`` logits.
        tl_embedding, br_embedding: ``[B, 1, H, W]``.
        tl_offset, br_offset: ``[B, 2, H, W]`` sub-cell corner offsets (x, y).

    Returns:
        ``boxes [B, N, 4]`` xyxy in output pixels, ``scores [B, N]`` (descending; -1 for rejected pairs,
        below any soft-NMS threshold, so they are never output), ``labels [B, N]`` int64, with
        ``N = min(num_dets, k * k)``.
    """
    tl, tl_xs, tl_ys = logit_peaks(tl_heatmap, tl_offset, k)
    br, br_xs, br_ys = logit_peaks(br_heatmap, br_offset, k)
    tl_tag = gather_at(tl_embedding.float(), tl.index)[..., 0]
    br_tag = gather_at(br_embedding.float(), br.index)[..., 0]
    # Pairs [B, K_tl, K_br]: top-left corners along dim 1, bottom-right corners along dim 2.
    rejected = (
        (tl.labels.unsqueeze(2) != br.labels.unsqueeze(1))
        | ((tl_tag.unsqueeze(2) - br_tag.unsqueeze(1)).abs() > ae_threshold)
        | (br_xs.unsqueeze(1) < tl_xs.unsqueeze(2))
        | (br_ys.unsqueeze(1) < tl_ys.unsqueeze(2))
    )
    pair_scores = torch.where(rejected, -1.0, (tl.scores.unsqueeze(2) + br.scores.unsqueeze(1)) / 2).flatten(1)
    scores, pairs = top_k(pair_scores, num_dets)
    tl_pick, br_pick = torch.div(pairs, br.scores.shape[1], rounding_mode="floor"), pairs % br.scores.shape[1]
    boxes = torch.stack(
        [tl_xs.gather(1, tl_pick), tl_ys.gather(1, tl_pick), br_xs.gather(1, br_pick), br_ys.gather(1, br_pick)], dim=-1
    )
    return boxes, scores, tl.labels.gather(1, tl_pick)


def cornernet_decode(  # the arguments of cornernet_pairs, then of the soft-NMS
    tl_heatmap: Tensor, br_heatmap: Tensor, tl_embedding: Tensor, br_embedding: Tensor, tl_offset: Tensor,
    br_offset: Tensor, k: int = 100, ae_threshold: float = 0.5, num_dets: int = 1000, soft_nms_sigma: float = 0.5,
    soft_nms_method: Literal["gaussian", "linear"] = "gaussian", max_dets: int = 100,
    soft_nms_iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes from CornerNet's raw head outputs: :func:`cornernet_pairs`, then per-class soft-NMS, which
    keeps the best ``max_dets`` (``soft_nms_iou_threshold``: the linear method's IoU threshold, official
    CornerNet ``nms_threshold`` 0.5; the gaussian method decays every overlap).

    Returns:
        ``boxes [B, max_dets, 4]`` xyxy in output pixels, ``scores [B, max_dets]`` (descending; 0 for
        the padding after an image's last detection), ``labels [B, max_dets]`` int64.
    """
    pairs = cornernet_pairs(
        tl_heatmap, br_heatmap, tl_embedding, br_embedding, tl_offset, br_offset, k, ae_threshold, num_dets
    )
    return soft_nms(*pairs, soft_nms_sigma, soft_nms_method, soft_nms_iou_threshold, max_dets=max_dets)


def mirror_boxes(boxes: Tensor, width: float) -> Tensor:
    """xyxy ``boxes [..., 4]`` found in a horizontally mirrored map of ``width`` pixels -> boxes of the
    unmirrored map (the continuous coordinate ``x`` of a mirror is ``width - x``)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=-1)


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
    from torchvision.ops import batched_nms

    batch, k = scores.shape
    groups = labels if class_wise else torch.zeros_like(labels)
    # Every image its own groups: (image, label) -> image * (max label + 1) + label.
    groups = groups + torch.arange(batch, device=labels.device).unsqueeze(1) * (labels.max() + 1 if class_wise else 1)
    precision = torch.float32 if torch.compiler.is_exporting() else torch.float64
    flat_boxes, flat_scores = boxes.reshape(-1, 4).to(precision), scores.reshape(-1).to(precision)
    keep = batched_nms(flat_boxes, flat_scores, groups.reshape(-1), iou_threshold)
    kept = torch.zeros(batch * k, dtype=torch.bool, device=scores.device)
    kept = kept.scatter(0, keep, torch.ones_like(keep, dtype=torch.bool)).view(batch, k)
    scores, order = top_k(torch.where(kept, scores, torch.zeros_like(scores)), k)
    return boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)), scores, labels.gather(1, order)
