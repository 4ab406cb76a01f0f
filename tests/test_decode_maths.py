"""Independent checks of the decoding maths in ``keypointdet.decode`` against naive python loops.

Random maps use distinct values (a scaled random permutation) so that top-k has no ties.
"""

from __future__ import annotations

import math

import pytest
import torch

from keypointdet.decode import centernet_decode, peak_nms, topk_peaks

# --------------------------------------------------------------------------- naive helpers


def distinct_map(seed: int, shape, low=-4.0, high=4.0) -> torch.Tensor:
    """float32 map whose values are all distinct, evenly spread over [low, high)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    return (torch.randperm(n, generator=g).float() / n * (high - low) + low).reshape(shape)


def naive_peak_nms(heatmap: torch.Tensor, kernel: int) -> torch.Tensor:
    """Keep a value where it equals the max of its kernel window clipped at the borders."""
    batch, channels, height, width = heatmap.shape
    half = (kernel - 1) // 2
    out = torch.zeros_like(heatmap)
    for b in range(batch):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    window = [
                        float(heatmap[b, c, yy, xx])
                        for yy in range(max(0, y - half), min(height, y + half + 1))
                        for xx in range(max(0, x - half), min(width, x + half + 1))
                    ]
                    if float(heatmap[b, c, y, x]) == max(window):
                        out[b, c, y, x] = heatmap[b, c, y, x]
    return out


def naive_topk(heatmap: torch.Tensor, k: int) -> list[list[tuple[float, int, int, int]]]:
    """Per image: the k highest (score, label, y, x) over all classes and positions."""
    batch, channels, height, width = heatmap.shape
    result = []
    for b in range(batch):
        entries = [
            (float(heatmap[b, c, y, x]), c, y, x) for c in range(channels) for y in range(height) for x in range(width)
        ]
        entries.sort(key=lambda entry: -entry[0])
        result.append(entries[:k])
    return result


def naive_decode(heatmap_logits, size, offset, k, kernel=3):
    """Per image: list of (score, label, box) of the k best peaks of sigmoid(heatmap)."""
    probabilities = naive_peak_nms(torch.sigmoid(heatmap_logits.float()), kernel)
    detections = []
    for b, peaks in enumerate(naive_topk(probabilities, k)):
        image = []
        for score, label, y, x in peaks:
            w, h = float(size[b, 0, y, x]), float(size[b, 1, y, x])
            cx, cy = x + float(offset[b, 0, y, x]), y + float(offset[b, 1, y, x])
            image.append((score, label, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        detections.append(image)
    return detections


def count_peaks(heatmap_logits: torch.Tensor, kernel: int = 3) -> int:
    return int((naive_peak_nms(torch.sigmoid(heatmap_logits.float()), kernel) > 0).sum(dim=(1, 2, 3)).min())


# --------------------------------------------------------------------------- peak_nms


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-3.0, -1.0)])
def test_peak_nms_matches_naive_clipped_window(kernel: int, low: float, high: float) -> None:
    # negative-only values check that the border window is clipped (not compared with padding zeros)
    heatmap = distinct_map(0, (2, 2, 7, 9), low, high)
    torch.testing.assert_close(peak_nms(heatmap, kernel), naive_peak_nms(heatmap, kernel), rtol=0, atol=0)


def test_peak_nms_keeps_every_tied_maximum() -> None:
    g = torch.Generator().manual_seed(1)
    heatmap = torch.randint(0, 3, (1, 2, 6, 8), generator=g).float() / 2  # many ties: 0, 0.5, 1
    torch.testing.assert_close(peak_nms(heatmap, 3), naive_peak_nms(heatmap, 3), rtol=0, atol=0)


# --------------------------------------------------------------------------- topk_peaks


@pytest.mark.parametrize(("shape", "k"), [((2, 3, 5, 7), 10), ((1, 1, 4, 4), 16), ((2, 2, 3, 6), 1)])
def test_topk_peaks_matches_naive_sort(shape, k: int) -> None:
    heatmap = distinct_map(2, shape)
    peaks = topk_peaks(heatmap, k)
    width = shape[3]
    for field in peaks:
        assert field.shape == (shape[0], k)
    for b, expected in enumerate(naive_topk(heatmap, k)):
        assert peaks.scores[b].tolist() == [score for score, *_ in expected]
        assert peaks.labels[b].tolist() == [label for _, label, _, _ in expected]
        assert peaks.ys[b].tolist() == [y for *_, y, _ in expected]
        assert peaks.xs[b].tolist() == [x for *_, x in expected]
        assert peaks.index[b].tolist() == [y * width + x for *_, y, x in expected]


def test_topk_peaks_caps_k_at_number_of_values() -> None:
    heatmap = distinct_map(3, (2, 2, 3, 4))
    peaks = topk_peaks(heatmap, 1000)
    assert peaks.scores.shape == (2, 24)
    for b, expected in enumerate(naive_topk(heatmap, 1000)):
        assert peaks.scores[b].tolist() == [score for score, *_ in expected]
        assert sorted(zip(peaks.labels[b].tolist(), peaks.index[b].tolist())) == sorted(
            (label, y * 4 + x) for _, label, y, x in expected
        )


# --------------------------------------------------------------------------- centernet_decode


def random_decode_inputs(seed: int, batch=2, classes=3, height=10, width=13):
    g = torch.Generator().manual_seed(seed)
    heatmap = distinct_map(seed, (batch, classes, height, width), -6.0, 3.0)
    size = torch.rand(batch, 2, height, width, generator=g) * 8 + 0.5
    offset = torch.rand(batch, 2, height, width, generator=g)
    return heatmap, size, offset


@pytest.mark.parametrize("seed", [4, 5])
def test_centernet_decode_matches_naive_decode(seed: int) -> None:
    heatmap, size, offset = random_decode_inputs(seed)
    k = min(20, count_peaks(heatmap))  # only real peaks, so there are no tied zero scores
    boxes, scores, labels = centernet_decode(heatmap, size, offset, k=k)
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.shape == (2, k)
    assert labels.dtype == torch.int64
    for b, expected in enumerate(naive_decode(heatmap, size, offset, k)):
        torch.testing.assert_close(scores[b], torch.tensor([s for s, _, _ in expected]), rtol=1e-6, atol=1e-7)
        assert labels[b].tolist() == [label for _, label, _ in expected]
        torch.testing.assert_close(boxes[b], torch.tensor([box for _, _, box in expected]), rtol=1e-6, atol=1e-5)
        assert torch.all(scores[b][:-1] >= scores[b][1:])
        assert torch.all((scores[b] > 0) & (scores[b] < 1))


def test_centernet_decode_beyond_the_peaks_pads_with_zero_scores_and_consistent_boxes() -> None:
    heatmap, size, offset = random_decode_inputs(6, batch=1, classes=2, height=6, width=7)
    num_peaks = count_peaks(heatmap)
    k = num_peaks + 10
    boxes, scores, labels = centernet_decode(heatmap, size, offset, k=k)
    expected = naive_decode(heatmap, size, offset, num_peaks)[0]
    torch.testing.assert_close(scores[0, :num_peaks], torch.tensor([s for s, _, _ in expected]), rtol=1e-6, atol=1e-7)
    assert labels[0, :num_peaks].tolist() == [label for _, label, _ in expected]
    assert torch.all(scores[0, num_peaks:] == 0)
    # every box, peak or not, is the (w, h, offset) regression at a cell whose box it is
    centers = (boxes[0, :, :2] + boxes[0, :, 2:]) / 2
    wh = boxes[0, :, 2:] - boxes[0, :, :2]
    cells = torch.floor(centers).long()  # offsets are in [0, 1), so the cell is floor(centre)
    torch.testing.assert_close(wh, size[0, :, cells[:, 1], cells[:, 0]].T, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(centers - cells, offset[0, :, cells[:, 1], cells[:, 0]].T, rtol=1e-6, atol=1e-5)


def test_centernet_decode_caps_k_at_number_of_values() -> None:
    heatmap, size, offset = random_decode_inputs(7, batch=1, classes=1, height=3, width=4)
    boxes, scores, labels = centernet_decode(heatmap, size, offset, k=100)
    assert boxes.shape == (1, 12, 4) and scores.shape == (1, 12) and labels.shape == (1, 12)


def test_centernet_decode_accepts_half_precision_inputs() -> None:
    heatmap, size, offset = random_decode_inputs(8)
    k = min(10, count_peaks(heatmap))
    ref = centernet_decode(heatmap, size, offset, k=k)
    half = centernet_decode(heatmap.half(), size.half(), offset.half(), k=k)
    assert half[0].dtype == torch.float32 and half[1].dtype == torch.float32
    assert torch.equal(half[2], ref[2])
    torch.testing.assert_close(half[0], ref[0], rtol=2e-3, atol=2e-2)
