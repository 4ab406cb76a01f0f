"""Independent checks of the target-encoding maths in ``keypointdet.data.encode``.

Everything is compared with the formulas of the contract or with naive re-implementations written
below (explicit python loops / textbook quadratic formula), on seeded random inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointdet.data.encode import draw_gaussian, encode_centernet, gaussian_radius

F32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- naive helpers


def iou_one_in_one_out(w: float, h: float, r: float) -> float:
    """Case 1: predicted box = gt box shifted by (r, r)."""
    inter = (w - r) * (h - r)
    return inter / (2 * w * h - inter)


def iou_both_inside(w: float, h: float, r: float) -> float:
    """Case 2: both corners moved r inwards."""
    return (w - 2 * r) * (h - 2 * r) / (w * h)


def iou_both_outside(w: float, h: float, r: float) -> float:
    """Case 3: both corners moved r outwards."""
    return w * h / ((w + 2 * r) * (h + 2 * r))


def three_ious(w: float, h: float, r: float) -> tuple[float, float, float]:
    return iou_one_in_one_out(w, h, r), iou_both_inside(w, h, r), iou_both_outside(w, h, r)


def naive_corrected_radius(h: float, w: float, m: float) -> float:
    """Textbook roots of the three IoU == m equations, written in standard form A r^2 + B r + C = 0."""

    def root(a: float, b: float, c: float, sign: float) -> float:
        return (-b + sign * math.sqrt(b * b - 4 * a * c)) / (2 * a)

    r1 = root(1.0, -(w + h), w * h * (1 - m) / (1 + m), -1)  # (w-r)(h-r)(1+m) = 2m wh, smaller root
    r2 = root(4.0, -2 * (w + h), (1 - m) * w * h, -1)  # (w-2r)(h-2r) = m wh, smaller root
    r3 = root(4 * m, 2 * m * (w + h), -(1 - m) * w * h, +1)  # wh = m (w+2r)(h+2r), positive root
    return min(r1, r2, r3)


def naive_centernet_radius(h: float, w: float, m: float) -> float:
    """Official CenterNet: (b + sqrt(b^2 - 4ac)) / 2 for each of its three (a, b, c)."""
    coefficients = [
        (1.0, h + w, w * h * (1 - m) / (1 + m)),
        (4.0, 2 * (h + w), (1 - m) * w * h),
        (4 * m, -2 * m * (h + w), (m - 1) * w * h),
    ]
    return min((b + math.sqrt(b * b - 4 * a * c)) / 2 for a, b, c in coefficients)


def bisect_largest_radius(w: float, h: float, m: float) -> float:
    """Largest r >= 0 with all three IoUs >= m, by bisection (no algebra at all)."""
    lo, hi = 0.0, min(w, h) / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if min(three_ious(w, h, mid)) >= m:
            lo = mid
        else:
            hi = mid
    return lo


def naive_gaussian_map(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    """Per-pixel loop: exp(-(dx^2+dy^2)/(2 sigma^2)) inside the (2r+1)^2 window, 0 outside."""
    height, width = shape
    cx, cy = center
    sigma = (2 * radius + 1) / 6
    out = np.zeros(shape, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            dx, dy = x - cx, y - cy
            if abs(dx) <= radius and abs(dy) <= radius:
                value = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
                out[y, x] = value if value >= F32_EPS else 0.0
    return out


def naive_encode(boxes, labels, num_classes, output_size, max_objects, min_overlap, variant):
    """Loop re-implementation of the CenterNet target contract."""
    height, width = output_size
    radius_fn = naive_corrected_radius if variant == "corrected" else naive_centernet_radius
    heatmap = np.zeros((num_classes, height, width))
    index = np.zeros(max_objects, dtype=np.int64)
    mask = np.zeros(max_objects, dtype=bool)
    size = np.zeros((max_objects, 2))
    offset = np.zeros((max_objects, 2))
    for i, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        if i >= max_objects:
            break
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        ix, iy = math.floor(cx), math.floor(cy)
        radius = max(0, int(radius_fn(math.ceil(y2 - y1), math.ceil(x2 - x1), min_overlap)))
        heatmap[label] = np.maximum(heatmap[label], naive_gaussian_map((height, width), (ix, iy), radius))
        index[i] = iy * width + ix
        mask[i] = True
        size[i] = (x2 - x1, y2 - y1)
        offset[i] = (cx - ix, cy - iy)
    return {
        "heatmap": heatmap,
        "index": index,
        "mask": mask,
        "size": size,
        "offset": offset,
        "num_dropped": max(0, len(boxes) - max_objects),
    }


def random_boxes(rng: np.random.Generator, n: int, output_size: tuple[int, int]) -> np.ndarray:
    """Random xyxy boxes inside the map, a third of them snapped to a border."""
    height, width = output_size
    x1 = rng.uniform(0, width - 0.5, n)
    y1 = rng.uniform(0, height - 0.5, n)
    x2 = x1 + rng.uniform(0.3, 1.0, n) * (width - x1)
    y2 = y1 + rng.uniform(0.3, 1.0, n) * (height - y1)
    boxes = np.stack([x1, y1, x2, y2], axis=1)
    snap = rng.integers(0, 6, n)
    boxes[snap == 0, 0] = 0.0
    boxes[snap == 1, 1] = 0.0
    boxes[snap == 2, 2] = width
    boxes[snap == 3, 3] = height
    return boxes


def assert_matches_naive(out: dict, expected: dict) -> None:
    np.testing.assert_allclose(out["heatmap"].numpy(), expected["heatmap"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["index"].numpy(), expected["index"])
    np.testing.assert_array_equal(out["mask"].numpy(), expected["mask"])
    np.testing.assert_allclose(out["size"].numpy(), expected["size"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out["offset"].numpy(), expected["offset"], rtol=0, atol=1e-5)
    assert int(out["num_dropped"]) == expected["num_dropped"]


# --------------------------------------------------------------------------- gaussian_radius


def test_case1_iou_matches_the_quadratic_of_the_contract() -> None:
    """(w-r)(h-r)/(2wh-(w-r)(h-r)) == m exactly at the roots of r^2 - (w+h) r + wh(1-m)/(1+m)."""
    rng = np.random.default_rng(0)
    for w, h, m in zip(rng.uniform(1, 300, 50), rng.uniform(1, 300, 50), rng.uniform(0.05, 0.95, 50)):
        c = w * h * (1 - m) / (1 + m)
        r = ((w + h) - math.sqrt((w + h) ** 2 - 4 * c)) / 2
        assert iou_one_in_one_out(w, h, r) == pytest.approx(m, abs=1e-9)


def test_corrected_radius_is_the_largest_r_keeping_all_three_ious_above_min_overlap() -> None:
    rng = np.random.default_rng(1)
    for w, h, m in zip(rng.uniform(0.5, 800, 300), rng.uniform(0.5, 800, 300), rng.uniform(0.05, 0.98, 300)):
        r = gaussian_radius(h, w, m)
        ious = three_ious(w, h, r)
        assert min(ious) == pytest.approx(m, abs=1e-9), (w, h, m, ious)
        assert all(iou >= m - 1e-9 for iou in ious)
        assert r == pytest.approx(bisect_largest_radius(w, h, m), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("side", [1.0, 7.0, 64.0, 511.0])
@pytest.mark.parametrize("m", [0.3, 0.5, 0.7, 0.9])
def test_corrected_radius_of_square_box_matches_hand_solved_cases(side: float, m: float) -> None:
    case1 = side * (1 - math.sqrt(2 * m / (1 + m)))  # (s-r)^2 = 2m s^2/(1+m)
    case2 = side * (1 - math.sqrt(m)) / 2  # (s-2r)^2 = m s^2
    case3 = side * (1 / math.sqrt(m) - 1) / 2  # (s+2r)^2 = s^2/m
    assert iou_one_in_one_out(side, side, case1) == pytest.approx(m, abs=1e-12)
    assert gaussian_radius(side, side, m) == pytest.approx(min(case1, case2, case3), rel=1e-12)


def test_corrected_radius_matches_textbook_quadratic_roots() -> None:
    rng = np.random.default_rng(2)
    for w, h, m in zip(rng.uniform(1, 500, 200), rng.uniform(1, 500, 200), rng.uniform(0.05, 0.95, 200)):
        assert gaussian_radius(h, w, m) == pytest.approx(naive_corrected_radius(h, w, m), rel=1e-10)


def test_centernet_variant_reproduces_official_formula() -> None:
    rng = np.random.default_rng(3)
    for w, h, m in zip(rng.uniform(1, 500, 200), rng.uniform(1, 500, 200), rng.uniform(0.05, 0.95, 200)):
        got = gaussian_radius(h, w, m, variant="centernet")
        assert got == pytest.approx(naive_centernet_radius(h, w, m), rel=1e-10)


def test_centernet_variant_is_larger_than_corrected_for_usual_min_overlaps() -> None:
    # Only true for min_overlap > 1/16: see the report; 0.1..0.95 covers every practical setting.
    rng = np.random.default_rng(4)
    h, w = rng.uniform(1, 500, 500), rng.uniform(1, 500, 500)
    for m in (0.1, 0.3, 0.5, 0.7, 0.9, 0.95):
        assert np.all(gaussian_radius(h, w, m, "centernet") > gaussian_radius(h, w, m, "corrected"))


@pytest.mark.parametrize("variant", ["corrected", "centernet"])
def test_radius_works_elementwise_on_arrays(variant: str) -> None:
    rng = np.random.default_rng(5)
    h, w = rng.uniform(1, 300, (3, 4)), rng.uniform(1, 300, (3, 4))
    out = gaussian_radius(h, w, 0.6, variant)
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j] == pytest.approx(gaussian_radius(float(h[i, j]), float(w[i, j]), 0.6, variant), rel=1e-12)
    assert isinstance(gaussian_radius(10.0, 20.0), float)


@pytest.mark.parametrize("min_overlap", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_radius_rejects_min_overlap_outside_open_unit_interval(min_overlap: float) -> None:
    with pytest.raises(ValueError):
        gaussian_radius(10, 10, min_overlap)


def test_radius_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError):
        gaussian_radius(10, 10, 0.7, variant="cornernet")


# --------------------------------------------------------------------------- draw_gaussian


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 9])
def test_draw_gaussian_peak_is_exactly_one_at_center_and_kernel_is_symmetric(radius: int) -> None:
    heatmap = np.zeros((25, 25), dtype=np.float32)
    draw_gaussian(heatmap, (12, 12), radius)
    assert heatmap[12, 12] == 1.0
    patch = heatmap[12 - radius : 13 + radius, 12 - radius : 13 + radius]
    np.testing.assert_array_equal(patch, patch.T)
    np.testing.assert_array_equal(patch, patch[::-1, :])
    np.testing.assert_array_equal(patch, patch[:, ::-1])
    assert heatmap.sum() == pytest.approx(patch.sum())  # nothing outside the window
    np.testing.assert_allclose(heatmap, naive_gaussian_map((25, 25), (12, 12), radius), atol=1e-6)


def test_draw_gaussian_radius_zero_sets_a_single_one() -> None:
    heatmap = np.zeros((6, 9), dtype=np.float32)
    draw_gaussian(heatmap, (4, 2), 0)
    expected = np.zeros((6, 9), dtype=np.float32)
    expected[2, 4] = 1.0
    np.testing.assert_array_equal(heatmap, expected)


HEIGHT, WIDTH = 7, 11
BORDER_CENTERS = [
    (0, 0), (WIDTH - 1, 0), (0, HEIGHT - 1), (WIDTH - 1, HEIGHT - 1),  # corners
    (0, 3), (WIDTH - 1, 3), (5, 0), (5, HEIGHT - 1),  # edges
    (1, 2), (WIDTH - 2, HEIGHT - 2),  # near edges, partially cropped
]  # fmt: skip


@pytest.mark.parametrize("center", BORDER_CENTERS)
@pytest.mark.parametrize("radius", [1, 3, 12])
def test_draw_gaussian_is_cropped_at_borders_like_a_naive_loop(center: tuple[int, int], radius: int) -> None:
    heatmap = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    out = draw_gaussian(heatmap, center, radius)
    assert out is heatmap
    np.testing.assert_allclose(heatmap, naive_gaussian_map((HEIGHT, WIDTH), center, radius), rtol=0, atol=1e-6)


def test_draw_gaussian_max_merges_overlapping_gaussians_and_existing_values() -> None:
    rng = np.random.default_rng(6)
    background = (rng.random((20, 30)) * 0.5).astype(np.float32)
    heatmap = background.copy()
    draw_gaussian(heatmap, (10, 8), 4)
    draw_gaussian(heatmap, (13, 10), 6)
    expected = np.maximum.reduce(
        [background, naive_gaussian_map((20, 30), (10, 8), 4), naive_gaussian_map((20, 30), (13, 10), 6)]
    )
    np.testing.assert_allclose(heatmap, expected, rtol=0, atol=1e-6)
    assert heatmap[8, 10] == 1.0 and heatmap[10, 13] == 1.0


# --------------------------------------------------------------------------- encode_centernet


@pytest.mark.parametrize("variant", ["corrected", "centernet"])
@pytest.mark.parametrize("output_size", [(24, 40), (37, 19)])
def test_encode_centernet_matches_naive_reimplementation(output_size: tuple[int, int], variant: str) -> None:
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 9, output_size)
    labels = rng.integers(0, 3, 9)
    out = encode_centernet(boxes, labels, 3, output_size, max_objects=16, min_overlap=0.7, radius_variant=variant)
    assert out["heatmap"].dtype == torch.float32 and out["heatmap"].shape == (3, *output_size)
    assert out["index"].dtype == torch.int64 and out["mask"].dtype == torch.bool
    assert out["size"].shape == (16, 2) and out["offset"].shape == (16, 2)
    assert_matches_naive(out, naive_encode(boxes, labels, 3, output_size, 16, 0.7, variant))


def test_encode_centernet_keeps_first_max_objects_in_input_order() -> None:
    rng = np.random.default_rng(8)
    output_size = (32, 32)
    boxes = random_boxes(rng, 12, output_size)
    labels = rng.integers(0, 2, 12)
    out = encode_centernet(boxes, labels, 2, output_size, max_objects=5, min_overlap=0.5)
    assert int(out["num_dropped"]) == 7
    assert out["mask"].tolist() == [True] * 5
    assert_matches_naive(out, naive_encode(boxes, labels, 2, output_size, 5, 0.5, "corrected"))
    # The dropped objects leave no trace: same result as encoding only the first five.
    first_five = encode_centernet(boxes[:5], labels[:5], 2, output_size, max_objects=5, min_overlap=0.5)
    np.testing.assert_array_equal(out["heatmap"].numpy(), first_five["heatmap"].numpy())


def test_encode_centernet_heatmap_is_exactly_one_at_each_kept_center() -> None:
    rng = np.random.default_rng(9)
    output_size = (20, 28)
    boxes = random_boxes(rng, 15, output_size)
    labels = rng.integers(0, 4, 15)
    out = encode_centernet(boxes, labels, 4, output_size, max_objects=10)
    heatmap = out["heatmap"].numpy()
    for i in range(10):
        cx, cy = (boxes[i, 0] + boxes[i, 2]) / 2, (boxes[i, 1] + boxes[i, 3]) / 2
        x, y = math.floor(cx), math.floor(cy)
        assert heatmap[labels[i], y, x] == 1.0
        assert int(out["index"][i]) == y * output_size[1] + x
    assert heatmap.max() == 1.0


def test_encode_centernet_boxes_touching_borders_and_full_map() -> None:
    height, width = 12, 20
    boxes = np.array(
        [
            [0.0, 0.0, width, height],  # whole map
            [width - 1.5, height - 1.5, width, height],  # bottom-right corner, centre in last cell
            [0.0, 0.0, 0.5, 0.5],  # tiny box at the top-left corner
            [0.0, 4.0, 3.0, 9.0],  # left edge
            [15.0, 0.0, width, 2.0],  # top-right
        ]
    )
    labels = np.array([0, 1, 1, 0, 1])
    out = encode_centernet(boxes, labels, 2, (height, width), max_objects=8)
    assert_matches_naive(out, naive_encode(boxes, labels, 2, (height, width), 8, 0.7, "corrected"))
    assert int(out["index"][1]) == (height - 1) * width + (width - 1)
    assert int(out["index"][2]) == 0


def test_encode_centernet_padding_and_empty_input() -> None:
    out = encode_centernet(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), 3, (8, 10), max_objects=4)
    assert out["heatmap"].shape == (3, 8, 10) and float(out["heatmap"].abs().sum()) == 0.0
    assert not out["mask"].any()
    assert out["index"].tolist() == [0] * 4
    assert float(out["size"].abs().sum()) == 0.0 and float(out["offset"].abs().sum()) == 0.0
    assert int(out["num_dropped"]) == 0
