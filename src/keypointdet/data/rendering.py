"""Drawing primitives shared by the embedded datasets (:mod:`keypointdet.data.shapes`,
:mod:`keypointdet.data.figures`): anti-aliased polygon filling, contrasting colours, sensor noise.

Coordinates are continuous with pixel i spanning [i, i + 1), as in COCO boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

SUPERSAMPLE = 4  # rasterise at 4x and area-average: alpha = pixel coverage in 1/16 steps
HALF_COVERED = 120  # alpha of >= 8 of 16 samples (8/16 -> 127.5, 7/16 -> 111.6 before rounding)
_SHIFT = 4  # fractional bits of the vertex coordinates given to cv2.fillPoly
_COLOUR_TRIES = 24
_MIN_CONTRAST = 60.0  # RGB distance from nearly all pixels bordering the object
_MAX_SURROUNDINGS = 256  # bordering pixels compared against each candidate colour
_MAX_CLOSE_FRACTION = 0.1  # tolerate a few bordering pixels (noise, thin lines) of similar colour

# (N, 2) outline and the value filled into it (a scalar for one channel, one value per channel otherwise)
FilledPolygon = tuple[np.ndarray, float | Sequence[float]]


def rasterise(
    polygons: Sequence[FilledPolygon], origin: np.ndarray, height: int, width: int, channels: int = 1
) -> np.ndarray:
    """``height`` x ``width`` (x ``channels``) uint8 pixels starting at ``origin`` (x, y), each the area average
    of the values the polygons fill in, painted in order (a later polygon overwrites an earlier one).

    With values 255 (fill) and 0 (hole) this is the pixel coverage; with premultiplied colours and an alpha
    channel it is an anti-aliased drawing.
    """
    s = SUPERSAMPLE
    shape = (height * s, width * s) if channels == 1 else (height * s, width * s, channels)
    canvas = np.zeros(shape, np.uint8)
    for points, value in polygons:
        # cv2 fills pixels by their centre, hence the half-pixel shift at the supersampled scale
        fixed = np.round(((points - origin) * s - 0.5) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], value, cv2.LINE_8, _SHIFT)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


def pick_colour(rng: np.random.Generator, surroundings: np.ndarray) -> np.ndarray:
    """A random colour (float32 RGB) far from (nearly all of) the ``surroundings`` pixels ``[N, 3]``."""
    surroundings = surroundings[:: -(-len(surroundings) // _MAX_SURROUNDINGS)]  # an even subsample is enough
    candidates = rng.uniform(0, 255, (_COLOUR_TRIES, 3)).astype(np.float32)
    squared = (candidates**2).sum(1)[:, None] - 2 * candidates @ surroundings.T + (surroundings**2).sum(1)[None]
    too_close = (squared < _MIN_CONTRAST**2).mean(axis=1)
    good = np.flatnonzero(too_close <= _MAX_CLOSE_FRACTION)
    return candidates[good[0] if good.size else np.argmin(too_close)]


def with_noise(rng: np.random.Generator, image: np.ndarray, sigma_range: tuple[float, float]) -> np.ndarray:
    """The float RGB ``image`` plus Gaussian noise of a random sigma in ``sigma_range``, as uint8."""
    noisy = rng.standard_normal(image.shape, dtype=np.float32)
    noisy *= np.float32(rng.uniform(*sigma_range))
    noisy += image + np.float32(0.5)  # + 0.5 so that truncation to uint8 rounds
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
