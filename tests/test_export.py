"""ONNX and TorchScript exports of both detectors: image -> detections equal to PyTorch's at any batch and size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detector_checkpoint import ROOT, sharpened, tiny_checkpoint
from omegaconf import OmegaConf

from keypointdet.export import RawOutputs, export_checkpoint, read_metadata
from keypointdet.inference import load_detector

OUTPUT_NAMES = {
    "centernet": ["heatmap", "size", "offset"],
    "cornernet": ["tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding", "tl_offset", "br_offset"],
}
SHAPES = [(1, 64), (3, 64), (1, 96), (3, 96)]  # (batch, side): two batch sizes, two input sizes


@pytest.fixture(scope="module", params=["centernet", "cornernet"])
def checkpoint(request, tiny_dataset, tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    return request.param, sharpened(tiny_checkpoint(tiny_dataset, directory, request.param), directory)


def main(arguments: list[str]):
    """``python -m keypointdet.export`` with ``arguments``, in-process: ``conf/export.yaml`` with them merged."""
    return export_checkpoint(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "export.yaml"), OmegaConf.from_dotlist(arguments)))


def random_images(batch: int, side: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def pytorch_detections(detector, image: torch.Tensor) -> list[torch.Tensor]:
    """What ``load_detector``'s model decodes on ``image``, boxes in input pixels."""
    with torch.no_grad():
        boxes, scores, labels = detector.decode(detector(image)[-1])
    return [boxes * detector.stride, scores, labels]


def assert_same_detections(results, expected) -> None:
    boxes, scores, labels = (torch.as_tensor(np.asarray(result)) for result in results)
    assert labels.dtype == torch.int64
    torch.testing.assert_close(labels, expected[2], rtol=0, atol=0)
    torch.testing.assert_close(scores, expected[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(boxes, expected[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("export_format", ["onnx", "torchscript"])
def test_exported_detections_equal_pytorch_at_any_batch_and_size(checkpoint, export_format, tmp_path):
    name, ckpt_path = checkpoint
    output = main([f"ckpt_path={ckpt_path}", f"format={export_format}", f"output={tmp_path / 'model'}.{export_format}"])
    detector = load_detector(ckpt_path)
    if export_format == "onnx":
        onnx.checker.check_model(str(output))
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        assert [node.name for node in session.get_outputs()] == ["boxes", "scores", "labels"]
        run = lambda image: session.run(None, {"image": image.numpy()})  # noqa: E731
    else:
        scripted = torch.jit.load(str(output))
        run = lambda image: scripted(image)  # noqa: E731
    # Without the TorchScript profiling executor, which recompiles (for minutes) at every new shape.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for seed, (batch, side) in enumerate(SHAPES):
            image = random_images(batch, side, seed)
            assert_same_detections(run(image), pytorch_detections(detector, image))


def test_metadata_carries_classes_and_letterbox(checkpoint, tmp_path):
    name, ckpt_path = checkpoint
    detector = load_detector(ckpt_path)
    output = main([f"ckpt_path={ckpt_path}", "format=torchscript", f"output={tmp_path / 'model.pt'}"])
    values = read_metadata(output)
    assert values["class_names"] == detector.class_names and values["category_ids"] == detector.category_ids
    assert values["input_size"] == detector.letterbox.input_size
    assert values["mean"] == pytest.approx(list(detector.letterbox.mean))
    assert values["std"] == pytest.approx(list(detector.letterbox.std))
    assert (values["detector"], values["outputs"], values["stride"]) == (name, "detections", detector.stride)


@pytest.mark.slow  # one more ONNX export: about 30 s on 2 shared cores
def test_raw_maps_export_at_any_size(checkpoint, tmp_path):
    name, ckpt_path = checkpoint
    output = main([f"ckpt_path={ckpt_path}", "format=onnx", "outputs=raw", f"output={tmp_path / 'raw.onnx'}"])
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_outputs()] == OUTPUT_NAMES[name]
    assert read_metadata(output)["outputs"] == "raw"
    detector = load_detector(ckpt_path)
    for seed, (batch, side) in enumerate(SHAPES[1:3]):
        image = random_images(batch, side, seed)
        with torch.no_grad():
            expected = detector(image)[-1]
        for output_name, result in zip(OUTPUT_NAMES[name], session.run(None, {"image": image.numpy()}), strict=True):
            np.testing.assert_allclose(result, expected[output_name].numpy(), rtol=1e-3, atol=1e-3)


def test_raw_outputs_follow_the_head_order(checkpoint):
    name, ckpt_path = checkpoint
    assert RawOutputs(load_detector(ckpt_path)).output_names == OUTPUT_NAMES[name]


def test_export_rejects_unknown_format_outputs_and_missing_arguments(checkpoint, tmp_path):
    _, ckpt_path = checkpoint
    with pytest.raises(ValueError, match="format must be one of"):
        main([f"ckpt_path={ckpt_path}", "format=tflite", f"output={tmp_path / 'model'}"])
    with pytest.raises(ValueError, match="outputs must be one of"):
        main([f"ckpt_path={ckpt_path}", "format=onnx", "outputs=boxes", f"output={tmp_path / 'model'}"])
    with pytest.raises(ValueError, match="missing format, output"):
        main([f"ckpt_path={ckpt_path}"])


@pytest.mark.slow  # a fresh process and an export: 25-45 s on 2 shared cores
def test_export_command_line_as_documented(checkpoint, tmp_path):
    _, ckpt_path = checkpoint
    output = tmp_path / "model.pt"
    command = [sys.executable, "-m", "keypointdet.export", f"ckpt_path={ckpt_path}", "format=torchscript",
               f"output={output}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert output.is_file() and f"written to {output}" in result.stdout
