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
from keypointdet.suppression import soft_nms, top_k  # soft_nms: public here too (README)


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
    if torch.compiler.is_exporting():  # torch.export fixes the width of a 1-D pool; the same maxima in 2-D
        row_max = F.max_pool2d(heatmap, (1, kernel), 1, (0, half))
    else:
        row_max = F.max_pool1d(heatmap.reshape(batch * channels, height, width), kernel, 1, half).reshape(heatmap.shape)
    keep = heatmap >= row_max
    for distance in range(1, half + 1):  # the rows `distance` above and below
        keep[:, :, distance:] &= heatmap[:, :, distance:] >= row_max[:, :, :-distance]
        keep[:, :, :-distance] &= heatmap[:, :, :-distance] >= row_max[:, :, distance:]
    return torch.where(keep, heatmap, suppressed)


def topk_peaks(heatmap: Tensor, k: int) -> Peaks:
    """The ``k`` highest values of ``heatmap [B, C, H, W]`` over all classes and positions (ties: lower
    class, then lower position first, as :func:`top_k`).

    ``k`` is capped at ``C * H * W``. ``index`` is the flat position ``y * W + x`` within a class map.
    Only the ``k`` rows (of ``W`` values) with the highest maxima can hold them: each row ranked before
    a row holding one of them has a maximum ranked before it, so the rows are chosen first and only
    their values sorted. ``k`` rows of ``-inf`` follow the map's, so that ``k`` rows are chosen whatever
    ``C * H`` (one shape for an exported graph); they rank after every row of the map.
    """
    batch, classes, height, width = heatmap.shape
    rows = heatmap.reshape(batch, classes * height, width)
    _, best_rows = top_k(F.pad(rows.amax(dim=2), (0, k), value=float("-inf")), k)
    best_rows = best_rows.sort(dim=1).values  # map order, so that ties among the candidates stay in map order
    in_map = best_rows < classes * height
    candidates = rows.gather(1, torch.where(in_map, best_rows, 0).unsqueeze(2).expand(-1, -1, width))
    candidates = torch.where(in_map.unsqueeze(2), candidates, float("-inf")).flatten(1)
    scores, pick = top_k(candidates, min(k, classes * height * width))
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


def centernet_pose_decode(  # centernet_decode's arguments, the joints' maps, then the snapping rule's
    heatmap: Tensor, size: Tensor, offset: Tensor, joint_vector: Tensor, joint_heatmap: Tensor, joint_offset: Tensor,
    k: int = 100, joint_threshold: float = 0.1, snap_distance: float = 0.3, nms_kernel: int = 3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Poses from CenterNet's multi-person pose outputs (official ``multi_pose_decode``).

    The boxes are :func:`centernet_decode`'s. Each detection's joints are regressed from its peak's cell
    (``joint_vector [B, 2J, H, W]``, x, y per joint) and snapped by :func:`snap_joints` to the peaks of the
    ``joint_heatmap [B, J, H, W]`` logits refined by ``joint_offset [B, 2, H, W]``.

    Returns:
        ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]`` as :func:`centernet_decode` and ``keypoints
        [B, K, J, 3]``: x, y in output pixels and the joint's score (:func:`snap_joints`).
    """
    peaks, cx, cy = logit_peaks(heatmap, offset, k, nms_kernel)
    joint_scores = torch.sigmoid(joint_heatmap.float())
    snapping = (joint_threshold, snap_distance)
    return _pose_detections(peaks, cx, cy, size, joint_vector, joint_scores, joint_offset, *snapping)


def centernet_pose_decode_scores(  # the arguments of centernet_pose_decode, with heatmaps of probabilities
    scores: Tensor, size: Tensor, offset: Tensor, joint_vector: Tensor, joint_scores: Tensor, joint_offset: Tensor,
    k: int = 100, joint_threshold: float = 0.1, snap_distance: float = 0.3, nms_kernel: int = 3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`centernet_pose_decode` of heatmaps already turned into probabilities (``scores [B, C, H, W]``,
    ``joint_scores [B, J, H, W]``; e.g. an image's and its mirror's averaged, for flip test-time augmentation)."""
    peaks, cx, cy = refined_peaks(scores, offset, k, nms_kernel)
    peaks = peaks._replace(scores=peaks.scores.clamp(min=0))
    snapping = (joint_threshold, snap_distance)
    return _pose_detections(peaks, cx, cy, size, joint_vector, joint_scores, joint_offset, *snapping)


def _pose_detections(  # the peaks of the centres, then the joints' maps and the snapping rule
    peaks: Peaks, cx: Tensor, cy: Tensor, size: Tensor, joint_vector: Tensor, joint_scores: Tensor,
    joint_offset: Tensor, joint_threshold: float, snap_distance: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    boxes, scores, labels = _centernet_boxes(peaks, cx, cy, size)
    batch, num_detections = scores.shape
    vectors = gather_at(joint_vector.float(), peaks.index).reshape(batch, num_detections, -1, 2)
    regressed = vectors + torch.stack([peaks.xs, peaks.ys], dim=-1).unsqueeze(2).float()
    snapping = (num_detections, joint_threshold, snap_distance)
    keypoints = snap_joints(regressed, boxes, joint_scores, joint_offset, *snapping)
    return boxes, scores, labels, keypoints


def snap_joints(
    regressed: Tensor, boxes: Tensor, joint_scores: Tensor, joint_offset: Tensor, k: int = 100,
    threshold: float = 0.1, snap_distance: float = 0.3, nms_kernel: int = 3,
) -> Tensor:
    """Regressed joints moved to the nearest joint-heatmap peak, as the official ``multi_pose_decode``.

    The candidates of joint ``j`` are the ``k`` best peaks of ``joint_scores[:, j]`` scoring above ``threshold``,
    each at its cell plus ``joint_offset``. A regressed joint takes the position of its nearest candidate when
    that one lies inside the detection's box (borders included) and within ``snap_distance`` times the box's
    longer side; otherwise it keeps its regressed position.

    Args:
        regressed: ``[B, K, J, 2]`` joints (x, y) regressed from each detection's centre, output pixels.
        boxes: ``[B, K, 4]`` xyxy of the detections.
        joint_scores: ``[B, J, H, W]`` joint heatmap probabilities.
        joint_offset: ``[B, 2, H, W]`` sub-cell offset (x, y) of the joints.

    Returns:
        ``[B, K, J, 3]``: x, y and the joint's score, ``joint_scores`` at the chosen position's cell.
    """
    batch, num_joints, height, width = joint_scores.shape
    peaks = topk_peaks(peak_nms(joint_scores.float().reshape(batch * num_joints, 1, height, width), nms_kernel), k)
    shift = gather_at(joint_offset.float(), peaks.index.reshape(batch, -1)).reshape(batch, num_joints, -1, 2)
    candidates = torch.stack([peaks.xs, peaks.ys], dim=-1).reshape(batch, num_joints, -1, 2).float() + shift
    good = (peaks.scores > threshold).reshape(batch, num_joints, 1, -1)
    # [B, J, K, candidates]: every detection's joint against every candidate of that joint
    distance = (regressed.transpose(1, 2).unsqueeze(3) - candidates.unsqueeze(2)).norm(dim=-1)
    nearest_distance, nearest = torch.where(good, distance, float("inf")).min(dim=3)
    nearest = nearest.unsqueeze(-1).expand(-1, -1, -1, 2)
    snapped = candidates.gather(2, nearest).transpose(1, 2)  # [B, K, J, 2]
    x1, y1, x2, y2 = (side.unsqueeze(-1) for side in boxes.float().unbind(-1))
    inside = (snapped[..., 0] >= x1) & (snapped[..., 0] <= x2) & (snapped[..., 1] >= y1) & (snapped[..., 1] <= y2)
    near = nearest_distance.transpose(1, 2) <= snap_distance * torch.maximum(x2 - x1, y2 - y1)
    points = torch.where((inside & near).unsqueeze(-1), snapped, regressed)
    cells = points.floor().long()
    flat = cells[..., 1].clamp(0, height - 1) * width + cells[..., 0].clamp(0, width - 1)
    score = joint_scores.float().reshape(batch, num_joints, -1).gather(2, flat.transpose(1, 2)).transpose(1, 2)
    return torch.cat([points, score.unsqueeze(-1)], dim=-1)


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
    # pair = tl * K_br + br (a division, not %, which the ONNX exporter cannot take by a symbolic K_br)
    tl_pick = torch.div(pairs, br.scores.shape[1], rounding_mode="floor")
    br_pick = pairs - tl_pick * br.scores.shape[1]
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
