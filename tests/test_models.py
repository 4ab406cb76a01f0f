"""Backbone contract of the ResNet + deconvolution neck (and CornerNet on it and on DLA), and the packaging files
staying in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import torch

from keypointdet.detectors import CornerNet
from keypointdet.models.backbones.resnet import ResNet
from keypointdet.models.heads import HEATMAP_PRIOR, CenterHead

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("skip_connections", [False, True])
def test_resnet_contract_and_output_stride(skip_connections):
    backbone = ResNet(18, neck_channels=(32, 16, 8), skip_connections=skip_connections)
    assert (backbone.num_stacks, backbone.stride, backbone.size_divisor, backbone.out_channels) == (1, 4, 32, 8)
    features = backbone(torch.randn(2, 3, 96, 160))
    assert len(features) == 1 and features[0].shape == (2, 8, 24, 40)


def test_skip_connections_carry_shallow_features_to_the_output():
    torch.manual_seed(0)
    backbone = ResNet(18, neck_channels=(16, 16, 16), skip_connections=True).eval()
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    backbone(images)[0].sum().backward()
    first_stage = backbone.stages[0][0].conv1.weight.grad
    assert first_stage is not None and first_stage.abs().sum() > 0
    assert all(skip[0].weight.grad.abs().sum() > 0 for skip in backbone.neck.skips)


def test_deformable_neck_starts_as_a_plain_convolution_and_learns_offsets():
    torch.manual_seed(0)
    backbone = ResNet(18, neck_channels=(16, 16, 16), deformable=True)
    first = backbone.neck.stages[0][0]
    x = torch.randn(1, 512, 3, 5)
    plain = torch.nn.functional.conv2d(x, first.conv.weight, padding=1) * 0.5  # zero offsets, mask sigmoid(0)
    torch.testing.assert_close(first(x), plain, atol=1e-5, rtol=1e-4)
    backbone(torch.randn(1, 3, 64, 96))[0].sum().backward()
    assert first.offset_mask.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "backbone",
    [
        {"_target_": "keypointdet.models.backbones.resnet.ResNet", "neck_channels": [16, 16, 16]},
        {"_target_": "keypointdet.models.backbones.resnet.ResNet", "neck_channels": [16, 16]},
        {"_target_": "keypointdet.models.backbones.dla.DLA", "deformable": False},
    ],
    ids=["resnet18-stride4", "resnet18-stride8", "dla34"],
)
def test_cornernet_takes_backbones_other_than_the_hourglass(backbone):
    # the contract is all it needs (README, Refused at start-up: no backbone of this package is refused)
    detector = CornerNet(backbone, num_classes=2, pool_channels=8, head_channels=8, k=10, num_dets=20, max_dets=5)
    (outputs,) = detector(torch.randn(2, 3, 64, 96))
    assert all(value.shape[-2:] == (64 // detector.stride, 96 // detector.stride) for value in outputs.values())
    boxes, scores, labels = detector.decode(outputs)
    assert boxes.shape == (2, 5, 4) and scores.shape == labels.shape == (2, 5)


def test_bad_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="depth"):
        ResNet(19)


def test_center_head_shapes_and_heatmap_prior():
    head = CenterHead(8, num_classes=3)
    outputs = head(torch.randn(1, 8, 5, 7))
    assert outputs["heatmap"].shape == (1, 3, 5, 7)
    assert outputs["size"].shape == outputs["offset"].shape == (1, 2, 5, 7)
    # the last heatmap layer's bias is the logit of the prior: every class starts near p = 0.1
    torch.testing.assert_close(torch.sigmoid(head.heatmap[-1].bias), torch.full((3,), HEATMAP_PRIOR))


def test_environment_yaml_pins_what_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    conda = set(re.findall(r"^\s+- ([A-Za-z0-9_.\-]+==[^\s]+)$", (ROOT / "environment.yaml").read_text(), re.MULTILINE))
    assert conda == pins
