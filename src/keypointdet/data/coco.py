"""COCO-format detection datasets (pycocotools): one loader for every dataset, embedded or real."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

Encoder = Callable[[np.ndarray, np.ndarray, tuple[int, int]], dict[str, Tensor]]
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]


def load_coco(ann_file: str | Path) -> COCO:
    """Parse a COCO instances file quietly; a missing or malformed file raises an error naming it."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except Exception as error:  # pycocotools raises bare asserts / JSON errors without the file name
        raise ValueError(f"cannot read COCO annotation file {path}: {error}") from error


def read_image(path: Path) -> np.ndarray:
    """Image file -> uint8 ``[H, W, 3]`` RGB; grayscale, alpha and 16-bit images are converted."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        reason = "file not found" if not path.is_file() else "unreadable or corrupt image data"
        raise OSError(f"cannot read image {path}: {reason}")
    if image.dtype == np.uint16:
        image = (image / 257).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise OSError(f"cannot read image {path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class CocoDetection(Dataset):
    """Samples of a COCO-format dataset, transformed and (for training) encoded into targets.

    Category ids map to contiguous labels ``0..C-1`` in increasing id order (``category_ids[label]``
    maps back). Crowd boxes are never positives. Boxes with a non-finite or non-positive size are
    skipped and counted in the sample's ``num_skipped``.

    Each sample is a flat dict of tensors: ``image [3, H, W]``, ``image_id``, ``original_size``
    ``(h, w)``, ``scale`` / ``shift`` ``(x, y)`` with ``input = original * scale + shift``, the boxes'
    ``num_skipped``, and the encoder's targets when an encoder is given.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transform: Transform,
        encoder: Encoder | None = None,
        stride: int = 4,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.coco = load_coco(self.ann_file)
        self.transform = transform
        self.encoder = encoder
        self.stride = stride
        self.image_ids = sorted(self.coco.getImgIds())
        self.category_ids = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[cat_id]["name"] for cat_id in self.category_ids]
        self.label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotations(self, image_id: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``boxes [N, 4]`` xyxy and ``labels [N]`` of the non-crowd objects, and the count skipped."""
        boxes, labels, skipped = [], [], 0
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                skipped += 1
                continue
            if ann["category_id"] not in self.label_of:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann.get('id')} of image {image_id} has category id "
                    f"{ann['category_id']}, which is not in 'categories'"
                )
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64), skipped

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = read_image(self.img_dir / info["file_name"])
        boxes, labels, skipped = self.annotations(image_id)
        out = self.transform(image, boxes, labels)
        sample = {
            "image": out["image"],
            "image_id": torch.tensor(image_id),
            "original_size": torch.tensor(image.shape[:2]),
            "scale": torch.as_tensor(out.get("scale", np.ones(2)), dtype=torch.float32),
            "shift": torch.as_tensor(out.get("shift", np.zeros(2)), dtype=torch.float32),
            "num_skipped": torch.tensor(skipped),
        }
        if self.encoder is not None:
            sample.update(self._targets(out["image"], out["boxes"], out["labels"]))
        return sample

    def _targets(self, image: Tensor, boxes: np.ndarray, labels: np.ndarray) -> dict[str, Tensor]:
        """Encoder targets on the ``ceil(input / stride)`` output map (output cell i covers input pixels
        ``[stride * i, stride * (i + 1))``, whatever the rounding of odd sizes)."""
        input_height, input_width = image.shape[-2:]
        output_size = (-(-input_height // self.stride), -(-input_width // self.stride))
        return self.encoder(boxes / self.stride, labels, output_size)
