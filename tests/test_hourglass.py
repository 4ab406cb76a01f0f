"""Tests for the stacked hourglass backbone and its Hydra presets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from keypointdet.models.backbones.hourglass import Hourglass

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "backbone"


def _load(name: str) -> Hourglass:
    return instantiate(OmegaConf.load(CONF_DIR / f"{name}.yaml"))


@pytest.fixture(scope="module")
def small() -> Hourglass:
    torch.manual_seed(0)
    return _load("hourglass_small")


def test_contract_attributes(small: Hourglass) -> None:
    assert small.num_stacks == 2
    assert small.out_channels == 64
    assert small.stride == 4


@pytest.mark.parametrize(("height", "width"), [(128, 128), (511, 511), (96, 160), (5, 3)])
def test_output_shapes(small: Hourglass, height: int, width: int) -> None:
    small.eval()
    with torch.no_grad():
        outs = small(torch.randn(2 if height <= 128 else 1, 3, height, width))
    assert isinstance(outs, list)
    assert len(outs) == small.num_stacks
    # The stride-2 convs round up, so e.g. CornerNet's 511 input gives a 128x128 map.
    expected = (small.out_channels, math.ceil(height / 4), math.ceil(width / 4))
    for out in outs:
        assert tuple(out.shape[1:]) == expected


def test_gradients_reach_stem_from_every_stack(small: Hourglass) -> None:
    small.train()
    outs = small(torch.randn(2, 3, 64, 64))
    stem_weight = small.stem[0][0].weight
    for out in outs:
        # A random projection avoids the degenerate gradient of a plain sum through BN.
        loss = (out * torch.randn_like(out)).sum()
        (grad,) = torch.autograd.grad(loss, stem_weight, retain_graph=True)
        assert grad.abs().sum() > 0

    # The last stack depends on every layer, so no parameter is left unused.
    outs[-1].square().mean().backward()
    unused = [name for name, p in small.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused
    small.zero_grad(set_to_none=True)


def test_hourglass104_parameter_count() -> None:
    with torch.device("meta"):
        model = Hourglass()
        from_config = _load("hourglass104")
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in from_config.parameters())
    # 187,700,352 measured. Adding CornerNet's heads (two corner-pooling modules
    # plus heat/tag/offset heads per stack, 13,334,860 params for 80 classes)
    # gives 201,035,212, i.e. the ~201M of the full CornerNet. The window is
    # narrower than any plausible structural slip (e.g. one extra 384-channel
    # residual is ~2.7M, building low3 in make_layer rather than make_layer_revr
    # order changes the count by >1M).
    assert 187_200_000 <= count <= 188_200_000
    assert len(model(torch.empty(1, 3, 512, 512, device="meta"))) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_stacks": 0}, "num_stacks"),
        ({"depth": 0, "dims": [8], "modules": [1]}, "depth"),
        ({"depth": 3, "dims": [8, 8, 8], "modules": [1, 1, 1, 1]}, "depth \\+ 1"),
        ({"depth": 3, "dims": [8, 8, 8, 8], "modules": [1, 1, 1]}, "depth \\+ 1"),
        ({"depth": 1, "dims": [8, 8], "modules": [0, 1]}, ">= 1"),
        ({"depth": 1, "dims": [8, 8], "modules": [1, 1], "out_channels": 0}, ">= 1"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hourglass(**kwargs)


def test_pretrained_is_rejected() -> None:
    with pytest.raises(NotImplementedError, match="pretrained"):
        Hourglass(num_stacks=1, depth=1, dims=[8, 8], modules=[1, 1], pretrained=True)
