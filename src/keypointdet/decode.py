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
