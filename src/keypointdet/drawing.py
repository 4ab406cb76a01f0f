"""Images in, detections drawn on them: numpy and PIL only, shared by the PyTorch path and the torch-free runtime."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from keypointdet.data.annotations import read_image

ImageInput = str | Path | np.ndarray | Image.Image
# bbox [x, y, w, h] in original pixels, score, category_id, class_name (pose: keypoints [x1, y1, s1, ...])
Detection = dict[str, Any]
BOX_WIDTH = 2
JOINT_RADIUS = 2


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """A path, a PIL image or an array -> uint8 RGB ``[H, W, 3]`` (arrays must already be RGB)."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB array [H, W, 3], got {array.dtype} {list(array.shape)}")
    return array


def draw_detections(
    image: ImageInput, detections: Sequence[Detection], score_threshold: float = 0.3,
    skeleton: Sequence[Sequence[int]] = (),
) -> np.ndarray:  # fmt: skip
    """``image`` with the boxes, class names and scores of the detections above ``score_threshold``
    drawn on it, and their keypoints when they have some: a dot per joint and a line per limb of ``skeleton``
    (``[a, b]`` joint numbers, 1-based as COCO's); returns uint8 RGB ``[H, W, 3]``."""
    canvas = Image.fromarray(to_rgb_array(image).copy())
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for detection in detections:
        if detection["score"] < score_threshold:
            continue
        x, y, width, height = detection["bbox"]
        # A negative size (an untrained or confused size branch) is drawn as the box it spans.
        x1, x2 = sorted((int(x), int(x + width)))
        y1, y2 = sorted((int(y), int(y + height)))
        color = _color(detection["category_id"])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=BOX_WIDTH)
        label = f"{detection['class_name']} {detection['score']:.2f}"
        draw.text((x1 + BOX_WIDTH + 1, y1 + BOX_WIDTH + 1), label, fill=color, font=font)
        if "keypoints" in detection:
            _draw_pose(draw, detection["keypoints"], skeleton, color)
    return np.asarray(canvas)


def draw_keypoints(
    image: ImageInput, keypoints: np.ndarray, skeleton: Sequence[Sequence[int]] = (),
    color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:  # fmt: skip
    """``image`` with annotated poses drawn on it in ``color`` (e.g. the ground truth under the predictions): the
    labelled joints (visibility > 0) of ``keypoints [N, J, 3]`` (x, y, visibility, COCO's) as dots and the limbs of
    ``skeleton`` whose two joints are labelled as lines; returns uint8 RGB ``[H, W, 3]``."""
    canvas = Image.fromarray(to_rgb_array(image).copy())
    draw = ImageDraw.Draw(canvas)
    for pose in np.asarray(keypoints, dtype=np.float64).reshape(-1, *np.shape(keypoints)[-2:]):
        _draw_pose(draw, pose.reshape(-1).tolist(), skeleton, color, labelled=pose[:, 2] > 0)
    return np.asarray(canvas)


def _draw_pose(
    draw: ImageDraw.ImageDraw, keypoints: Sequence[float], skeleton: Sequence[Sequence[int]], color,
    labelled: Sequence[bool] | None = None,
) -> None:  # fmt: skip
    """The joints ``[x1, y1, s1, ...]`` as dots and the ``skeleton``'s limbs between them as lines (only the
    ``labelled`` joints and the limbs between two of them, when given)."""
    points = list(zip(keypoints[0::3], keypoints[1::3]))
    shown = [True] * len(points) if labelled is None else list(labelled)
    for first, second in skeleton:
        if shown[first - 1] and shown[second - 1]:
            draw.line([points[first - 1], points[second - 1]], fill=color, width=BOX_WIDTH)
    for (x, y), drawn in zip(points, shown):
        if drawn:
            draw.ellipse((x - JOINT_RADIUS, y - JOINT_RADIUS, x + JOINT_RADIUS, y + JOINT_RADIUS), fill=color)


def _color(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour per category (golden-ratio hues)."""
    hue = (category_id * 0.618033988749895) % 1.0
    red, green, blue = (int(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    return red, green, blue
