"""COCO-format detection datasets (pycocotools): one loader for every dataset, embedded or real.

Annotations are read and checked by :mod:`keypointdet.data.annotations` (the bad-input policy). Images are
checked when read: a missing, unreadable or corrupt file, or one whose size differs from the annotation
file, is replaced by the next readable image of the dataset, counted and reported. With ``strict=True`` the
first problem raises an error naming the file and annotation instead.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from keypointdet.data.annotations import (
    ANNOTATION_PROBLEMS,
    KEYPOINT_PROBLEMS,
    SKIP_COUNTS,
    BadImageError,
    DataWarning,
    clean_annotations,
    index_quietly,
    load_coco,
    read_image,
    read_json,
)

__all__ = ["SKIP_COUNTS", "BadImageError", "CocoDetection", "DataWarning", "load_coco", "read_image", "read_json"]

Encoder = Callable[..., dict[str, Tensor]]  # (boxes, labels, output_size[, keypoints]) -> targets
Transform = Callable[..., dict[str, Any]]  # (image, boxes, labels[, keypoints]) -> sample

class CocoDetection(Dataset):
    """Samples of a COCO-format dataset, transformed and (for training) encoded into targets.

    Category ids map to contiguous labels ``0..C-1`` in increasing id order (``category_ids[label]``
    maps back). Crowd boxes are never positives. Images without annotations are kept (negatives).

    Each sample is a flat dict of tensors: ``image [3, H, W]``, ``image_id``, ``original_size``
    ``(h, w)``, for evaluation ``scale`` / ``shift`` ``(x, y)`` with ``input = original * scale + shift`` (see
    :class:`keypointdet.boxes.BoxMapping`), the
    :data:`SKIP_COUNTS` of this sample (annotation problems of its image; images skipped to reach it),
    and the encoder's targets (with their ``num_dropped``) when an encoder is given.

    A keypoint dataset (``num_joints``) reads every object's COCO ``keypoints`` too (checked at loading), carries
    them through the transform and gives them to an encoder that takes them (``needs_keypoints``).

    An index may be an ``(index, seed)`` pair: the transform's random stream then restarts from ``seed``,
    which makes the augmentation of a sample independent of the worker that loads it.

    Args:
        ann_file: COCO instances file.
        img_dir: folder the images' ``file_name`` are relative to.
        stride: output stride of the detector (targets are on the ``ceil(input / stride)`` map).
        strict: raise at the first bad annotation or image instead of skipping and counting it.
        num_joints: joints per object of a keypoint dataset (``None``: boxes only).
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transform: Transform,
        encoder: Encoder | None = None,
        stride: int = 4,
        strict: bool = False,
        num_joints: int | None = None,
    ) -> None:
        self.source: Path | str = Path(ann_file)
        self._build(read_json(ann_file), img_dir, transform, encoder, stride, strict, num_joints)

    def _build(
        self,
        data: dict[str, Any],
        img_dir: str | Path,
        transform: Transform,
        encoder: Encoder | None,
        stride: int,
        strict: bool,
        num_joints: int | None = None,
    ) -> None:
        """Check and index ``data`` (a COCO instances dict, from :attr:`source`)."""
        if num_joints is not None:
            _check_joint_count(data, self.source, num_joints)
        self.num_joints = num_joints
        cleaned, self.problem_counts = clean_annotations(data, self.source, strict, num_joints)
        self.coco = index_quietly(cleaned)
        self.img_dir = Path(img_dir)
        self.transform = transform
        self.encoder = encoder
        self.stride = stride
        self.strict = strict
        self.image_ids = sorted(self.coco.getImgIds())
        self.category_ids = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[cat_id]["name"] for cat_id in self.category_ids]
        self.label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotations(self, image_id: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``boxes [N, 4]`` xyxy and ``labels [N]`` of the image's non-crowd objects (checked at loading),
        and how many of its annotations were skipped."""
        anns = [ann for ann in self.coco.imgToAnns.get(image_id, []) if not ann.get("iscrowd", 0)]
        boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([self.label_of[ann["category_id"]] for ann in anns], dtype=np.int64)
        return boxes, labels, sum(self.problem_counts.get(image_id, Counter()).values())

    def keypoints(self, image_id: int) -> np.ndarray:
        """``[N, J, 3]`` (x, y, visibility) of the objects of :meth:`annotations`, in original pixels."""
        anns = [ann for ann in self.coco.imgToAnns.get(image_id, []) if not ann.get("iscrowd", 0)]
        return np.array([ann["keypoints"] for ann in anns], dtype=np.float64).reshape(len(anns), self.num_joints, 3)

    def image_path(self, image_id: int) -> Path:
        return self.img_dir / self.coco.imgs[image_id]["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as uint8 ``[H, W, 3]`` RGB; :class:`BadImageError` when it cannot be used."""
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        image = read_image(path)
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            rotated = " (EXIF-rotated?)" if (width, height) == (info["height"], info["width"]) else ""
            raise BadImageError(
                f"image {path} (id {image_id}) is {width}x{height} but {self.source} says "
                f"{info['width']}x{info['height']}{rotated}"
            )
        return image

    def _first_usable(self, index: int) -> tuple[int, np.ndarray, int]:
        """``(image id, image, images skipped)``: the image at ``index`` or, when it cannot be used, the
        next usable one (wrapping around), so that a batch never loses a sample."""
        for skipped in range(len(self)):
            image_id = self.image_ids[(index + skipped) % len(self)]
            try:
                return image_id, self.load_image(image_id), skipped
            except BadImageError as error:
                if self.strict:
                    raise
                warnings.warn(f"{error}; skipped, using the next image", DataWarning, stacklevel=3)
        raise BadImageError(f"no image of {self.source} in {self.img_dir} can be read")

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Tensor]:
        if isinstance(index, tuple):
            index, seed = index
            self.transform.set_random_seed(seed)
        image_id, image, images_skipped = self._first_usable(index)
        boxes, labels, _ = self.annotations(image_id)
        joints = (self.keypoints(image_id),) if self.num_joints else ()
        out = self.transform(image, boxes, labels, *joints)
        problems = self.problem_counts.get(image_id, Counter())
        kinds = ANNOTATION_PROBLEMS + (KEYPOINT_PROBLEMS if self.num_joints else ())
        sample = {
            "image": out["image"],
            "image_id": torch.tensor(image_id),
            "original_size": torch.tensor(image.shape[:2]),
            "num_bad_images": torch.tensor(images_skipped),
            **{kind: torch.tensor(problems[kind]) for kind in kinds},
        }
        if "scale" in out:  # the evaluation letterbox's mapping (training crops vary and keep none)
            sample["scale"] = torch.as_tensor(out["scale"], dtype=torch.float32)
            sample["shift"] = torch.as_tensor(out["shift"], dtype=torch.float32)
        if self.encoder is not None:
            sample.update(self._targets(out["image"], out["boxes"], out["labels"], image_id, out.get("keypoints")))
        return sample

    def _targets(
        self, image: Tensor, boxes: np.ndarray, labels: np.ndarray, image_id: int, keypoints: np.ndarray | None
    ) -> dict[str, Tensor]:
        """Encoder targets on the ``ceil(input / stride)`` output map (output cell i covers input pixels
        ``[stride * i, stride * (i + 1))``, whatever the rounding of odd sizes); keypoints ``[N, J, 3]`` in input
        pixels for an encoder that takes them."""
        max_objects = getattr(self.encoder, "max_objects", None)
        if self.strict and max_objects is not None and len(boxes) > max_objects:
            raise ValueError(
                f"image {self.image_path(image_id)} (id {image_id}) has {len(boxes)} objects after augmentation, "
                f"more than max_objects={max_objects}"
            )
        input_height, input_width = image.shape[-2:]
        output_size = (-(-input_height // self.stride), -(-input_width // self.stride))
        if not getattr(self.encoder, "needs_keypoints", False):
            return self.encoder(boxes / self.stride, labels, output_size)
        if keypoints is None:
            raise ValueError(f"{self.source}: the detector trains on keypoints; give the data config data.keypoints")
        points = np.concatenate([keypoints[..., :2] / self.stride, keypoints[..., 2:]], axis=-1)
        return self.encoder(boxes / self.stride, labels, output_size, points)


def _check_joint_count(data: dict[str, Any], source: Path | str, num_joints: int) -> None:
    """Raise naming ``source`` when a category lists a number of ``keypoints`` other than ``num_joints``."""
    for category in data.get("categories", []):
        names = category.get("keypoints") if isinstance(category, dict) else None
        if names is not None and len(names) != num_joints:
            raise ValueError(
                f"{source}: category {category.get('name')!r} has {len(names)} keypoints, but data.keypoints "
                f"describes {num_joints} joints"
            )
