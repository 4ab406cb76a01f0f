"""Pascal VOC (the VOCdevkit layout) as an in-memory COCO dataset, evaluated with the COCO protocol.

``VOCdevkit/VOC<year>/ImageSets/Main/<set>.txt`` lists the images of a set, ``Annotations/<name>.xml``
holds their objects and ``JPEGImages/<name>.jpg`` the pixels. VOC boxes are 1-based and inclusive
(``xmin = 1`` is the first pixel, ``xmax`` the last one covered): in COCO's continuous 0-based
coordinates they become ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.

``difficult`` objects become ``iscrowd=1``: never positives in training and neither a hit nor a miss in
evaluation, as in the VOC protocol. The match differs slightly: COCOeval's crowd rule ignores a detection
whose intersection with a difficult box covers half of the detection, and one difficult box can absorb
several detections, while VOC ignores a detection whose best IoU match is difficult. AP50 is COCO's
101-point interpolation, not VOC2007's 11-point metric.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypointdet.data.coco import CocoDetection, DataWarning, Encoder, Transform

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def parse_set(name: str) -> tuple[str, str]:
    """``"2007/trainval"`` -> ``("2007", "trainval")``."""
    year, _, image_set = str(name).partition("/")
    if not year or not image_set:
        raise ValueError(f"VOC set {name!r} is not of the form '<year>/<set>', e.g. '2007/trainval'")
    return year, image_set


def _read_xml(path: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """``(width, height, objects)`` of one VOC annotation file; ``ValueError`` naming it when unusable.

    Each object is ``{"name", "difficult", "box"}`` with ``box`` the 1-based ``(xmin, ymin, xmax, ymax)``,
    or ``None`` when the file gives no usable numbers (the box is then reported as malformed).
    """
    try:
        root = ET.parse(path).getroot()
        width, height = int(float(root.findtext("size/width"))), int(float(root.findtext("size/height")))
    except (OSError, ET.ParseError, TypeError, ValueError) as error:
        raise ValueError(f"cannot read VOC annotation {path}: {error}") from error
    objects = []
    for obj in root.iter("object"):
        try:
            box = tuple(float(obj.findtext(f"bndbox/{key}")) for key in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            box = None
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append({"name": (obj.findtext("name") or "").strip(), "difficult": difficult, "box": box})
    return width, height, objects


def voc_to_coco(root: str | Path, sets: Sequence[str], strict: bool = False) -> dict[str, Any]:
    """COCO instances dict of the VOC ``sets`` (``"<year>/<set>"``) under a ``VOCdevkit`` ``root``.

    Category ids are 1..20 in :data:`VOC_CLASSES` order; image ids count from 1 in set order (an image
    listed in two sets appears once); ``file_name`` is relative to ``root``. An image whose XML file is
    missing or unreadable is left out with a :class:`DataWarning` naming the file (``strict``: an error).
    """
    root = Path(root)
    images, annotations, unreadable, seen = [], [], [], set()
    for name in sets:
        year, image_set = parse_set(name)
        year_dir = root / f"VOC{year}"
        list_file = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC image set not found: {list_file}")
        for stem in list_file.read_text().split():
            if (year, stem) in seen:
                continue
            seen.add((year, stem))
            xml_path = year_dir / "Annotations" / f"{stem}.xml"
            try:
                width, height, objects = _read_xml(xml_path)
            except ValueError as error:
                if strict:
                    raise
                unreadable.append(str(xml_path))
                warnings.warn(f"{error}; image left out", DataWarning, stacklevel=2)
                continue
            image_id = len(images) + 1
            file_name = f"VOC{year}/JPEGImages/{stem}.jpg"
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for obj in objects:
                annotations.append(_annotation(len(annotations) + 1, image_id, obj))
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(VOC_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _annotation(ann_id: int, image_id: int, obj: dict[str, Any]) -> dict[str, Any]:
    """COCO annotation of a VOC object; unknown class names and missing boxes are kept for the checks of
    :func:`keypointdet.data.coco.clean_annotations` to report."""
    category_id = VOC_CLASSES.index(obj["name"]) + 1 if obj["name"] in VOC_CLASSES else obj["name"]
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": int(obj["difficult"]),
    }
    if obj["box"] is not None:
        xmin, ymin, xmax, ymax = obj["box"]
        ann["bbox"] = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    return ann


class VOCDetection(CocoDetection):
    """Pascal VOC ``sets`` (e.g. ``["2007/trainval", "2012/trainval"]``) of a ``VOCdevkit`` folder, with
    everything of :class:`CocoDetection` (checks, counts, transforms, targets) and ``coco`` built in memory."""

    def __init__(
        self,
        root: str | Path,
        sets: Sequence[str],
        transform: Transform,
        encoder: Encoder | None = None,
        stride: int = 4,
        strict: bool = False,
    ) -> None:
        self.source = f"{root} ({', '.join(sets)})"
        self._build(voc_to_coco(root, sets, strict), root, transform, encoder, stride, strict)
