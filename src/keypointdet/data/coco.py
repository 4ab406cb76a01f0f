"""COCO-format detection datasets (pycocotools): one loader for every dataset, embedded or real.

Bad input never passes silently. Annotations are checked once, when the file is loaded: a box with a
non-finite or non-positive size, a malformed entry, a box wholly outside its image or an unknown category
id is removed (from training and from the ground truth used for evaluation alike), counted per image and
reported in one :class:`DataWarning` per kind naming the file and the annotation ids; boxes partly outside
their image are clipped to it. Images are checked when read: a missing, unreadable or corrupt file, or one
whose size differs from the annotation file, is replaced by the next readable image of the dataset, counted
and reported. With ``strict=True`` the first problem raises an error naming the file and annotation instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter, defaultdict
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

# What each ``num_*`` count of a sample means (the detector logs their sums as ``data/num_*`` every epoch).
SKIP_COUNTS = {
    "num_bad_boxes": "annotations skipped: malformed, or a box with a zero, negative or non-finite size",
    "num_outside_boxes": "annotations skipped: box wholly outside its image",
    "num_unknown_category": "annotations skipped: category id not in 'categories'",
    "num_bad_images": "images skipped (missing, unreadable, corrupt, or not the size the annotations give)",
}
ANNOTATION_PROBLEMS = ("num_bad_boxes", "num_outside_boxes", "num_unknown_category")
# ids listed in a warning; the count covers all of them
MAX_IDS_REPORTED = 10


class DataWarning(UserWarning):
    """Something in the dataset was skipped, clipped or converted."""


class BadImageError(OSError):
    """An image that cannot be used: missing, unreadable, corrupt, or not the size its annotations give."""


def read_image(path: Path) -> np.ndarray:
    """Image file -> uint8 ``[H, W, 3]`` RGB; grayscale, alpha and 16-bit images are converted.

    Raises :class:`BadImageError` naming the file when it is missing, unreadable or corrupt.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        reason = "file not found" if not path.is_file() else "unreadable or corrupt image data"
        raise BadImageError(f"cannot read image {path}: {reason}")
    if image.dtype == np.uint16:
        image = (image / 257).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadImageError(f"cannot read image {path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_json(ann_file: str | Path) -> dict[str, Any]:
    """The raw content of a COCO instances file; a missing or malformed file raises an error naming it."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read COCO annotation file {path}: {error}") from error
    _check_structure(data, path)
    return data


def _check_structure(data: Any, source: Path | str) -> None:
    """Raise naming ``source`` unless ``data`` has the lists of images and categories a dataset needs.

    A malformed file raises ``ValueError``, like a JSON syntax error (not ``TypeError``: the caller did
    nothing wrong).
    """
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004
            f"{source}: not a COCO instances file (top level is {type(data).__name__}, not an object)"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{source}: not a COCO instances file ('{key}' list missing)")  # noqa: TRY004
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{source}: 'annotations' is not a list")  # noqa: TRY004
    for position, image in enumerate(data["images"]):
        missing = [
            key for key in ("id", "file_name", "width", "height") if not isinstance(image, dict) or key not in image
        ]
        if missing:
            raise ValueError(f"{source}: images[{position}] lacks {', '.join(missing)}")
    for position, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise ValueError(f"{source}: categories[{position}] needs an 'id' and a 'name'")


def _index_quietly(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over ``data`` (already checked), without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def clean_annotations(
    data: dict[str, Any], source: Path | str, strict: bool = False
) -> tuple[dict[str, Any], dict[int, Counter]]:
    """Check every annotation of ``data``; return a copy without the bad ones and the counts per image.

    Partly-outside boxes are clipped to their image. The counts map an image id to a ``Counter`` over
    :data:`ANNOTATION_PROBLEMS`. One :class:`DataWarning` per kind of problem names ``source`` and the first
    annotation ids; ``strict=True`` raises ``ValueError`` at the first problem instead.
    """
    images = {image["id"]: image for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    kept: list[dict[str, Any]] = []
    counts: dict[int, Counter] = defaultdict(Counter)
    problems: dict[str, list[Any]] = defaultdict(list)
    for position, ann in enumerate(data.get("annotations", [])):
        kind, reason, clipped = _check_annotation(ann, images, category_ids)
        if kind is None:
            if clipped is not None:
                problems["clipped"].append(ann["id"])
                ann = {**ann, "bbox": clipped}
            # COCOeval needs both; exports often leave them out
            kept.append({"iscrowd": 0, "area": ann["bbox"][2] * ann["bbox"][3], **ann})
            continue
        ann_id = ann.get("id", f"at position {position}") if isinstance(ann, dict) else f"at position {position}"
        if strict:
            raise ValueError(f"{source}: annotation {ann_id} {reason}")
        problems[kind].append(ann_id)
        if isinstance(ann, dict) and ann.get("image_id") in images:
            counts[ann["image_id"]][kind] += 1
    _warn_problems(problems, source)
    return {**data, "annotations": kept}, dict(counts)


def _check_annotation(
    ann: Any, images: dict[Any, dict[str, Any]], category_ids: set[Any]
) -> tuple[str | None, str, list[float] | None]:
    """``(problem kind or None, reason, clipped bbox or None)`` of one annotation."""
    if not isinstance(ann, dict) or any(key not in ann for key in ("id", "image_id", "category_id", "bbox")):
        return "num_bad_boxes", "is malformed (needs id, image_id, category_id and bbox)", None
    if ann["image_id"] not in images:
        return "num_bad_boxes", f"refers to image id {ann['image_id']}, which is not in 'images'", None
    image = images[ann["image_id"]]
    where = f"(image {ann['image_id']}, {image['file_name']})"
    bbox = ann["bbox"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return "num_bad_boxes", f"{where} bbox {bbox!r} is not [x, y, width, height]", None
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox) or w <= 0 or h <= 0:
        return "num_bad_boxes", f"{where} bbox {bbox} has a zero, negative or non-finite size", None
    if ann["category_id"] not in category_ids:
        return "num_unknown_category", f"{where} category id {ann['category_id']} is not in 'categories'", None
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, image["width"]), min(y + h, image["height"])
    if x2 <= x1 or y2 <= y1:
        return (
            "num_outside_boxes",
            f"{where} bbox {bbox} lies outside the {image['width']}x{image['height']} image",
            None,
        )
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        return None, "", [x1, y1, x2 - x1, y2 - y1]
    return None, "", None


def _warn_problems(problems: dict[str, list[Any]], source: Path | str) -> None:
    for kind, ann_ids in problems.items():
        shown = ", ".join(str(ann_id) for ann_id in ann_ids[:MAX_IDS_REPORTED])
        more = f" and {len(ann_ids) - MAX_IDS_REPORTED} more" if len(ann_ids) > MAX_IDS_REPORTED else ""
        what = "boxes partly outside their image, clipped to it" if kind == "clipped" else SKIP_COUNTS[kind]
        warnings.warn(f"{source}: {len(ann_ids)} {what} (annotation ids {shown}{more})", DataWarning, stacklevel=3)


def load_coco(ann_file: str | Path, strict: bool = False) -> COCO:
    """Parse and check a COCO instances file quietly (see :func:`clean_annotations`); a missing or
    malformed file raises an error naming it."""
    path = Path(ann_file)
    data, _ = clean_annotations(read_json(path), path, strict)
    return _index_quietly(data)


class CocoDetection(Dataset):
    """Samples of a COCO-format dataset, transformed and (for training) encoded into targets.

    Category ids map to contiguous labels ``0..C-1`` in increasing id order (``category_ids[label]``
    maps back). Crowd boxes are never positives. Images without annotations are kept (negatives).

    Each sample is a flat dict of tensors: ``image [3, H, W]``, ``image_id``, ``original_size``
    ``(h, w)``, ``scale`` / ``shift`` ``(x, y)`` with ``input = original * scale + shift``, the
    :data:`SKIP_COUNTS` of this sample (annotation problems of its image; images skipped to reach it),
    and the encoder's targets (with their ``num_dropped``) when an encoder is given.

    An index may be an ``(index, seed)`` pair: the transform's random stream then restarts from ``seed``,
    which makes the augmentation of a sample independent of the worker that loads it.

    Args:
        ann_file: COCO instances file.
        img_dir: folder the images' ``file_name`` are relative to.
        stride: output stride of the detector (targets are on the ``ceil(input / stride)`` map).
        strict: raise at the first bad annotation or image instead of skipping and counting it.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transform: Transform,
        encoder: Encoder | None = None,
        stride: int = 4,
        strict: bool = False,
    ) -> None:
        self.source: Path | str = Path(ann_file)
        self._build(read_json(ann_file), img_dir, transform, encoder, stride, strict)

    def _build(
        self,
        data: dict[str, Any],
        img_dir: str | Path,
        transform: Transform,
        encoder: Encoder | None,
        stride: int,
        strict: bool,
    ) -> None:
        """Check and index ``data`` (a COCO instances dict, from :attr:`source`)."""
        cleaned, self.problem_counts = clean_annotations(data, self.source, strict)
        self.coco = _index_quietly(cleaned)
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
        out = self.transform(image, boxes, labels)
        problems = self.problem_counts.get(image_id, Counter())
        sample = {
            "image": out["image"],
            "image_id": torch.tensor(image_id),
            "original_size": torch.tensor(image.shape[:2]),
            "scale": torch.as_tensor(out.get("scale", np.ones(2)), dtype=torch.float32),
            "shift": torch.as_tensor(out.get("shift", np.zeros(2)), dtype=torch.float32),
            "num_bad_images": torch.tensor(images_skipped),
            **{kind: torch.tensor(problems[kind]) for kind in ANNOTATION_PROBLEMS},
        }
        if self.encoder is not None:
            sample.update(self._targets(out["image"], out["boxes"], out["labels"], image_id))
        return sample

    def _targets(self, image: Tensor, boxes: np.ndarray, labels: np.ndarray, image_id: int) -> dict[str, Tensor]:
        """Encoder targets on the ``ceil(input / stride)`` output map (output cell i covers input pixels
        ``[stride * i, stride * (i + 1))``, whatever the rounding of odd sizes)."""
        max_objects = getattr(self.encoder, "max_objects", None)
        if self.strict and max_objects is not None and len(boxes) > max_objects:
            raise ValueError(
                f"image {self.image_path(image_id)} (id {image_id}) has {len(boxes)} objects after augmentation, "
                f"more than max_objects={max_objects}"
            )
        input_height, input_width = image.shape[-2:]
        output_size = (-(-input_height // self.stride), -(-input_width // self.stride))
        return self.encoder(boxes / self.stride, labels, output_size)
