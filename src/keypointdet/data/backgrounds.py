"""Textured backgrounds for the embedded dataset: gradients, blurred noise, stripes or checks, radial
patterns, with low-contrast distractor blobs and lines (:func:`background`)."""

from __future__ import annotations

import cv2
import numpy as np

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


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB background: a gradient plus one or two textures plus distractors."""
    image = _gradient(rng, height, width)
    textures = (_blurred_noise, _periodic, _radial)
    for index in rng.choice(len(textures), size=rng.integers(1, 3), replace=False):
        image = image + textures[index](rng, height, width)
    _add_distractors(rng, image)
    return np.clip(image, 0, 255)
