"""Detectors out of checkpoints, and detections out of images.

.. code-block:: python

    from keypointdet.inference import draw_detections, load_detector, predict

    model = load_detector("logs/train/runs/<run>/checkpoints/last.ckpt")  # CPU, eval mode
    detections = predict(model, "image.jpg")  # or an RGB uint8 array [H, W, 3], or a PIL image
    # [{"bbox": [x, y, w, h], "score": 0.93, "category_id": 1, "class_name": "circle"}, ...]
    drawn = draw_detections(image, detections, score_threshold=0.3)  # uint8 [H, W, 3]

A checkpoint holds everything needed (:mod:`keypointdet.checkpoints`): the detector's config and weights, and
its input size and normalisation (the evaluation letterbox). ``predict.py`` is :mod:`keypointdet.runs.predict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from keypointdet.boxes import BoxMapping
from keypointdet.checkpoints import checkpoint_metadata, detector_from_checkpoint, load_checkpoint
from keypointdet.data.datamodule import collate
from keypointdet.data.transforms import Letterbox
from keypointdet.detectors import KeypointDetector
from keypointdet.drawing import Detection, ImageInput, draw_detections, to_rgb_array
from keypointdet.metrics import coco_results
from keypointdet.speed import InferenceSettings
from keypointdet.tta import TestTimeAugmentation, detect

__all__ = ["Detection", "detect_batch", "draw_detections", "load_detector", "predict", "skeleton", "to_rgb_array"]


def apply_nms_overrides(detector: KeypointDetector, model: Mapping[str, Any] | None) -> KeypointDetector:
    """``model.nms`` / ``model.nms_iou`` given to ``eval.py`` or ``predict.py`` (``+model.nms=class``) replace the
    checkpoint's (CenterNet only); without them the checkpoint's own apply."""
    if model is None or ("nms" not in model and "nms_iou" not in model):
        return detector
    if not hasattr(detector, "set_nms"):
        raise ValueError(f"model.nms applies to CenterNet only, not to {detector.name}")
    detector.set_nms(model.get("nms", detector.nms), model.get("nms_iou"))
    return detector


def load_detector(
    ckpt_path: str | Path, tta: Mapping[str, Any] | None = None, map_location: str | torch.device = "cpu",
    inference: Mapping[str, Any] | None = None,
) -> KeypointDetector:  # fmt: skip
    """Rebuild the detector of a checkpoint of this repository (trained or converted), in eval mode.

    Args:
        ckpt_path: a checkpoint written by ``train.py`` or ``keypointdet.tools.convert_official``; read with
            ``weights_only=True`` (a file holding anything but tensors and plain containers is refused).
        tta: test-time augmentation of :func:`predict` (``flip``, ``scales``; none by default).
        map_location: device of the returned model.
        inference: ``precision`` and ``channels_last`` of :func:`predict`
            (:class:`keypointdet.speed.InferenceSettings`; float32 NCHW by default).

    ``model(images)`` returns the raw head outputs of every stack. The returned model also has the attributes
    ``letterbox`` (the evaluation transform of its input size and normalisation), ``tta`` and ``inference``, used
    by :func:`predict`.
    """
    checkpoint = load_checkpoint(ckpt_path)
    detector = detector_from_checkpoint(checkpoint, ckpt_path).to(map_location)
    record = checkpoint_metadata(checkpoint, ckpt_path)["input"]
    detector.letterbox = Letterbox(record["input_size"], detector.size_divisor, record["mean"], record["std"])
    detector.tta = TestTimeAugmentation(**(tta or {}))
    detector.inference = InferenceSettings(**(inference or {}))
    return detector.inference.prepare(detector).eval()


@torch.no_grad()
def predict(
    model: KeypointDetector,
    images: ImageInput | Sequence[ImageInput],
    letterbox: Letterbox | None = None,
    batch_size: int = 8,
) -> list[Detection] | list[list[Detection]]:
    """Detections of one image (a list of dicts) or of a sequence of images (a list of such lists).

    Args:
        model: a detector, e.g. from :func:`load_detector` (its ``tta`` and ``inference`` apply).
        images: paths, uint8 RGB arrays ``[H, W, 3]`` or PIL images.
        letterbox: the evaluation transform; by default ``model.letterbox`` (set by :func:`load_detector`).

    Each detection: ``bbox`` ``[x, y, w, h]`` in the image's pixels, ``score``, ``category_id`` and
    ``class_name``, by descending score; a pose detector's also ``keypoints`` ``[x1, y1, s1, ...]`` (image pixels,
    each joint's score; :func:`skeleton` draws them).
    """
    single = isinstance(images, (str, Path, np.ndarray, Image.Image))
    arrays = [to_rgb_array(image) for image in ([images] if single else images)]
    letterbox = letterbox or getattr(model, "letterbox", None)
    if letterbox is None:
        raise ValueError("no letterbox: load the model with load_detector() or pass letterbox=Letterbox(...)")
    results: list[list[Detection]] = []
    for start in range(0, len(arrays), batch_size):
        samples = [_sample(array, index, letterbox) for index, array in enumerate(arrays[start : start + batch_size])]
        settings = getattr(model, "tta", None), getattr(model, "inference", None)
        results.extend(detect_batch(model, collate(samples), *settings))
    return results[0] if single else results


def detect_batch(
    model: KeypointDetector, batch: dict[str, torch.Tensor], tta: TestTimeAugmentation | None = None,
    settings: InferenceSettings | None = None,
) -> list[list[Detection]]:  # fmt: skip
    """The detections of a collated evaluation batch (letterboxed images with their mapping), one list per image."""
    device = next(model.parameters()).device
    mapping = BoxMapping.from_batch({name: value.to(device) for name, value in batch.items()})
    detections = detect(model, batch["image"].to(device), mapping, tta, settings)
    boxes, scores, labels, *keypoints = (value.cpu() for value in detections)
    joints = keypoints[0] if keypoints else [None] * len(boxes)
    names = dict(zip(model.category_ids, model.class_names))
    return [
        [_public(result, names) for result in coco_results(image_id, *image, model.category_ids, image_joints)]
        for image_id, *image, image_joints in zip(batch["image_id"].tolist(), boxes, scores, labels, joints)
    ]


def skeleton(model: KeypointDetector) -> list[list[int]]:
    """The limbs (1-based joint pairs) to draw a pose detector's keypoints with (none for a boxes-only detector)."""
    return [list(limb) for limb in model.keypoints.skeleton] if model.predicts_keypoints else []


def _public(result: Detection, names: dict[int, str]) -> Detection:
    """A COCO results entry as :func:`predict` returns it: without the image id, with the class name."""
    public = {
        "bbox": result["bbox"],
        "score": result["score"],
        "category_id": result["category_id"],
        "class_name": names[result["category_id"]],
    }
    if "keypoints" in result:
        public["keypoints"] = result["keypoints"]
    return public


def _sample(image: np.ndarray, index: int, letterbox: Letterbox) -> dict[str, torch.Tensor]:
    """What the validation loader yields for one image (no annotations)."""
    out = letterbox(image, np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    return {
        "image": out["image"],
        "image_id": torch.tensor(index),
        "original_size": torch.tensor(image.shape[:2]),
        "scale": torch.as_tensor(out["scale"], dtype=torch.float32),
        "shift": torch.as_tensor(out["shift"], dtype=torch.float32),
    }
