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
Detection = dict[str, Any]  # bbox [x, y, w, h] in original pixels, score, category_id, class_name
BOX_WIDTH = 2


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


def draw_detections(image: ImageInput, detections: Sequence[Detection], score_threshold: float = 0.3) -> np.ndarray:
    """``image`` with the boxes, class names and scores of the detections above ``score_threshold``
    drawn on it; returns uint8 RGB ``[H, W, 3]``."""
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
    return np.asarray(canvas)


def _color(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour per category (golden-ratio hues)."""
    hue = (category_id * 0.618033988749895) % 1.0
    red, green, blue = (int(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    return red, green, blue
