"""ONNX and TorchScript exports of both detectors give the network's raw outputs, named."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detector_checkpoint import ROOT, tiny_checkpoint
from omegaconf import OmegaConf

from keypointdet.export import RawOutputs, export_checkpoint
from keypointdet.inference import load_detector

OUTPUT_NAMES = {
    "centernet": ["heatmap", "size", "offset"],
    "cornernet": ["tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding", "tl_offset", "br_offset"],
}


@pytest.fixture(scope="module", params=["centernet", "cornernet"])
def checkpoint(request, tiny_dataset, tmp_path_factory):
    return request.param, tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("export"), request.param)


def main(arguments: list[str]):
    """``python -m keypointdet.export`` with ``arguments``, in-process: ``conf/export.yaml`` with them merged."""
    return export_checkpoint(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "export.yaml"), OmegaConf.from_dotlist(arguments)))


def pytorch_outputs(ckpt_path, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The last stack's raw maps of the checkpoint's detector, straight from its forward."""
    with torch.no_grad():
        return load_detector(ckpt_path)(image)[-1]


def test_onnx_runtime_matches_pytorch(checkpoint, tmp_path):
    name, ckpt_path = checkpoint
    output = main([f"ckpt_path={ckpt_path}", "format=onnx", f"output={tmp_path / 'model.onnx'}", "input_size=64"])
    onnx.checker.check_model(str(output))
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_outputs()] == OUTPUT_NAMES[name]
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    results = session.run(None, {"image": image.numpy()})
    expected = pytorch_outputs(ckpt_path, image)
    for output_name, result in zip(OUTPUT_NAMES[name], results):
        np.testing.assert_allclose(result, expected[output_name].numpy(), rtol=1e-4, atol=1e-4)


def test_torchscript_matches_pytorch(checkpoint, tmp_path):
    name, ckpt_path = checkpoint
    output = main([f"ckpt_path={ckpt_path}", "format=torchscript", f"output={tmp_path / 'model.pt'}", "input_size=64"])
    scripted = torch.jit.load(str(output))
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        results = scripted(image)
    expected = pytorch_outputs(ckpt_path, image)
    assert len(results) == len(OUTPUT_NAMES[name])
    for output_name, result in zip(OUTPUT_NAMES[name], results):
        torch.testing.assert_close(result, expected[output_name], rtol=1e-4, atol=1e-4)


def test_raw_outputs_follow_the_head_order(checkpoint):
    name, ckpt_path = checkpoint
    assert RawOutputs(load_detector(ckpt_path)).output_names == OUTPUT_NAMES[name]


def test_export_rejects_unknown_format_and_missing_arguments(checkpoint, tmp_path):
    _, ckpt_path = checkpoint
    with pytest.raises(ValueError, match="format must be one of"):
        main([f"ckpt_path={ckpt_path}", "format=tflite", f"output={tmp_path / 'model'}"])
    with pytest.raises(ValueError, match="missing format, output"):
        main([f"ckpt_path={ckpt_path}"])


def test_export_command_line_as_documented(checkpoint, tmp_path):
    _, ckpt_path = checkpoint
    output = tmp_path / "model.onnx"
    command = [sys.executable, "-m", "keypointdet.export", f"ckpt_path={ckpt_path}", "format=onnx", f"output={output}",
               f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert output.is_file() and f"written to {output}" in result.stdout
