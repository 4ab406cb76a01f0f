"""DLA-34 backbone: output contract, the aggregation tree, the learned bilinear upsampling, gradients, config."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from keypointdet.runs.train import build_detector
from keypointdet.models.backbones.dla import DLA, DLAUp, IDAUp, bilinear_upsampling
from keypointdet.models.necks import ModulatedDeformConv


@pytest.fixture(scope="module", params=[True, False], ids=["deformable", "plain"])
def dla(request: pytest.FixtureRequest) -> DLA:
    torch.manual_seed(0)
    return DLA(deformable=request.param)


@pytest.mark.parametrize("height, width", [(64, 64), (96, 160), (160, 32)])
def test_output_is_one_stride_4_map(dla: DLA, height: int, width: int) -> None:
    images = torch.randn(2, 3, height, width)
    outputs = dla(images)
    assert dla.num_stacks == 1 and len(outputs) == 1
    assert dla.stride == 4 and dla.size_divisor == 32 and dla.out_channels == 64
    assert outputs[0].shape == (2, 64, height // 4, width // 4)
    assert torch.isfinite(outputs[0]).all()


def test_deformable_switch_chooses_the_aggregation_convs(dla: DLA, request: pytest.FixtureRequest) -> None:
    deformable = [m for m in dla.modules() if isinstance(m, ModulatedDeformConv)]
    assert not any(isinstance(m, ModulatedDeformConv) for m in dla.trunk.modules())
    # DLAUp has 1 + 2 + 3 IDA nodes and the final merge 2; each node has a projection and a merge conv
    expected = 2 * (1 + 2 + 3 + 2) if request.node.callspec.params["dla"] else 0
    assert len(deformable) == expected


def test_input_not_a_multiple_of_size_divisor_is_refused(dla: DLA) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        dla(torch.randn(1, 3, 64, 80))


def test_gradients_reach_trunk_and_aggregation(dla: DLA) -> None:
    dla.zero_grad()
    dla(torch.randn(2, 3, 64, 96))[0].square().mean().backward()
    for name, parameter in dla.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    first_trunk = next(dla.trunk.parameters())
    assert first_trunk.grad.abs().sum() > 0
    for module in dla.modules():
        if isinstance(module, ModulatedDeformConv):
            # zero-initialised offset predictors must still learn (the offsets matter for the output)
            assert module.offset_mask.weight.grad.abs().sum() > 0
            assert module.conv.weight.grad.abs().sum() > 0
    for merge in dla.merge.merges:
        assert all(p.grad.abs().sum() > 0 for p in merge.parameters())
    dla.zero_grad()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsampling_starts_as_bilinear_interpolation(factor: int) -> None:
    torch.manual_seed(factor)
    x = torch.randn(2, 5, 6, 7)
    upsampled = bilinear_upsampling(5, factor)(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert upsampled.shape == reference.shape
    # equal away from the border, where the transposed conv sees zero padding and interpolate clamps
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(upsampled[inner], reference[inner], atol=1e-5, rtol=1e-5)
    assert upsampled.requires_grad  # trained, as in CenterNet


def test_ida_up_keeps_the_first_map_and_merges_the_rest_at_its_resolution() -> None:
    torch.manual_seed(0)
    ida = IDAUp(8, [8, 16, 32], [1, 2, 4], deformable=False).eval()
    features = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    aggregates = ida(features)
    assert aggregates[0] is features[0]
    assert [a.shape for a in aggregates[1:]] == [(1, 8, 16, 16)] * 2
    # the last aggregate depends on every input; the middle one not on the coarsest
    changed = [features[0], features[1], features[2] + 1]
    assert torch.equal(ida(changed)[1], aggregates[1])
    assert not torch.allclose(ida(changed)[2], aggregates[2])


def test_dla_up_pyramid_levels_see_every_deeper_level() -> None:
    torch.manual_seed(0)
    channels = [8, 16, 32, 64]
    up = DLAUp(channels, deformable=False).eval()
    features = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(channels)]
    pyramid = up([f.clone() for f in features])
    assert [p.shape for p in pyramid] == [f.shape for f in features]
    assert torch.equal(pyramid[-1], features[-1])  # the deepest map is passed through
    deeper_changed = [f.clone() for f in features[:-1]] + [features[-1] + 1]
    for level, (before, after) in enumerate(zip(pyramid[:-1], up(deeper_changed)[:-1])):
        assert not torch.allclose(before, after), f"pyramid level {level} does not see the deepest map"
    # a level does not see finer ones: changing level 0 leaves levels 1.. unchanged
    finer_changed = [features[0] + 1] + [f.clone() for f in features[1:]]
    for before, after in zip(pyramid[1:], up(finer_changed)[1:]):
        assert torch.equal(before, after)


def test_config_builds_centernet_on_dla34(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train("backbone=dla34", "backbone.deformable=false", "model.head_channels=32")
    assert cfg.backbone.pretrained is False and cfg.backbone.variant == "dla34"
    model = build_detector(cfg.model, cfg.backbone, [{"id": i, "name": str(i)} for i in range(3)])
    assert isinstance(model.backbone, DLA) and not any(isinstance(m, ModulatedDeformConv) for m in model.modules())
    outputs = model(torch.randn(1, 3, 64, 64))[-1]
    assert outputs["heatmap"].shape == (1, 3, 16, 16) and outputs["size"].shape == (1, 2, 16, 16)
