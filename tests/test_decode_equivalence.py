"""The fast decoders (peaks and top-K on the logits, row pools, canonical ties) give exactly the detections
of the previous formula: sigmoid of the whole map, ``F.max_pool2d`` peaks, top-K of all probabilities, with
the order of equal scores made canonical (lower class, position, pair first) by a stable sort. Boxes and
labels are bit-identical; scores may differ in the last bit, because the sigmoid of K values and of a whole
map take different (scalar / vectorised) paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keypointdet.decode import centernet_decode, centernet_decode_scores, cornernet_decode, peak_nms, soft_nms
from keypointdet.losses import gather_at


def stable_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    ordered, order = values.sort(dim=1, descending=True, stable=True)
    return ordered[:, :k], order[:, :k]


def reference_peaks(probabilities: torch.Tensor, offset: torch.Tensor, k: int, kernel: int = 3):
    """The previous ``refined_peaks``: zero the non-maxima of the probabilities, top-K over everything."""
    batch, _, height, width = probabilities.shape
    pooled = F.max_pool2d(probabilities, kernel, stride=1, padding=(kernel - 1) // 2)
    scores, flat = stable_topk((probabilities * (pooled == probabilities)).reshape(batch, -1), k)
    labels, index = flat // (height * width), flat % (height * width)
    shift = gather_at(offset, index)
    return scores, labels, index, index % width + shift[..., 0], index // width + shift[..., 1]


def reference_centernet(probabilities, size, offset, k):
    scores, labels, index, cx, cy = reference_peaks(probabilities, offset, k)
    half = gather_at(size, index) / 2
    boxes = torch.stack([cx - half[..., 0], cy - half[..., 1], cx + half[..., 0], cy + half[..., 1]], dim=-1)
    return boxes, scores, labels


def reference_cornernet(tl_heatmap, br_heatmap, tl_embedding, br_embedding, tl_offset, br_offset, k, num_dets):
    tl_scores, tl_labels, tl_index, tl_xs, tl_ys = reference_peaks(torch.sigmoid(tl_heatmap), tl_offset, k)
    br_scores, br_labels, br_index, br_xs, br_ys = reference_peaks(torch.sigmoid(br_heatmap), br_offset, k)
    tl_tag, br_tag = gather_at(tl_embedding, tl_index)[..., 0], gather_at(br_embedding, br_index)[..., 0]
    rejected = (
        (tl_labels[:, :, None] != br_labels[:, None])
        | ((tl_tag[:, :, None] - br_tag[:, None]).abs() > 0.5)
        | (br_xs[:, None] < tl_xs[:, :, None])
        | (br_ys[:, None] < tl_ys[:, :, None])
    )
    pair_scores = torch.where(rejected, -1.0, (tl_scores[:, :, None] + br_scores[:, None]) / 2).flatten(1)
    scores, pairs = stable_topk(pair_scores, min(num_dets, pair_scores.shape[1]))
    tl_pick, br_pick = pairs // k, pairs % k
    boxes = torch.stack([tl_xs.gather(1, tl_pick), tl_ys.gather(1, tl_pick), br_xs.gather(1, br_pick),
                         br_ys.gather(1, br_pick)], dim=-1)  # fmt: skip
    return soft_nms(boxes, scores, tl_labels.gather(1, tl_pick))


def assert_same_detections(result, expected) -> None:
    (boxes, scores, labels), (expected_boxes, expected_scores, expected_labels) = result, expected
    torch.testing.assert_close(boxes, expected_boxes, rtol=0, atol=0)
    torch.testing.assert_close(labels, expected_labels, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores, rtol=2e-7, atol=0)


def random_logits(seed: int, shape, ties: bool) -> torch.Tensor:
    """Continuous logits, or logits on a coarse grid (plateaus: tied peaks and tied scores everywhere)."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(-12, 7, shape, generator=g).float() / 2
    return torch.randn(shape, generator=g) * 2 - 1


def maps(seed: int, batch: int, height: int, width: int):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.rand(batch, 2, height, width, generator=g) * 8, torch.rand(batch, 2, height, width, generator=g)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("shape", "k"), [((2, 5, 24, 31), 100), ((3, 2, 4, 5), 30), ((1, 80, 64, 64), 100)])
def test_centernet_decode_equals_previous_formula(shape, k: int, ties: bool) -> None:
    # (3, 2, 4, 5) has fewer peaks than k: the tail is suppressed positions with score 0, in map order
    heatmap = random_logits(sum(shape), shape, ties)
    size, offset = maps(sum(shape), shape[0], *shape[2:])
    expected = reference_centernet(torch.sigmoid(heatmap), size, offset, k)
    assert_same_detections(centernet_decode(heatmap, size, offset, k), expected)


@pytest.mark.parametrize("ties", [False, True])
def test_centernet_decode_scores_equals_previous_formula(ties: bool) -> None:
    probabilities = torch.sigmoid(random_logits(7, (2, 4, 20, 18), ties))
    size, offset = maps(7, 2, 20, 18)
    expected = reference_centernet(probabilities, size, offset, 60)
    for result, reference in zip(centernet_decode_scores(probabilities, size, offset, 60), expected, strict=True):
        torch.testing.assert_close(result, reference, rtol=0, atol=0)


@pytest.mark.parametrize("ties", [False, True])
def test_cornernet_decode_equals_previous_formula(ties: bool) -> None:
    batch, classes, height, width, k = 2, 3, 24, 28, 40
    tl, br = (random_logits(seed, (batch, classes, height, width), ties) for seed in (8, 9))
    g = torch.Generator().manual_seed(10)
    tl_tag, br_tag = (torch.randint(0, 4, (batch, 1, height, width), generator=g).float() / 4 for _ in range(2))
    tl_offset, br_offset = maps(11, batch, height, width)
    inputs = (tl, br, tl_tag, br_tag, tl_offset, br_offset)
    expected = reference_cornernet(*inputs, k=k, num_dets=500)
    assert_same_detections(cornernet_decode(*inputs, k=k, num_dets=500), expected)


def test_peak_nms_equals_max_pool_on_plateaus() -> None:
    heatmap = random_logits(12, (2, 3, 17, 9), ties=True)
    for kernel in (1, 3, 5):
        pooled = F.max_pool2d(heatmap, kernel, stride=1, padding=(kernel - 1) // 2)
        expected = torch.where(pooled == heatmap, heatmap, float("-inf"))
        torch.testing.assert_close(peak_nms(heatmap, kernel, float("-inf")), expected, rtol=0, atol=0)
