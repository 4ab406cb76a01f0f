"""Rendered scenes of shapes for the embedded dataset (:mod:`keypointdet.data.synthetic` writes them to files).

Every image has a textured background (gradients, blurred noise, stripes or checks, low-contrast
distractor blobs and lines) with 1..``max_objects`` shapes on top. Classes differ by form only: colours
are random for every object. Shapes are rasterised by 4x4 supersampling, so each pixel's alpha is its true
coverage; an object's box is the tight box of the pixels it covers at least half, taken from the shape as
drawn (amodal: occlusion by later objects is limited by ``max_covered``, so the box never describes a
mostly hidden shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from keypointdet.data.backgrounds import background
from keypointdet.data.rendering import HALF_COVERED, pick_colour, rasterise, with_noise

_PLACEMENT_TRIES = 6
_ASPECT_RANGE = (0.5, 2.0)
_NOISE_SIGMA = (1.0, 5.0)

Polygons = list[tuple[np.ndarray, bool]]  # (N, 2) outline in drawing order, True = fill, False = hole


@dataclass(frozen=True)
class SceneConfig:
    """Generation parameters shared by all images of a dataset."""

    image_size: tuple[int, int]
    min_object: int
    max_object_fraction: float
    max_objects: int
    max_covered: float


@dataclass(frozen=True)
class RenderedObject:
    """One rendered object: class index, COCO box and covered area (pixels)."""

    label: int
    bbox: tuple[float, float, float, float]
    area: float


# --------------------------------------------------------------------------- shapes


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(rng: np.random.Generator) -> Polygons:
    outline = _regular(10, phase=-np.pi / 2)
    outline[1::2] *= rng.uniform(0.38, 0.5)  # inner vertices
    return [(outline, True)]


def _cross(rng: np.random.Generator) -> Polygons:
    t = rng.uniform(0.25, 0.4)  # half-width of an arm, the arm half-length being 1
    q = np.array([[t, -1], [t, -t], [1, -t]])
    quarter_turn = np.array([[0, -1], [1, 0]])
    quarters = [q @ np.linalg.matrix_power(quarter_turn, k).T for k in range(4)]
    return [(np.concatenate(quarters), True)]


def _ring(rng: np.random.Generator) -> Polygons:
    return [(_regular(48), True), (_regular(48, rng.uniform(0.45, 0.7)), False)]


@dataclass(frozen=True)
class _Shape:
    """How to build a class's outline in a unit frame, and which distortions keep it the same class."""

    outline: Callable[[np.random.Generator], Polygons]
    stretch: bool  # may get an aspect ratio other than 1
    rotate: bool  # may be rotated (pointless for shapes with full rotational symmetry)


_SHAPES: dict[str, _Shape] = {
    "circle": _Shape(lambda rng: [(_regular(48), True)], stretch=False, rotate=False),
    "rectangle": _Shape(lambda rng: [(np.array([[-1.0, -1], [1, -1], [1, 1], [-1, 1]]), True)], True, True),
    "triangle": _Shape(lambda rng: [(np.array([[0.0, -1], [1, 1], [-1, 1]]), True)], True, True),
    "star": _Shape(_star, stretch=False, rotate=True),
    "cross": _Shape(_cross, stretch=True, rotate=True),
    "ring": _Shape(_ring, stretch=False, rotate=False),
}
CLASSES: tuple[str, ...] = tuple(_SHAPES)  # category id = index + 1


def _sample_polygons(rng: np.random.Generator, label: int, size: float) -> Polygons:
    """Outline of a random instance of class ``label`` whose box has longest side ``size``, at the origin."""
    shape = _SHAPES[CLASSES[label]]
    polygons = shape.outline(rng)
    transform = np.eye(2)
    if shape.stretch:
        aspect = np.exp(rng.uniform(*np.log(_ASPECT_RANGE)))
        transform = np.diag([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    if shape.rotate:
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        transform = np.array([[c, -s], [s, c]]) @ transform
    polygons = [(points @ transform.T, fill) for points, fill in polygons]
    extent = np.ptp(np.concatenate([p for p, _ in polygons]), axis=0).max()
    return [(points * (size / extent), fill) for points, fill in polygons]


# -------------------------------------------------------------------------- objects


class _Scene:
    """An image being composed, tracking which object is visible at each pixel."""

    def __init__(self, background: np.ndarray, max_covered: float) -> None:
        self.image = background
        self.owner = np.full(background.shape[:2], -1, np.int32)  # index of the visible object, -1 = background
        self.areas = np.zeros(0, np.int64)  # pixels each object covers as drawn
        self.visible = np.zeros(0, np.int64)  # pixels of each object still visible
        self.max_covered = max_covered

    def _newly_hidden(self, y: slice, x: slice, mask: np.ndarray) -> np.ndarray:
        owners = self.owner[y, x][mask]
        return np.bincount(owners[owners >= 0], minlength=len(self.areas))

    def occludes_too_much(self, y: slice, x: slice, mask: np.ndarray) -> bool:
        """Whether drawing ``mask`` at (y, x) would leave an earlier object more than ``max_covered`` hidden."""
        hidden = self.areas - self.visible + self._newly_hidden(y, x, mask)
        return bool(np.any(hidden > self.max_covered * self.areas))

    def paint(self, rng: np.random.Generator, y: slice, x: slice, alpha: np.ndarray, mask: np.ndarray) -> None:
        """Composite a shape of coverage ``alpha`` at (y, x) in a colour contrasting with its surroundings."""
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
        crop = self.image[y, x]
        colour = pick_colour(rng, crop[ring] if ring.any() else crop.reshape(-1, 3))
        a = alpha[..., None].astype(np.float32) / 255
        self.image[y, x] = crop * (1 - a) + colour * a
        self.visible -= self._newly_hidden(y, x, mask)
        self.owner[y, x][mask] = len(self.areas)
        area = np.count_nonzero(mask)
        self.areas = np.append(self.areas, area)
        self.visible = np.append(self.visible, area)


def _place(rng: np.random.Generator, scene: _Scene, label: int, size: float) -> RenderedObject | None:
    """Draw one object at a random position, or give up if every try hides an earlier one too much."""
    height, width = scene.owner.shape
    for _ in range(_PLACEMENT_TRIES):
        polygons = _sample_polygons(rng, label, size)
        points = np.concatenate([p for p, _ in polygons])
        low, high = points.min(axis=0), points.max(axis=0)
        # keep a one-pixel margin so the box never touches the border
        offset = rng.uniform(1 - low, np.array([width - 1, height - 1]) - high)
        # work in a crop with room around the shape for the contrast check of its surroundings
        origin = np.maximum(np.floor(low + offset).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(high + offset).astype(int) + 2, [width, height])
        outlines = [(p + offset, 255 if fill else 0) for p, fill in polygons]
        alpha = rasterise(outlines, origin, y1 - origin[1], x1 - origin[0])
        mask = alpha > HALF_COVERED
        ys, xs = np.nonzero(mask)
        y, x = slice(origin[1], y1), slice(origin[0], x1)
        if ys.size == 0 or scene.occludes_too_much(y, x, mask):
            continue
        scene.paint(rng, y, x, alpha, mask)
        box = (origin[0] + xs.min(), origin[1] + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        return RenderedObject(label, tuple(float(v) for v in box), round(float(alpha.sum()) / 255, 2))
    return None


def render_scene(rng: np.random.Generator, config: SceneConfig) -> tuple[np.ndarray, list[RenderedObject]]:
    """One RGB uint8 image and its objects, in drawing order."""
    low, high = config.image_size
    width, height = (int(v) for v in rng.integers(low, high + 1, 2))
    scene = _Scene(background(rng, height, width), config.max_covered)
    max_size = config.max_object_fraction * min(width, height)
    objects = []
    for _ in range(rng.integers(1, config.max_objects + 1)):
        label = int(rng.integers(len(CLASSES)))
        size = np.exp(rng.uniform(np.log(config.min_object), np.log(max_size)))
        placed = _place(rng, scene, label, size)
        if placed is not None:
            objects.append(placed)
    return with_noise(rng, scene.image, _NOISE_SIGMA), objects
