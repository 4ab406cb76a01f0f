"""Images of articulated figures for the embedded pose dataset (:mod:`keypointdet.data.synthetic_pose` writes
them to files).

Every image has a textured background (:mod:`keypointdet.data.backgrounds`) with figures
(:mod:`keypointdet.data.figures`) drawn in depth order, sometimes with an occluding rectangle among them.
Parts are rasterised with 4x4 supersampling (anti-aliased), each figure in a body colour picked to contrast
with its surroundings, the arm and leg behind darker and those in front lighter.

Coordinates are continuous with pixel i spanning [i, i + 1), as the shapes dataset's boxes: a joint at
(x, y) lies in pixel (floor(x), floor(y)), and a pixel's centre is at (i + 0.5, j + 0.5).

Annotations:

- box: the tight box of the pixels the figure covers at least half, drawn alone (amodal), inside the image;
  area: its coverage (pixels) inside the image;
- visibility, as COCO: v=0 for a joint outside the image (truncation; written x = y = 0); v=1 for a joint whose
  pixel is covered at least half by an item drawn later (another figure, an occluder); v=2 otherwise. A figure's
  own limbs never hide its joints.

Placement: an item that would leave an earlier figure with fewer than ``min_visible_joints`` visible joints or
more than ``max_covered`` of its pixels hidden, or a figure with fewer than ``min_visible_joints`` joints inside
the image or a box side under ``min_box``, is placed again (``_PLACEMENT_TRIES`` times) or else not drawn. So
nothing drawn is left unannotated; the figures not drawn are counted (:attr:`PoseScene.skipped_figures`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from keypointdet.data.backgrounds import background
from keypointdet.data.figures import sample_figure, shade_colours
from keypointdet.data.rendering import HALF_COVERED, pick_colour, rasterise, with_noise

_PLACEMENT_TRIES = 6
_NOISE_SIGMA = (1.0, 5.0)
_OCCLUDER_SIDE = (0.15, 0.4)  # fraction of the image side
_OCCLUDER_TILT = 30.0  # degrees
_SHADE_CHANNELS = np.eye(3) * 255  # a part of shade k fills coverage channel k
_ORIGIN = np.zeros(2)


@dataclass(frozen=True)
class PoseSceneConfig:
    """Generation parameters shared by all images of a dataset."""

    image_size: int
    figures_per_image: tuple[int, int]
    figure_height: tuple[float, float]
    min_visible_joints: int
    min_box: float
    max_covered: float
    truncation_probability: float
    occluder_probability: float


@dataclass(frozen=True)
class DrawnItem:
    """A figure or an occluding rectangle as drawn: its outlines (a figure's parts in drawing order) and, for a
    figure, its joints ``(J, 2)`` (x, y), keypoints ``(J, 3)`` (x, y, v; x = y = 0 where v = 0), box (x, y, w, h)
    and area."""

    outlines: list[np.ndarray]
    joints: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    bbox: tuple[float, float, float, float] | None = None
    area: float = 0.0


@dataclass(frozen=True)
class PoseScene:
    """An RGB uint8 image, what is drawn on it in depth order (later in front), and the figures not drawn."""

    image: np.ndarray
    items: list[DrawnItem]
    skipped_figures: int

    @property
    def figures(self) -> list[DrawnItem]:
        return [item for item in self.items if item.keypoints is not None]


def _inside(joints: np.ndarray, size: int) -> np.ndarray:
    """Which joints ``(J, 2)`` lie in a ``size`` x ``size`` image."""
    return np.all((joints >= 0) & (joints < size), axis=1)


def _tight_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """COCO box (x, y, w, h) of a mask's pixels, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


class _Canvas:
    """An image being composed, tracking which item is in front at each pixel (covering it at least half)."""

    def __init__(self, image: np.ndarray, config: PoseSceneConfig) -> None:
        self.image = image
        self.config = config
        self.owner = np.full(image.shape[:2], -1, np.int32)  # index of the item in front, -1 = background
        self.outlines: list[list[np.ndarray]] = []
        self.figures: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}  # item: joints, mask, area

    def _visible(self, index: int, owner: np.ndarray) -> np.ndarray:
        """Which joints of figure ``index`` are inside the image and not covered by a later item."""
        joints = self.figures[index][0]
        inside = _inside(joints, self.config.image_size)
        x, y = np.floor(np.where(inside[:, None], joints, 0)).astype(int).T
        return inside & (owner[y, x] <= index)

    def keeps_earlier_figures(self, mask: np.ndarray) -> bool:
        """Whether every figure drawn so far stays visible enough with ``mask`` drawn in front of it."""
        owner = self.owner.copy()
        owner[mask] = len(self.outlines)
        for index, (_, own, _) in self.figures.items():
            hidden = np.count_nonzero(own & (owner != index))
            if hidden > self.config.max_covered * np.count_nonzero(own):
                return False
            if np.count_nonzero(self._visible(index, owner)) < self.config.min_visible_joints:
                return False
        return True

    def draw(
        self,
        rng: np.random.Generator,
        outlines: list[np.ndarray],
        coverage: np.ndarray,
        colours: Callable[[np.ndarray], np.ndarray],
        joints: np.ndarray | None = None,
    ) -> None:
        """Composite an item of per-colour ``coverage`` ``[H, W, C]`` in ``colours(c)`` ``[C, 3]``, ``c`` a
        colour contrasting with its surroundings; ``joints`` make it a figure."""
        union = coverage.sum(axis=2, dtype=np.int32)
        mask = union > HALF_COVERED
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
        palette = colours(pick_colour(rng, self.image[ring] if ring.any() else self.image.reshape(-1, 3)))
        alpha = coverage.astype(np.float32) / 255
        self.image = self.image * (1 - np.minimum(alpha.sum(axis=2, keepdims=True), 1)) + alpha @ palette
        if joints is not None:
            self.figures[len(self.outlines)] = (joints, mask, round(float(union.sum()) / 255, 2))
        self.owner[mask] = len(self.outlines)
        self.outlines.append(outlines)

    def items(self) -> list[DrawnItem]:
        """Everything drawn, with the figures' final visibility flags."""
        items = []
        for index, outlines in enumerate(self.outlines):
            if index not in self.figures:
                items.append(DrawnItem(outlines))
                continue
            joints, mask, area = self.figures[index]
            inside = _inside(joints, self.config.image_size)
            visibility = np.where(self._visible(index, self.owner), 2, np.where(inside, 1, 0))
            keypoints = np.concatenate([np.where(inside[:, None], joints, 0), visibility[:, None]], axis=1)
            items.append(DrawnItem(outlines, joints, keypoints, _tight_box(mask), area))
        return items


def _place_figure(rng: np.random.Generator, canvas: _Canvas, config: PoseSceneConfig) -> bool:
    """Draw a random figure at a random position; False if every try breaks the placement rules."""
    size = config.image_size
    for _ in range(_PLACEMENT_TRIES):
        figure = sample_figure(rng, rng.uniform(*config.figure_height))
        low, high = figure.extent()
        overhang = 0.5 * (high - low) if rng.random() < config.truncation_probability else 0.0
        # inside with a 1-pixel margin, or crossing the border by up to half the figure
        start, stop = 1 - low - overhang, size - 1 - high + overhang
        start, stop = np.minimum(start, (start + stop) / 2), np.maximum(stop, (start + stop) / 2)
        figure = figure.moved(rng.uniform(start, stop))
        parts = [(outline, _SHADE_CHANNELS[shade]) for outline, shade in figure.parts]
        coverage = rasterise(parts, _ORIGIN, size, size, channels=3)
        mask = coverage.sum(axis=2, dtype=np.int32) > HALF_COVERED
        box = _tight_box(mask)
        if box is None or min(box[2:]) < config.min_box:
            continue
        if np.count_nonzero(_inside(figure.joints, size)) < config.min_visible_joints:
            continue
        if canvas.keeps_earlier_figures(mask):
            canvas.draw(rng, [outline for outline, _ in figure.parts], coverage, shade_colours, figure.joints)
            return True
    return False


def _place_occluder(rng: np.random.Generator, canvas: _Canvas, config: PoseSceneConfig) -> None:
    """Draw a tilted rectangle at a random position, unless every try hides an earlier figure too much."""
    size = config.image_size
    for _ in range(_PLACEMENT_TRIES):
        half_width, half_height = rng.uniform(*_OCCLUDER_SIDE, 2) * size / 2
        angle = np.radians(rng.uniform(-_OCCLUDER_TILT, _OCCLUDER_TILT))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [half_width, half_height]
        outline = corners @ rotation.T + rng.uniform(0, size, 2)
        coverage = rasterise([(outline, 255)], _ORIGIN, size, size)[..., None]
        if canvas.keeps_earlier_figures(coverage[..., 0] > HALF_COVERED):
            canvas.draw(rng, [outline], coverage, lambda colour: colour[None])
            return


def render_pose_scene(rng: np.random.Generator, config: PoseSceneConfig) -> PoseScene:
    """One image of ``config.figures_per_image`` (min, max) figures, fewer if some cannot be placed."""
    size = config.image_size
    canvas = _Canvas(background(rng, size, size), config)
    low, high = config.figures_per_image
    is_figure = [True] * int(rng.integers(low, high + 1))
    if rng.random() < config.occluder_probability:
        is_figure.insert(int(rng.integers(len(is_figure) + 1)), False)
    skipped = 0
    for figure in is_figure:
        if not figure:
            _place_occluder(rng, canvas, config)
        elif not _place_figure(rng, canvas, config):
            skipped += 1
    return PoseScene(with_noise(rng, canvas.image, _NOISE_SIGMA), canvas.items(), skipped)
