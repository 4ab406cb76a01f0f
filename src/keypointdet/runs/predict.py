"""The prediction run behind ``predict.py``: detections of a checkpoint on an image, a folder, a video or a camera,
drawn and saved (videos and cameras: :mod:`keypointdet.runs.video`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from keypointdet.data.annotations import read_image
from keypointdet.drawing import Detection, draw_detections

RUNTIMES = ("pytorch", "onnxruntime")

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


@dataclass(frozen=True)
class Predictor:
    """``image -> detections``, and the skeleton (1-based limbs) that draws a pose detector's keypoints."""

    detect: Callable[[np.ndarray], list[Detection]]
    skeleton: list[list[int]] = field(default_factory=list)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        return self.detect(image)


def detector(cfg: DictConfig) -> Predictor:
    """``image -> detections`` of ``cfg.ckpt_path``: a checkpoint run by PyTorch (with ``cfg.model.tta``), or with
    ``runtime=onnxruntime`` an end-to-end ONNX export run by ONNX Runtime (torch is not imported)."""
    runtime = cfg.get("runtime", "pytorch")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnxruntime":
        from keypointdet.runtime import OnnxDetector

        onnx_model = OnnxDetector(cfg.ckpt_path)
        return Predictor(onnx_model.predict, onnx_model.skeleton)
    from keypointdet.inference import apply_nms_overrides, load_detector, predict, skeleton

    tta = cfg.model.get("tta") if cfg.get("model") else None
    model = load_detector(cfg.ckpt_path, tta=tta, inference=cfg.get("inference"))
    apply_nms_overrides(model, cfg.get("model"))
    return Predictor(lambda image: predict(model, image), skeleton(model))


def run(cfg: DictConfig) -> dict[str, list[Detection]] | Path:
    """``predict.py``: :func:`predict_files` on an image or a folder; on a video file or a camera index, the
    annotated video and the per-frame JSON lines (:func:`keypointdet.runs.video.predict_stream`), whose path
    is returned."""
    if cfg.get("ckpt_path") is None or cfg.get("input") is None:
        raise ValueError("give the checkpoint and the input: python predict.py ckpt_path=FILE input=IMAGE_DIR_VIDEO_CAMERA")
    from keypointdet.runs.video import is_stream, predict_stream

    if not is_stream(cfg.input):
        return predict_files(cfg)
    detect = detector(cfg)
    return predict_stream(
        cfg.input, cfg.output, detect, cfg.score_threshold, cfg.get("max_frames"), skeleton=detect.skeleton
    )[1]


def predict_files(cfg: DictConfig) -> dict[str, list[Detection]]:
    """Detect on ``cfg.input`` (an image or a folder); write to ``cfg.output`` every image with its detections
    drawn (same file name and format) and ``detections.json`` (``{file name: detections}``)."""
    if cfg.get("ckpt_path") is None or cfg.get("input") is None:
        raise ValueError("give the checkpoint and the images: python predict.py ckpt_path=FILE input=IMAGE_OR_DIR")
    files = image_files(cfg.input)
    output = Path(cfg.output)
    if output.resolve() in {file.parent.resolve() for file in files}:
        raise ValueError(f"output={output} is the folder of the input images: the drawings would overwrite them")
    detect = detector(cfg)
    output.mkdir(parents=True, exist_ok=True)
    all_detections: dict[str, list[Detection]] = {}
    for file in files:
        image = read_image(file)
        detections = detect(image)
        all_detections[file.name] = detections
        drawn = draw_detections(image, detections, cfg.score_threshold, detect.skeleton)
        Image.fromarray(drawn).save(output / file.name)
    (output / "detections.json").write_text(json.dumps(all_detections))
    print(f"{len(all_detections)} images with their detections (score >= {cfg.score_threshold}) drawn in {output}")
    return all_detections
