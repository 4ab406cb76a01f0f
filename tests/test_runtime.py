"""The torch-free runtime: an end-to-end ONNX export run by ONNX Runtime gives predict()'s detections."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from detector_checkpoint import ROOT, sharpened, tiny_checkpoint

from keypointdet.data.annotations import read_image
from keypointdet.data.transforms import Letterbox
from keypointdet.export import export
from keypointdet.inference import load_detector, predict
from keypointdet.runtime import OnnxDetector, letterbox


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    """A sharpened CenterNet checkpoint and its ONNX export (any batch and size)."""
    directory = tmp_path_factory.mktemp("runtime")
    ckpt_path = sharpened(tiny_checkpoint(tiny_dataset, directory, "centernet"), directory)
    return ckpt_path, export(load_detector(ckpt_path), directory / "model.onnx", "onnx", 64)


def val_images(tiny_dataset, count: int):
    return [read_image(path) for path in sorted((tiny_dataset / "val").iterdir())[:count]]


@pytest.mark.parametrize(("height", "width"), [(37, 91), (128, 128), (200, 61)])
def test_letterbox_equals_the_pytorch_letterbox(height, width):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = Letterbox(96, 32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))(image, np.zeros((0, 4)), np.zeros(0))
    result, scale = letterbox(image, 96, 32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    np.testing.assert_array_equal(result, expected["image"].numpy())
    np.testing.assert_array_equal(scale, expected["scale"].astype(np.float32))


def test_onnx_runtime_detections_equal_predict(exported, tiny_dataset):
    ckpt_path, onnx_path = exported
    images = val_images(tiny_dataset, 3)
    images[1] = images[1][:, : images[1].shape[1] // 2]  # another size: padded in the batch
    expected = predict(load_detector(ckpt_path), images)
    results = OnnxDetector(onnx_path).predict(images)
    assert len(results) == 3 and sum(len(detections) for detections in expected) > 0
    for got, want in zip(results, expected, strict=True):
        assert [d["category_id"] for d in got] == [d["category_id"] for d in want]
        assert [d["class_name"] for d in got] == [d["class_name"] for d in want]
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in want], rtol=1e-4, atol=1e-2)


def test_runtime_api_does_not_import_torch(exported, tiny_dataset):
    _, onnx_path = exported
    image = sorted((tiny_dataset / "val").iterdir())[0]
    code = (
        "import sys; from keypointdet.runtime import OnnxDetector; from keypointdet.drawing import draw_detections\n"
        f"draw_detections({str(image)!r}, OnnxDetector({str(onnx_path)!r}).predict({str(image)!r}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_predict_command_with_onnxruntime_as_documented(exported, tiny_dataset, tmp_path):
    _, onnx_path = exported
    image = sorted((tiny_dataset / "val").iterdir())[0]
    output = tmp_path / "drawn"
    command = [sys.executable, "predict.py", "runtime=onnxruntime", f"ckpt_path={onnx_path}", f"input={image}",
               f"output={output}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (output / image.name).is_file()
    assert image.name in json.loads((output / "detections.json").read_text())
