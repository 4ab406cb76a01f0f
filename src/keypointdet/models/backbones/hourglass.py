"""Stacked hourglass backbone shared by CornerNet and CenterNet.

Follows the official CornerNet ``kp.py`` / CenterNet ``large_hourglass.py``
design: a stride-4 stem, then ``num_stacks`` hourglass modules that downsample
with stride-2 residual blocks (no max-pool), upsample with nearest-neighbour
interpolation and merge with element-wise addition. Every stack emits a feature
map so the detector can put heads on each one (intermediate supervision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from keypointdet.models.layers import conv_bn, conv_bn_relu

__all__ = ["Hourglass", "HourglassModule", "Residual"]


class Residual(nn.Module):
    """Basic residual block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus skip, then ReLU.

    The skip is a 1x1 conv-BN projection when the stride or channel count changes
    and the identity otherwise.

    Shapes: ``[B, in_channels, H, W] -> [B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.skip = conv_bn(in_channels, out_channels, 1, stride)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]``."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x), inplace=True)


def _residuals(in_channels: int, out_channels: int, count: int, stride: int = 1) -> nn.Sequential:
    """``count`` residual blocks; the first one changes channels/stride (CornerNet ``make_layer``)."""
    blocks = [Residual(in_channels, out_channels, stride)]
    blocks += [Residual(out_channels, out_channels) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


def _residuals_revr(in_channels: int, out_channels: int, count: int) -> nn.Sequential:
    """``count`` residual blocks; the last one changes channels (CornerNet ``make_layer_revr``)."""
    blocks = [Residual(in_channels, in_channels) for _ in range(count - 1)]
    blocks.append(Residual(in_channels, out_channels))
    return nn.Sequential(*blocks)


class HourglassModule(nn.Module):
    """One hourglass of recursion depth ``depth`` (CornerNet ``kp_module``).

    At each level the input goes through two branches: ``up1`` keeps the
    resolution, while ``low1`` halves it (stride-2 residual) and changes the
    width to ``dims[1]``, ``low2`` recurses (or, at the bottom, applies plain
    residuals), ``low3`` returns to ``dims[0]`` and the result is upsampled and
    added to ``up1``.

    Args:
        depth: number of downsampling levels (``n`` in CornerNet), ``>= 1``.
        dims: channel width per level, ``len(dims) == depth + 1``.
        modules: residual blocks per level, ``len(modules) == depth + 1``;
            ``modules[-1]`` blocks form the bottleneck at the lowest resolution.

    Shapes: ``[B, dims[0], H, W] -> [B, dims[0], H, W]`` for any ``H, W >= 1``.
    """

    def __init__(self, depth: int, dims: Sequence[int], modules: Sequence[int]) -> None:
        super().__init__()
        curr_dim, next_dim = dims[0], dims[1]
        curr_mod, next_mod = modules[0], modules[1]

        self.up1 = _residuals(curr_dim, curr_dim, curr_mod)
        self.low1 = _residuals(curr_dim, next_dim, curr_mod, stride=2)
        self.low2: nn.Module
        if depth > 1:
            self.low2 = HourglassModule(depth - 1, dims[1:], modules[1:])
        else:
            self.low2 = _residuals(next_dim, next_dim, next_mod)
        self.low3 = _residuals_revr(next_dim, curr_dim, curr_mod)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, dims[0], H, W] -> [B, dims[0], H, W]``."""
        skip = self.up1(x)
        low = self.low3(self.low2(self.low1(x)))
        # Upsampling to the skip's exact size (instead of a fixed x2) keeps odd
        # sizes working: the stride-2 conv rounds up, so x2 would overshoot.
        return skip + F.interpolate(low, size=skip.shape[-2:], mode="nearest")


class Hourglass(nn.Module):
    """Stacked hourglass backbone (Hourglass-104 with the default arguments).

    Layout (CornerNet ``kp`` without the detection heads): a stem (7x7 conv
    stride 2 + residual stride 2) brings the image to stride 4; each stack is an
    :class:`HourglassModule` followed by a 3x3 conv-BN-ReLU (CornerNet ``cnv``)
    whose output is that stack's feature map. Between stacks the stack input and
    the stack's feature map are each projected by 1x1 conv-BN, summed, passed
    through ReLU and a residual block to form the next stack's input.

    Args:
        num_stacks: number of stacked hourglasses (one output per stack).
        depth: downsampling levels inside each hourglass (``n`` in CornerNet).
        dims: channel width per hourglass level, ``len(dims) == depth + 1``.
        modules: residual blocks per hourglass level, ``len(modules) == depth + 1``.
        stem_channels: width of the stem's 7x7 convolution.
        out_channels: channels of every returned feature map (CornerNet ``cnv_dim``).
        pretrained: accepted for config compatibility with the ResNet backbone;
            ``True`` raises because no ImageNet weights exist for this network.

    Shapes: ``images [B, 3, H, W] -> num_stacks x [B, out_channels, ceil(H / 4), ceil(W / 4)]``.
    """

    stride: int = 4
    # Upsampling resizes to each skip's exact size, so any input works (CornerNet trains at 511).
    size_divisor: int = 1

    def __init__(
        self,
        num_stacks: int = 2,
        depth: int = 5,
        dims: Sequence[int] = (256, 256, 384, 384, 384, 512),
        modules: Sequence[int] = (2, 2, 2, 2, 2, 4),
        stem_channels: int = 128,
        out_channels: int = 256,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if pretrained:
            raise NotImplementedError(
                "Hourglass has no public ImageNet-pretrained weights: CornerNet and CenterNet train "
                "it from scratch on the detection data. Use backbone.pretrained=false."
            )
        if num_stacks < 1:
            raise ValueError(f"num_stacks must be >= 1, got {num_stacks}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dims = [int(d) for d in dims]  # also turns a Hydra ListConfig into a plain list
        modules = [int(m) for m in modules]
        if len(dims) != depth + 1 or len(modules) != depth + 1:
            raise ValueError(
                f"dims and modules need depth + 1 = {depth + 1} entries (one per hourglass level), "
                f"got len(dims)={len(dims)}, len(modules)={len(modules)}"
            )
        if min(dims) < 1 or min(modules) < 1 or stem_channels < 1 or out_channels < 1:
            raise ValueError(
                "dims, modules, stem_channels and out_channels must all be >= 1, got "
                f"dims={dims}, modules={modules}, stem_channels={stem_channels}, out_channels={out_channels}"
            )

        self.num_stacks = num_stacks
        self.out_channels = out_channels
        # Smallest input side whose lowest hourglass level has 2 cells or more: an export with free sizes needs
        # it (torch.export would specialise a 1-cell map, which broadcasts).
        self.min_export_size = self.stride * 2**depth + 1
        width = dims[0]

        self.stem = nn.Sequential(
            conv_bn_relu(3, stem_channels, kernel_size=7, stride=2),
            Residual(stem_channels, width, stride=2),
        )
        self.hourglasses = nn.ModuleList(HourglassModule(depth, dims, modules) for _ in range(num_stacks))
        self.cnvs = nn.ModuleList(conv_bn_relu(width, out_channels, kernel_size=3) for _ in range(num_stacks))
        # Inter-stack connections (CornerNet inters_, cnvs_, inters); the last stack needs none.
        self.input_projs = nn.ModuleList(conv_bn(width, width, 1) for _ in range(num_stacks - 1))
        self.feature_projs = nn.ModuleList(conv_bn(out_channels, width, 1) for _ in range(num_stacks - 1))
        self.inters = nn.ModuleList(Residual(width, width) for _ in range(num_stacks - 1))

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> num_stacks x [B, out_channels, ceil(H / 4), ceil(W / 4)]``, last stack last."""
        x = self.stem(images)
        features: list[Tensor] = []
        for i, (hourglass, cnv) in enumerate(zip(self.hourglasses, self.cnvs)):
            feature = cnv(hourglass(x))
            features.append(feature)
            if i < self.num_stacks - 1:
                x = F.relu(self.input_projs[i](x) + self.feature_projs[i](feature))
                x = self.inters[i](x)
        return features
