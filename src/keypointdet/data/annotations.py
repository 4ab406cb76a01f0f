"""Reading and checking COCO-format annotation files and images: the bad-input policy.

Bad input never passes silently. Annotations are checked once, when the file is loaded: a box with a
non-finite or non-positive size, a malformed entry, a box wholly outside its image or an unknown category
id is removed (from training and from the ground truth used for evaluation alike), counted per image and
reported in one :class:`DataWarning` per kind naming the file and the annotation ids; boxes partly outside
their image are clipped to it. In a keypoint dataset, an unusable ``keypoints`` list leaves its object with no
labelled joint, and a labelled joint that is not a finite point inside its image is made unlabelled
(:func:`keypointdet.data.keypoints.check_keypoints`), both counted and reported the same way. With
``strict=True`` the first problem raises an error naming the file and annotation instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools.coco import COCO

from keypointdet.data.keypoints import check_keypoints

# What each ``num_*`` count of a sample means (the detector logs their sums as ``data/num_*`` every epoch).
SKIP_COUNTS = {
    "num_bad_boxes": "annotations skipped: malformed, or a box with a zero, negative or non-finite size",
    "num_outside_boxes": "annotations skipped: box wholly outside its image",
    "num_unknown_category": "annotations skipped: category id not in 'categories'",
    "num_bad_images": "images skipped (missing, unreadable, corrupt, or not the size the annotations give)",
    "num_bad_keypoints": "keypoint lists skipped (missing, not numbers or of the wrong length): no labelled joint",
    "num_bad_joints": "labelled joints made unlabelled: outside their image, not finite, or visibility not 0/1/2",
}
ANNOTATION_PROBLEMS = ("num_bad_boxes", "num_outside_boxes", "num_unknown_category")
# the counts of keypoint datasets only
KEYPOINT_PROBLEMS = ("num_bad_keypoints", "num_bad_joints")
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


def index_quietly(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over ``data`` (already checked), without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def clean_annotations(
    data: dict[str, Any], source: Path | str, strict: bool = False, num_joints: int | None = None
) -> tuple[dict[str, Any], dict[int, Counter]]:
    """Check every annotation of ``data``; return a copy without the bad ones and the counts per image.

    Partly-outside boxes are clipped to their image. With ``num_joints`` (a keypoint dataset) every kept
    annotation's ``keypoints`` are checked too and its ``num_keypoints`` set to its labelled joints (what COCO's
    keypoint evaluation reads). The counts map an image id to a ``Counter`` over :data:`ANNOTATION_PROBLEMS`
    (and :data:`KEYPOINT_PROBLEMS`). One :class:`DataWarning` per kind of problem names ``source`` and the first
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
            if num_joints is not None:
                image = images[ann["image_id"]]
                ann = _with_checked_keypoints(ann, image, num_joints, source, strict, problems, counts)
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


def _with_checked_keypoints(
    ann: dict[str, Any], image: dict[str, Any], num_joints: int, source: Path | str, strict: bool,
    problems: dict[str, list[Any]], counts: dict[int, Counter],
) -> dict[str, Any]:  # fmt: skip
    """``ann`` with its keypoints cleaned (:func:`check_keypoints`); what was wrong recorded in ``problems`` and
    ``counts`` (or raised with ``strict``)."""
    keypoints, problem, bad_joints, reason = check_keypoints(ann, image, num_joints)
    where = f"{source}: annotation {ann['id']} (image {ann['image_id']}, {image['file_name']})"
    for kind, count in ((problem, 1 if problem else 0), ("num_bad_joints", bad_joints)):
        if count:
            if strict:
                raise ValueError(f"{where} {reason}")
            problems[kind].append(ann["id"])
            counts[ann["image_id"]][kind] += count
    return {**ann, "keypoints": keypoints, "num_keypoints": sum(v > 0 for v in keypoints[2::3])}


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


def load_coco(ann_file: str | Path, strict: bool = False, num_joints: int | None = None) -> COCO:
    """Parse and check a COCO instances (or keypoints, with ``num_joints``) file quietly (see
    :func:`clean_annotations`); a missing or malformed file raises an error naming it."""
    path = Path(ann_file)
    data, _ = clean_annotations(read_json(path), path, strict, num_joints)
    return index_quietly(data)
