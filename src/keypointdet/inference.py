"""Detectors out of checkpoints, and detections out of images.

.. code-block:: python

    from keypointdet.inference import draw_detections, load_detector, predict

    model = load_detector("logs/train/runs/<run>/checkpoints/last.ckpt")  # CPU, eval mode
    detections = predict(model, "image.jpg")  # or an RGB uint8 array [H, W, 3], or a PIL image
    # [{"bbox": [x, y, w, h], "score": 0.93, "category_id": 1, "class_name": "circle"}, ...]
    drawn = draw_detections(image, detections, score_threshold=0.3)  # uint8 [H, W, 3]

:func:`predict_files` is the run behind ``predict.py``. A checkpoint written by ``train.py`` holds everything needed: the detector class
(``detector_class``), its hyper-parameters including the backbone's config, and the DataModule's
(``input_size``, ``mean``, ``std``: the evaluation letterbox). Checkpoints written before the detector
class and backbone config were saved in them are rebuilt from their run's ``.hydra/config.yaml``
(``<run>/checkpoints/<name>.ckpt`` -> ``<run>/.hydra/config.yaml``).
"""

from __future__ import annotations

import colorsys
import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from keypointdet.data.coco import read_image
from keypointdet.data.datamodule import collate
from keypointdet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Letterbox
from keypointdet.detectors import KeypointDetector

ImageInput = str | Path | np.ndarray | Image.Image
Detection = dict[str, Any]  # bbox [x, y, w, h] in original pixels, score, category_id, class_name


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint file of this project (with its optimizer / scheduler partials)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # weights_only=False: our checkpoints hold the optimizer / scheduler partials of the config.
    return torch.load(path, map_location="cpu", weights_only=False)


def run_config(ckpt_path: str | Path) -> DictConfig | None:
    """The Hydra config of the ``train.py`` run that wrote a checkpoint, when it is still next to it."""
    path = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def detector_class(checkpoint: Mapping[str, Any], ckpt_path: str | Path) -> type[KeypointDetector]:
    """The :class:`KeypointDetector` subclass recorded in a checkpoint (or in its run's config)."""
    run = run_config(ckpt_path)
    class_path = checkpoint.get("detector_class") or (run.model.get("_target_") if run and "model" in run else None)
    if class_path is None:
        raise ValueError(f"{ckpt_path} has no 'detector_class' and no run config: it was not written by train.py")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, KeypointDetector)):
        raise TypeError(f"{ckpt_path}: detector class {class_path} is not a KeypointDetector")
    return cls


def backbone_config(checkpoint: Mapping[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """The backbone's Hydra config saved in a checkpoint's hyper-parameters (or in its run's config)."""
    backbone = checkpoint["hyper_parameters"].get("backbone")
    if isinstance(backbone, Mapping):
        return dict(backbone)
    run = run_config(ckpt_path)
    if run is None or "backbone" not in run:
        raise TypeError(
            f"{ckpt_path} does not store its backbone's config (the detector was built with a backbone module) "
            "and has no run config next to it: rebuild the detector yourself and load the checkpoint's state_dict"
        )
    return OmegaConf.to_container(run.backbone, resolve=True)


def load_detector(
    ckpt_path: str | Path, tta: Mapping[str, Any] | None = None, map_location: str | torch.device = "cpu"
) -> KeypointDetector:
    """Rebuild the detector of a checkpoint, with its weights, in eval mode.

    Args:
        ckpt_path: a checkpoint written by ``train.py``.
        tta: test-time augmentation (``flip``, ``scales``) replacing the checkpoint's.
        map_location: device of the returned model.

    The returned model has a ``letterbox`` attribute: the evaluation transform of the DataModule the
    checkpoint was trained with, used by :func:`predict`.
    """
    checkpoint = load_checkpoint(ckpt_path)
    cls = detector_class(checkpoint, ckpt_path)
    backbone = backbone_config(checkpoint, ckpt_path)
    # The ImageNet weights (backbone.pretrained) are in the state_dict: no download.
    overrides: dict[str, Any] = {"backbone": {**backbone, "pretrained": False} if "pretrained" in backbone else backbone}
    if tta is not None:
        overrides["tta"] = dict(tta)
    model = cls.load_from_checkpoint(ckpt_path, map_location=map_location, weights_only=False, **overrides)
    data = checkpoint.get("datamodule_hyper_parameters", {})
    model.letterbox = Letterbox(
        data.get("input_size", 512), model.size_divisor, data.get("mean", IMAGENET_MEAN), data.get("std", IMAGENET_STD)
    )
    return model.eval()


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


@torch.no_grad()
def predict(
    model: KeypointDetector,
    images: ImageInput | Sequence[ImageInput],
    letterbox: Letterbox | None = None,
    batch_size: int = 8,
) -> list[Detection] | list[list[Detection]]:
    """Detections of one image (a list of dicts) or of a sequence of images (a list of such lists).

    Args:
        model: a detector, e.g. from :func:`load_detector` (its test-time augmentation applies).
        images: paths, uint8 RGB arrays ``[H, W, 3]`` or PIL images.
        letterbox: the evaluation transform; by default ``model.letterbox`` (set by :func:`load_detector`).

    Each detection: ``bbox`` ``[x, y, w, h]`` in the image's pixels, ``score``, ``category_id`` and
    ``class_name``, by descending score.
    """
    single = isinstance(images, (str, Path, np.ndarray, Image.Image))
    arrays = [to_rgb_array(image) for image in ([images] if single else images)]
    letterbox = letterbox or getattr(model, "letterbox", None)
    if letterbox is None:
        raise ValueError("no letterbox: load the model with load_detector() or pass letterbox=Letterbox(...)")
    names = dict(zip(model.category_ids, model.class_names))
    results: list[list[Detection]] = []
    for start in range(0, len(arrays), batch_size):
        samples = [_sample(array, index, letterbox) for index, array in enumerate(arrays[start : start + batch_size])]
        batch = {name: value.to(model.device) for name, value in collate(samples).items()}
        for detections in model.detect(batch):
            results.append([_public(detection, names) for detection in detections])
    return results[0] if single else results


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


def _public(detection: Detection, names: dict[int, str]) -> Detection:
    return {
        "bbox": detection["bbox"],
        "score": detection["score"],
        "category_id": detection["category_id"],
        "class_name": names[detection["category_id"]],
    }


def draw_detections(image: ImageInput, detections: Sequence[Detection], score_threshold: float = 0.3) -> np.ndarray:
    """``image`` with the boxes, class names and scores of the detections above ``score_threshold``
    drawn on it; returns uint8 RGB ``[H, W, 3]``."""
    array = to_rgb_array(image)
    kept = [detection for detection in detections if detection["score"] >= score_threshold]
    if not kept:
        return array.copy()
    xywh = torch.tensor([detection["bbox"] for detection in kept], dtype=torch.float32)
    corners = xywh[:, :2], xywh[:, :2] + xywh[:, 2:]
    # A negative size (an untrained or confused size branch) is drawn as the box it spans.
    boxes = torch.cat([torch.minimum(*corners), torch.maximum(*corners)], dim=1)
    labels = [f"{detection['class_name']} {detection['score']:.2f}" for detection in kept]
    colors = [_color(detection["category_id"]) for detection in kept]
    drawn = draw_bounding_boxes(torch.from_numpy(array).permute(2, 0, 1), boxes, labels, colors, width=2)
    return drawn.permute(1, 2, 0).numpy()


def _color(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour per category (golden-ratio hues)."""
    hue = (category_id * 0.618033988749895) % 1.0
    red, green, blue = (int(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    return red, green, blue


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(input_path: str | Path) -> list[Path]:
    """An image file, or the images of a folder (sorted, not recursive)."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    files = sorted(file for file in path.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return files


def predict_files(cfg: DictConfig) -> dict[str, list[Detection]]:
    """``predict.py``: detect on ``cfg.input`` (an image or a folder), write to ``cfg.output`` every image with
    its detections drawn (same file name, as PNG) and ``detections.json`` (``{file name: detections}``)."""
    if cfg.get("ckpt_path") is None or cfg.get("input") is None:
        raise ValueError("give the checkpoint and the images: python predict.py ckpt_path=FILE input=IMAGE_OR_DIR")
    tta = OmegaConf.to_container(cfg.model.tta, resolve=True) if cfg.get("model") else None
    model = load_detector(cfg.ckpt_path, tta=tta)
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    all_detections: dict[str, list[Detection]] = {}
    for file in image_files(cfg.input):
        image = read_image(file)
        detections = predict(model, image)
        all_detections[file.name] = detections
        drawn = draw_detections(image, detections, cfg.score_threshold)
        Image.fromarray(drawn).save(output / f"{file.stem}.png")
    (output / "detections.json").write_text(json.dumps(all_detections))
    print(f"{len(all_detections)} images with their detections (score >= {cfg.score_threshold}) drawn in {output}")
    return all_detections
