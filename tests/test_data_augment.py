"""The papers' training augmentation: crop geometry (official border logic), boxes that follow the pixels,
degenerate boxes dropped with their labels, and PCA lighting with fixed eigenvectors."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from keypointdet.data.transforms import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_SCALES,
    FixedPCALighting,
    RandomScaleCrop,
    TrainTransform,
    crop_border,
)


def test_crop_border_is_the_largest_halving_that_leaves_room() -> None:
    for size in range(1, 700):
        halvings = [128 >> k for k in range(8)] + [0]
        expected = next(b for b in halvings if size - b > b)
        assert crop_border(128, size) == expected


@pytest.mark.parametrize("crop_side, reference", [("long_side", 300), ("input_size", 64)])
def test_crop_scale_and_centre_follow_the_papers(crop_side: str, reference: int) -> None:
    # CenterNet: side = scale x the image's long side; CornerNet: side = scale x the input size
    crop = RandomScaleCrop(64, border=128, crop_side=crop_side)
    crop.set_random_seed(0)
    allowed = {round(64 / (scale * reference), 9) for scale in PAPER_SCALES}
    seen_scales, centres = set(), []
    for _ in range(300):
        params = crop.get_params_dependent_on_data({"shape": (200, 300, 3)}, {})
        zoom, (shift_x, shift_y) = params["zoom"], params["crop_shift"]
        assert round(zoom, 9) in allowed
        seen_scales.add(round(zoom, 9))
        centres.append(((32 - shift_x) / zoom, (32 - shift_y) / zoom))
    centres = np.array(centres)
    x_border, y_border = crop_border(128, 300), crop_border(128, 200)
    assert (x_border, y_border) == (128, 64)
    assert centres[:, 0].min() >= x_border - 1e-6 and centres[:, 0].max() < 300 - x_border
    assert centres[:, 1].min() >= y_border - 1e-6 and centres[:, 1].max() < 200 - y_border
    assert seen_scales == allowed


def test_unknown_crop_side_is_refused() -> None:
    with pytest.raises(ValueError, match="crop_side"):
        RandomScaleCrop(64, crop_side="short_side")


COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def rectangles(height: int, width: int, boxes: np.ndarray) -> np.ndarray:
    """Black image with box ``i`` filled with ``COLOURS[i]`` (integer boxes); interpolation blends edges into
    colours that are none of these, so the pixels of exactly ``COLOURS[i]`` are box ``i``'s interior."""
    image = np.zeros((height, width, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        image[y1:y2, x1:x2] = COLOURS[i]
    return image


def extent(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_boxes_follow_the_pixels_and_degenerate_ones_are_dropped(flip: float) -> None:
    rng = np.random.default_rng(0)
    transform = TrainTransform(96, border=16, flip=flip, color_jitter=0.0, lighting=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    kept = dropped = 0
    for seed in range(30):
        # one box in each quadrant, so that no rectangle hides another
        origins = np.array([[0, 0], [75, 0], [0, 50], [75, 50]])
        corners = origins[:, None] + np.sort(rng.integers(0, [75, 50], size=(4, 2, 2)), axis=1)
        boxes = np.concatenate([corners[:, 0], corners[:, 1] + 1], axis=1).astype(float)
        image = rectangles(100, 150, boxes)
        transform.set_random_seed(seed)
        out = transform(image, boxes, np.arange(4))
        pixels = (out["image"].permute(1, 2, 0).numpy() * 255).round()
        assert len(out["boxes"]) == len(out["labels"])
        for label in range(4):
            # interior pixels of the rectangle (those not blended with a neighbour by the interpolation)
            mask = (pixels == COLOURS[label]).all(axis=2)
            covered = label in out["labels"]
            if not covered:
                dropped += 1
                assert mask.sum() <= 4  # nothing (or a sliver) of it is left in the crop
                continue
            kept += 1
            box = out["boxes"][list(out["labels"]).index(label)]
            assert (box >= 0).all() and (box <= 96).all()  # clipped to the input
            if mask.sum() > 9:
                np.testing.assert_allclose(extent(mask), box, atol=2.0)
    assert kept > 20 and dropped > 0


def test_lighting_adds_the_fixed_eigenvector_shift() -> None:
    vectors, values = np.array(IMAGENET_EIGENVECTORS), np.array(IMAGENET_EIGENVALUES)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-6)  # orthonormal components
    lighting = FixedPCALighting(alpha_std=0.1)
    lighting.set_random_seed(0)
    shifts = np.array([lighting.get_params()["colour_shift"] for _ in range(4000)])
    alphas = shifts @ vectors / values  # the coefficients of each component
    np.testing.assert_allclose(alphas.std(axis=0), 0.1, rtol=0.06)
    np.testing.assert_allclose(alphas.mean(axis=0), 0.0, atol=0.01)
    image = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    shift = np.array([0.05, -0.02, 0.5])
    expected = np.clip(np.rint(image + 255 * shift), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(lighting.apply(image, colour_shift=shift), expected)


def test_training_output_is_normalised_and_its_steps_draw_independent_numbers() -> None:
    transform = TrainTransform(64)
    steps = [type(step) for step in transform.pipeline.transforms]
    assert steps[:3] == [RandomScaleCrop, A.HorizontalFlip, A.ColorJitter] and FixedPCALighting in steps
    transform.set_random_seed(0)
    seeds = [int(step.seed) for step in transform.pipeline.transforms]
    assert len(set(seeds)) == len(seeds)
    image = np.full((50, 70, 3), 128, np.uint8)
    out = transform(image, np.zeros((0, 4)), np.zeros(0, np.int64))
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    # a crop of 1.3x the long side always reaches past the image: the padding is the mean colour, 0 after
    # normalisation (as in the evaluation letterbox)
    geometry_only = TrainTransform(64, scales=(1.3,), color_jitter=0.0, lighting=0.0)
    geometry_only.set_random_seed(0)
    out = geometry_only(image, np.zeros((0, 4)), np.zeros(0, np.int64))
    torch.testing.assert_close(out["image"][:, 0, 0], torch.zeros(3), atol=0.02, rtol=0)
    inside = (torch.tensor([128 / 255] * 3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out["image"][:, 32, 32], inside, atol=0.02, rtol=0)
