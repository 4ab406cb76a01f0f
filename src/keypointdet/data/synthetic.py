"""Embedded default dataset: rendered shapes in COCO instances format.

Every image has a textured background (gradients, blurred noise, stripes or
checks, low-contrast distractor blobs and lines) with 1..``max_objects`` shapes
on top. Classes differ by form only: colours are random for every object.
Shapes are rasterised by 4x4 supersampling, so each pixel's alpha is its true
coverage; an object's box is the tight box of the pixels it covers at least
half, taken from the shape as drawn (amodal: occlusion by later objects is
limited by ``max_covered``, so the box never describes a mostly hidden shape).

Layout written by :func:`generate_dataset`::

    out/train/000000.png ...   out/train.json
    out/val/000000.png ...     out/val.json

The JSON files are written last and atomically, so their presence means the
dataset is complete.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SPLITS: tuple[str, ...] = ("train", "val")

_SUPERSAMPLE = 4  # rasterise at 4x and area-average: alpha = pixel coverage in 1/16 steps
_SHIFT = 4  # fractional bits of the vertex coordinates given to cv2.fillPoly
_PLACEMENT_TRIES = 6
_COLOUR_TRIES = 24
_MIN_CONTRAST = 60.0  # RGB distance from nearly all pixels bordering the object
_MAX_SURROUNDINGS = 256  # bordering pixels compared against each candidate colour
_MAX_CLOSE_FRACTION = 0.1  # tolerate a few bordering pixels (noise, thin lines) of similar colour
_ASPECT_RANGE = (0.5, 2.0)
_NOISE_SIGMA = (1.0, 5.0)
_HALF_COVERED = 120  # alpha of >= 8 of 16 samples (8/16 -> 127.5, 7/16 -> 111.6 before rounding)

Polygons = list[tuple[np.ndarray, bool]]  # (N, 2) outline in drawing order, True = fill, False = hole


@dataclass(frozen=True)
class _Config:
    """Generation parameters shared by all images of a dataset."""

    image_size: tuple[int, int]
    min_object: int
    max_object_fraction: float
    max_objects: int
    max_covered: float


@dataclass(frozen=True)
class _Object:
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


def _rasterise(polygons: Polygons, origin: np.ndarray, height: int, width: int) -> np.ndarray:
    """Coverage (uint8, 255 = full) of ``height`` x ``width`` pixels starting at ``origin`` (x, y).

    Coordinates are continuous with pixel i spanning [i, i + 1), as in COCO boxes.
    """
    s = _SUPERSAMPLE
    canvas = np.zeros((height * s, width * s), np.uint8)
    for points, fill in polygons:
        # cv2 fills pixels by their centre, hence the half-pixel shift at the supersampled scale
        fixed = np.round(((points - origin) * s - 0.5) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 255 if fill else 0, cv2.LINE_8, _SHIFT)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------- background


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _coordinates(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pixel positions projected on a random direction."""
    angle = rng.uniform(0, np.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(np.cos(angle))
    ys = np.arange(height, dtype=np.float32) * np.float32(np.sin(angle))
    return ys[:, None] + xs[None, :]


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient between two random colours in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    tx = np.arange(width, dtype=np.float32) * np.float32(np.cos(angle))
    ty = np.arange(height, dtype=np.float32) * np.float32(np.sin(angle))
    tx, ty = tx - tx.min(), ty - ty.min()
    start, end = _colour(rng), _colour(rng)
    step = (end - start) / max(tx.max() + ty.max(), 1.0)
    # linear in x and y: the sum of a row term and a column term, cheaper than a full coordinate grid
    return start + ty[:, None, None] * step + tx[None, :, None] * step


def _blurred_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Zero-mean coloured noise, Gaussian-blurred to a random grain size."""
    noise = rng.standard_normal((height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(1.0, 8.0))
    return noise / (noise.std() + 1e-6) * rng.uniform(8, 30)


def _periodic(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Stripes, or checks when a wave in a second direction multiplies them; hard or soft edged."""
    period = rng.uniform(4, 40)
    u = _coordinates(rng, height, width)
    wave = np.sin(2 * np.pi * u / period)
    if rng.random() < 0.4:
        wave = wave * np.sin(2 * np.pi * _coordinates(rng, height, width) / period)
    if rng.random() < 0.5:
        wave = np.sign(wave)
    return wave[..., None] * rng.uniform(-30, 30, 3).astype(np.float32)


def _add_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """Add low-contrast amorphous blobs and polylines that belong to no class, in place."""
    height, width = image.shape[:2]
    for _ in range(rng.integers(0, 7)):
        if rng.random() < 0.5:
            region, weight = _polyline(rng, height, width)
        else:
            region, weight = _blob(rng, height, width)
        strength = rng.uniform(12, 35) * rng.choice([-1.0, 1.0])
        image[region] += weight[..., None] * (strength * rng.uniform(0.5, 1.0, 3)).astype(np.float32)


def _polyline(rng: np.random.Generator, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """A random open polyline as (region, weight in [0, 1]); the region keeps the update local."""
    points = np.round(rng.uniform(0, [width, height], (rng.integers(2, 5), 2))).astype(np.int32)
    thickness = int(rng.integers(1, 4))
    x0, y0 = np.maximum(points.min(axis=0) - thickness - 1, 0)
    x1, y1 = np.minimum(points.max(axis=0) + thickness + 2, [width, height])
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.polylines(mask, [points - [x0, y0]], False, 255, thickness, cv2.LINE_AA)
    return (slice(y0, y1), slice(x0, x1)), mask.astype(np.float32) / 255


def _blob(rng: np.random.Generator, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """An irregular soft-edged region, thresholded smooth noise under a round window, as (region, weight)."""
    size = min(int(rng.integers(10, 50)), height, width)
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), size / 8)
    ys, xs = np.mgrid[:size, :size]
    window = np.maximum(1 - np.hypot(xs - size / 2, ys - size / 2) / (size / 2), 0)
    # multiplying by the window keeps the region off the patch edges, which would cut straight sides into it
    patch = (window * (1 + 0.8 * noise / (noise.std() + 1e-6)) > 0.4).astype(np.float32)
    x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    return (slice(y, y + size), slice(x, x + size)), cv2.GaussianBlur(patch, (0, 0), 1.0)


def _radial(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A soft spot of light or shade around a random centre, so colour changes are not all linear."""
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    radius = rng.uniform(0.3, 1.0) * max(width, height)
    dx = (np.arange(width, dtype=np.float32) - cx) ** 2
    dy = (np.arange(height, dtype=np.float32) - cy) ** 2
    falloff = np.exp(-(dy[:, None] + dx[None, :]) / np.float32(radius**2))
    return falloff[..., None] * rng.uniform(-60, 60, 3).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB background: a gradient plus one or two textures plus distractors."""
    image = _gradient(rng, height, width)
    textures = (_blurred_noise, _periodic, _radial)
    for index in rng.choice(len(textures), size=rng.integers(1, 3), replace=False):
        image = image + textures[index](rng, height, width)
    _add_distractors(rng, image)
    return np.clip(image, 0, 255)


# -------------------------------------------------------------------------- objects


def _pick_colour(rng: np.random.Generator, surroundings: np.ndarray) -> np.ndarray:
    """A random colour far from (nearly all of) the pixels bordering the object."""
    surroundings = surroundings[:: -(-len(surroundings) // _MAX_SURROUNDINGS)]  # an even subsample is enough
    candidates = rng.uniform(0, 255, (_COLOUR_TRIES, 3)).astype(np.float32)
    squared = (candidates**2).sum(1)[:, None] - 2 * candidates @ surroundings.T + (surroundings**2).sum(1)[None]
    too_close = (squared < _MIN_CONTRAST**2).mean(axis=1)
    good = np.flatnonzero(too_close <= _MAX_CLOSE_FRACTION)
    return candidates[good[0] if good.size else np.argmin(too_close)]


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
        colour = _pick_colour(rng, crop[ring] if ring.any() else crop.reshape(-1, 3))
        a = alpha[..., None].astype(np.float32) / 255
        self.image[y, x] = crop * (1 - a) + colour * a
        self.visible -= self._newly_hidden(y, x, mask)
        self.owner[y, x][mask] = len(self.areas)
        area = np.count_nonzero(mask)
        self.areas = np.append(self.areas, area)
        self.visible = np.append(self.visible, area)


def _place(rng: np.random.Generator, scene: _Scene, label: int, size: float) -> _Object | None:
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
        alpha = _rasterise([(p + offset, fill) for p, fill in polygons], origin, y1 - origin[1], x1 - origin[0])
        mask = alpha > _HALF_COVERED
        ys, xs = np.nonzero(mask)
        y, x = slice(origin[1], y1), slice(origin[0], x1)
        if ys.size == 0 or scene.occludes_too_much(y, x, mask):
            continue
        scene.paint(rng, y, x, alpha, mask)
        box = (origin[0] + xs.min(), origin[1] + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        return _Object(label, tuple(float(v) for v in box), round(float(alpha.sum()) / 255, 2))
    return None


def _render(rng: np.random.Generator, config: _Config) -> tuple[np.ndarray, list[_Object]]:
    """One RGB uint8 image and its objects, in drawing order."""
    low, high = config.image_size
    width, height = (int(v) for v in rng.integers(low, high + 1, 2))
    scene = _Scene(_background(rng, height, width), config.max_covered)
    max_size = config.max_object_fraction * min(width, height)
    objects = []
    for _ in range(rng.integers(1, config.max_objects + 1)):
        label = int(rng.integers(len(CLASSES)))
        size = np.exp(rng.uniform(np.log(config.min_object), np.log(max_size)))
        placed = _place(rng, scene, label, size)
        if placed is not None:
            objects.append(placed)
    noisy = rng.standard_normal(scene.image.shape, dtype=np.float32)
    noisy *= np.float32(rng.uniform(*_NOISE_SIGMA))
    noisy += scene.image + np.float32(0.5)  # + 0.5 so that truncation to uint8 rounds
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8), objects


# ----------------------------------------------------------------------------- files


def _write_split(out: Path, split: str, count: int, seed: int, config: _Config) -> dict:
    """Render and save a split's images; return its COCO dict."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        # a child seed per (split, image): images are independent of each other and of the split sizes
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
        image, objects = _render(rng, config)
        file_name = f"{index:06d}.png"
        if not cv2.imwrite(str(folder / file_name), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"could not write {folder / file_name}")
        image_id = index + 1
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": list(obj.bbox),
                    "area": obj.area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_json_atomic(data: dict, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def generate_dataset(
    out: str | Path,
    num_train: int = 2000,
    num_val: int = 250,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 160),
    min_object: int = 6,
    max_object_fraction: float = 0.5,
    max_objects: int = 15,
    max_covered: float = 0.35,
) -> dict[str, Path]:
    """Write the shapes dataset under ``out`` and return ``{split: annotation JSON path}``.

    Args:
        out: Output folder; images go to ``out/<split>/``, annotations to ``out/<split>.json``.
        num_train: Number of training images.
        num_val: Number of validation images.
        seed: Seed; the same seed gives byte-identical files (with the same numpy and OpenCV builds).
        image_size: (min, max) of image width and of image height, each drawn independently.
        min_object: Smallest longest side of an object, in pixels.
        max_object_fraction: Largest longest side of an object, as a fraction of the image's short side.
        max_objects: Objects per image are drawn uniformly from 1..max_objects (fewer if placements fail).
        max_covered: Largest fraction of an object that later objects may hide.
    """
    low, high = image_size
    if not 0 < low <= high:
        raise ValueError(f"image_size must be (min, max) with 0 < min <= max, got {image_size}")
    if not 0 < max_object_fraction <= 1 - 2 / low:
        raise ValueError(f"max_object_fraction={max_object_fraction} leaves no 1-pixel margin in a {low} px image")
    if not 1 <= min_object <= max_object_fraction * low:
        raise ValueError(f"min_object={min_object} does not fit max_object_fraction={max_object_fraction} of {low} px")
    if max_objects < 1 or not 0 < max_covered < 1:
        raise ValueError("need max_objects >= 1 and 0 < max_covered < 1")
    config = _Config(image_size, min_object, max_object_fraction, max_objects, max_covered)
    out = Path(out)
    paths = {split: out / f"{split}.json" for split in SPLITS}
    for path in paths.values():
        path.unlink(missing_ok=True)  # a previous run's index must not vouch for images being rewritten
    datasets = {split: _write_split(out, split, n, seed, config) for split, n in zip(SPLITS, (num_train, num_val))}
    for split, data in datasets.items():
        _write_json_atomic(data, paths[split])
    return paths


def summarize(path: str | Path) -> str:
    """A one-line summary of a split's annotation file: image and object counts, objects per class."""
    data = json.loads(Path(path).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = Counter(names[a["category_id"]] for a in data["annotations"])
    n_images, n_objects = len(data["images"]), len(data["annotations"])
    classes = ", ".join(f"{name}={per_class[name]}" for name in names.values())
    return f"{path}: {n_images} images, {n_objects} objects ({n_objects / max(n_images, 1):.1f}/image): {classes}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic shapes detection dataset (COCO format).")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 160), metavar=("MIN", "MAX"))
    parser.add_argument("--min-object", type=int, default=6, help="smallest object size in pixels")
    parser.add_argument("--max-object-fraction", type=float, default=0.5, help="largest object size / short side")
    parser.add_argument("--max-objects", type=int, default=15)
    parser.add_argument("--max-covered", type=float, default=0.35, help="largest hidden fraction of an object")
    args = parser.parse_args(argv)
    paths = generate_dataset(
        args.out,
        args.num_train,
        args.num_val,
        args.seed,
        tuple(args.image_size),
        args.min_object,
        args.max_object_fraction,
        args.max_objects,
        args.max_covered,
    )
    for path in paths.values():
        print(summarize(path))


if __name__ == "__main__":
    main()
