"""Exported detectors without PyTorch: ONNX Runtime with the letterbox, detections and drawing of the PyTorch path.

.. code-block:: python

    from keypointdet.runtime import OnnxDetector

    model = OnnxDetector("model.onnx")  # from python -m keypointdet.export ... format=onnx
    detections = model.predict("image.jpg")  # as keypointdet.inference.predict: bbox [x, y, w, h], score, ...

Only numpy, OpenCV, PIL and onnxruntime are imported (``keypointdet.drawing`` for reading and drawing):
the input size, normalisation and classes come from the file's metadata (:func:`keypointdet.export.metadata`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime

from keypointdet.drawing import Detection, ImageInput, to_rgb_array
from keypointdet.sizes import letterbox_size, round_up


def letterbox(
    image: np.ndarray, input_size: int, size_divisor: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB ``image [H, W, 3]`` -> normalised float32 ``[3, H', W']`` (long side resized to ``input_size``,
    bottom / right zero-padded to a multiple of ``size_divisor``) and its ``(x, y)`` scale: the same values as
    :class:`keypointdet.data.transforms.Letterbox`."""
    height, width = image.shape[:2]
    new_height, new_width = letterbox_size(height, width, input_size)
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    normalised = (resized.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    canvas = np.zeros((3, round_up(new_height, size_divisor), round_up(new_width, size_divisor)), np.float32)
    canvas[:, :new_height, :new_width] = normalised.transpose(2, 0, 1)
    return canvas, np.array([new_width / width, new_height / height], dtype=np.float32)


def to_detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, scale: np.ndarray, original_size: tuple[int, int],
    category_ids: Sequence[int], class_names: Sequence[str], keypoints: np.ndarray | None = None,
) -> list[Detection]:  # fmt: skip
    """One image's exported outputs (xyxy ``boxes [K, 4]`` in input pixels, ``scores [K]``, ``labels [K]``, a pose
    detector's ``keypoints [K, J, 3]``) as :func:`keypointdet.inference.predict` returns them: original pixels,
    clipped, padding left out, best first."""
    height, width = original_size
    xyxy = np.minimum(np.maximum(boxes / np.tile(scale, 2), 0), np.array([width, height, width, height], np.float32))
    kept = scores > 0
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)[kept]
    detections = [
        {"bbox": box, "score": score, "category_id": category_ids[label], "class_name": class_names[label]}
        for box, score, label in zip(xywh.tolist(), scores[kept].tolist(), labels[kept].tolist(), strict=True)
    ]
    if keypoints is not None:
        points = np.minimum(np.maximum(keypoints[kept, :, :2] / scale, 0), np.array([width, height], np.float32))
        joints = np.concatenate([points, keypoints[kept, :, 2:]], axis=-1).reshape(len(detections), -1)
        for detection, flat in zip(detections, joints.tolist(), strict=True):
            detection["keypoints"] = flat
    return detections


class OnnxDetector:
    """An exported ``outputs=detections`` ONNX file run by ONNX Runtime (CPU unless ``providers`` say otherwise)."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        properties = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {key: json.loads(value) for key, value in properties.items()}
        if self.metadata.get("outputs") != "detections" or "input_size" not in self.metadata:
            raise ValueError(f"{path} is not an end-to-end export of keypointdet (outputs=detections, with its letterbox)")
        self.class_names: list[str] = self.metadata["class_names"]
        self.category_ids: list[int] = self.metadata["category_ids"]
        # a pose detector's limbs (1-based joint pairs), for drawing its keypoints
        self.skeleton: list[list[int]] = self.metadata.get("keypoints", {}).get("skeleton", [])

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 8) -> list[Detection] | list[list[Detection]]:
        """Detections of one image (a list of dicts) or of a sequence of images (a list of such lists), as
        :func:`keypointdet.inference.predict`."""
        single = isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert")  # a PIL image
        arrays = [to_rgb_array(image) for image in ([images] if single else images)]
        results: list[list[Detection]] = []
        for start in range(0, len(arrays), batch_size):
            results.extend(self._detect_batch(arrays[start : start + batch_size]))
        return results[0] if single else results

    def _detect_batch(self, arrays: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Letterbox the images, pad them to one size (bottom / right, as the PyTorch collate) and detect."""
        meta = self.metadata
        inputs = [letterbox(array, meta["input_size"], meta["size_divisor"], meta["mean"], meta["std"]) for array in arrays]
        height, width = (max(image.shape[axis] for image, _ in inputs) for axis in (1, 2))
        batch = np.zeros((len(inputs), 3, height, width), np.float32)
        for index, (image, _) in enumerate(inputs):
            batch[index, :, : image.shape[1], : image.shape[2]] = image
        boxes, scores, labels, *keypoints = self.session.run(None, {"image": batch})
        return [
            to_detections(
                boxes[i], scores[i], labels[i], scale, array.shape[:2], self.category_ids, self.class_names,
                keypoints[0][i] if keypoints else None,
            )  # fmt: skip
            for i, ((_, scale), array) in enumerate(zip(inputs, arrays, strict=True))
        ]
