"""DLA-34 as CenterNet uses it: timm's DLA trunk + deep layer aggregation up to stride 4.

The trunk (``timm``, the ucbdrive/dla architecture and ImageNet weights) gives maps at strides
4, 8, 16 and 32. :class:`DLAUp` aggregates them iteratively (deepest first) into a pyramid of
maps whose every level has seen all deeper ones, then a last :class:`IDAUp` merges the stride
4, 8 and 16 levels of that pyramid into the single stride-4 map the heads read. Every
aggregation conv is a modulated deformable 3x3 conv (CenterNet's DLA-34) or, with
``deformable=False``, a plain one.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import Tensor, nn

from keypointdet.models.layers import bilinear_kernel, conv_bn_relu
from keypointdet.models.necks import ModulatedDeformConv


def aggregation_conv(in_channels: int, out_channels: int, deformable: bool) -> nn.Sequential:
    """3x3 conv (modulated deformable when ``deformable``), BN, ReLU: ``[B, in, H, W] -> [B, out, H, W]``."""
    if not deformable:
        return conv_bn_relu(in_channels, out_channels, 3)
    return nn.Sequential(
        ModulatedDeformConv(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Per-channel (depthwise) transposed conv, ``[B, C, H, W] -> [B, C, factor * H, factor * W]``.

    Kernel ``2 * factor``, initialised to bilinear interpolation and trained, as in CenterNet.
    """
    if factor == 1:
        raise ValueError("an upsampling factor of 1 needs no upsampling layer")
    size = 2 * factor
    upsampling = nn.ConvTranspose2d(
        channels, channels, size, stride=factor, padding=factor // 2, groups=channels, bias=False
    )
    with torch.no_grad():
        upsampling.weight.copy_(bilinear_kernel(size).expand_as(upsampling.weight))
    return upsampling


class IDAUp(nn.Module):
    """Iterative deep aggregation of maps ordered from the finest to the coarsest.

    ``features[0]`` is kept; every following map is projected to ``out_channels``, upsampled by
    its factor to the resolution of ``features[0]`` and merged (sum, then an aggregation conv)
    with the aggregate of the maps before it. The last aggregate has seen every input.

    Args:
        out_channels: channels of every aggregate (and of ``features[0]``).
        in_channels: channels of each input map.
        up_factors: resolution of ``features[0]`` over that of each map (``up_factors[0] == 1``).
        deformable: modulated deformable 3x3 convs in the projections and merges.
    """

    def __init__(
        self, out_channels: int, in_channels: Sequence[int], up_factors: Sequence[int], deformable: bool = True
    ) -> None:
        super().__init__()
        if len(in_channels) != len(up_factors) or up_factors[0] != 1:
            raise ValueError(f"need one factor per input, the first being 1: {in_channels=}, {up_factors=}")
        self.projections = nn.ModuleList(
            aggregation_conv(channels, out_channels, deformable) for channels in in_channels[1:]
        )
        self.upsamplings = nn.ModuleList(bilinear_upsampling(out_channels, int(f)) for f in up_factors[1:])
        self.merges = nn.ModuleList(aggregation_conv(out_channels, out_channels, deformable) for _ in in_channels[1:])

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``features[i]: [B, in_channels[i], H / up_factors[i], W / up_factors[i]]`` -> ``[features[0]]``
        followed by ``len(features) - 1`` aggregates ``[B, out_channels, H, W]``."""
        aggregates = [features[0]]
        for feature, project, upsample, merge in zip(features[1:], self.projections, self.upsamplings, self.merges):
            aggregates.append(merge(upsample(project(feature)) + aggregates[-1]))
        return aggregates


class DLAUp(nn.Module):
    """DLA's upsampling tree: one :class:`IDAUp` per level, from the second-deepest to the finest.

    Step ``k`` aggregates the trunk maps from level ``n - 2 - k`` down (the deeper ones being the
    aggregates of the previous step, already at the resolution of level ``n - 1 - k``), so level
    ``i`` of the returned pyramid is at the trunk's resolution ``i`` with ``channels[i]``
    channels and has seen every deeper level.

    Args:
        channels: channels of the trunk maps, finest first; consecutive maps differ by stride 2.
        deformable: modulated deformable 3x3 convs in every aggregation.
    """

    def __init__(self, channels: Sequence[int], deformable: bool = True) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        levels = len(channels)
        in_channels = list(channels)
        scales = [2**level for level in range(levels)]  # resolution of level 0 over that of each current map
        self.steps = nn.ModuleList()
        for start in range(levels - 2, -1, -1):
            factors = [scale // scales[start] for scale in scales[start:]]
            self.steps.append(IDAUp(channels[start], in_channels[start:], factors, deformable))
            # the maps this step aggregates are now at the resolution and width of level ``start``
            scales[start + 1 :] = [scales[start]] * (levels - start - 1)
            in_channels[start + 1 :] = [channels[start]] * (levels - start - 1)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Trunk maps ``[B, channels[i], H_i, W_i]`` (finest first) -> the aggregated pyramid, same shapes."""
        maps = list(features)
        pyramid = [maps[-1]]
        for step, ida in enumerate(self.steps):
            start = len(maps) - step - 2
            maps[start:] = ida(maps[start:])
            pyramid.insert(0, maps[-1])
        return pyramid


class DLA(nn.Module):
    """CenterNet's DLA-34 backbone ("DLA-34 + deformable up-convolutions"): one feature map at stride 4.

    Backbone contract shared with ResNet and the hourglass: ``forward`` returns a list with one map per
    stack (here one) and the attributes ``out_channels`` (64 for DLA-34), ``num_stacks``, ``stride``
    (4) and ``size_divisor`` (32: both sides of the input must be multiples of it).

    Args:
        variant: a timm DLA model name (``dla34`` is CenterNet's; ``dla46_c``, ``dla60``, ... also work).
        pretrained: load timm's ImageNet weights into the trunk (downloads them once; opt-in). The
            aggregation layers always start from scratch, as in CenterNet.
        deformable: modulated deformable 3x3 convs in the aggregation (CenterNet's ``dla_34``); False
            gives plain 3x3 convs.
    """

    size_divisor = 32

    def __init__(self, variant: str = "dla34", pretrained: bool = False, deformable: bool = True) -> None:
        super().__init__()
        # levels 2..5 of DLA: strides 4, 8, 16, 32
        self.trunk = timm.create_model(variant, pretrained=pretrained, features_only=True, out_indices=(2, 3, 4, 5))
        channels = self.trunk.feature_info.channels()
        self.up = DLAUp(channels, deformable)
        # CenterNet's ``last_level=5``: the heads read the merge of the stride 4, 8 and 16 aggregates
        self.merge = IDAUp(channels[0], channels[:3], [1, 2, 4], deformable)
        self.out_channels = channels[0]
        self.num_stacks = 1
        self.stride = self.trunk.feature_info.reduction()[0]

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> [[B, out_channels, H / stride, W / stride]]`` (H, W multiples of ``size_divisor``)."""
        height, width = images.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            raise ValueError(f"DLA needs input sides that are multiples of {self.size_divisor}, got {height}x{width}")
        pyramid = self.up(self.trunk(images))
        return [self.merge(pyramid[:3])[-1]]
