"""Image + box transforms: training augmentation (albumentations) and the evaluation letterbox.

Every transform returns the image as a normalised ``[3, H, W]`` float tensor, boxes ``[N, 4]``
xyxy in input pixels, and how input pixels relate to original ones: ``input = original * scale + shift``
(per axis, ``scale`` and ``shift`` as ``(x, y)``), which evaluation inverts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``[H, W, 3]`` RGB -> float ``[3, H, W]`` normalised with ``mean`` / ``std`` (0-1 scale)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return tensor.sub_(mean_t).div_(std_t)


class TrainTransform:
    """Training augmentation of the CenterNet / CornerNet recipe, with boxes kept in step.

    The image is letterboxed into an ``input_size`` square, zoomed by a random factor whose
    inverse is the papers' crop scale (``scale_range`` of the long side), shifted at random,
    flipped horizontally and colour-jittered. Boxes are clipped to the image and degenerate ones
    dropped (with their labels).
    """

    def __init__(
        self,
        input_size: int,
        scale_range: Sequence[float] = (0.6, 1.3),
        shift: float = 0.2,
        flip: float = 0.5,
        color_jitter: float = 0.4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        low, high = scale_range
        mean_colour = tuple(255 * m for m in mean)  # padding that normalises to 0, as in evaluation
        self.pipeline = A.Compose(
            [
                A.LongestMaxSize(max_size=input_size),
                A.PadIfNeeded(
                    input_size, input_size, position="center", border_mode=cv2.BORDER_CONSTANT, fill=mean_colour
                ),
                A.Affine(
                    scale=(1 / high, 1 / low),
                    translate_percent=(-shift, shift),
                    balanced_scale=True,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=mean_colour,
                    p=1.0,
                ),
                A.HorizontalFlip(p=flip),
                A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0, p=1.0),
                A.Normalize(mean=mean, std=std),
                ToTensorV2(),
            ],
            bbox_params=A.BboxParams(
                format="pascal_voc", label_fields=["labels"], clip=True, filter_invalid_bboxes=True, min_area=1.0
            ),
        )

    def set_random_seed(self, seed: int) -> None:
        """Give this copy of the pipeline its own random stream (one per data-loading worker)."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """``image [H, W, 3]`` uint8 RGB, ``boxes [N, 4]`` xyxy, ``labels [N]`` -> augmented sample."""
        out = self.pipeline(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
        return {
            "image": out["image"],
            "boxes": np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4),
            "labels": np.asarray(out["labels"], dtype=np.int64).reshape(-1),
        }


class Letterbox:
    """Evaluation transform: resize the long side to ``input_size`` at the image's aspect ratio,
    pad bottom / right to a multiple of ``size_divisor``, and record the mapping."""

    def __init__(
        self,
        input_size: int,
        size_divisor: int = 32,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.input_size = input_size
        self.size_divisor = size_divisor
        self.mean, self.std = mean, std

    def set_random_seed(self, seed: int) -> None:
        """Deterministic: nothing to seed."""

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """``image [H, W, 3]`` uint8 RGB -> padded image, boxes in input pixels, ``scale``, ``shift``."""
        height, width = image.shape[:2]
        ratio = self.input_size / max(height, width)
        new_width, new_height = max(1, round(width * ratio)), max(1, round(height * ratio))
        resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        padded_height = -(-new_height // self.size_divisor) * self.size_divisor
        padded_width = -(-new_width // self.size_divisor) * self.size_divisor
        # Zero after normalisation is the mean colour, the same as the training padding.
        canvas = torch.zeros((3, padded_height, padded_width))
        canvas[:, :new_height, :new_width] = _normalise(resized, self.mean, self.std)
        scale = np.array([new_width / width, new_height / height])
        return {
            "image": canvas,
            "boxes": boxes.reshape(-1, 4) * np.tile(scale, 2),
            "labels": labels,
            "scale": scale,
            "shift": np.zeros(2),
        }
