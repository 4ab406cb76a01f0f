"""Necks that bring a stride-32 feature map back to the detectors' output stride."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from keypointdet.models.layers import bilinear_kernel


class ModulatedDeformConv(nn.Module):
    """3x3 modulated deformable convolution (DCNv2) from ``torchvision.ops``: no compiled extension.

    A plain convolution predicts the offsets and the modulation mask; it starts at zero, so the
    layer starts as a regular convolution with every tap weighted 0.5, as in the official code.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.offset_mask = nn.Conv2d(in_channels, 3 * 9, 3, padding=1)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.conv = DeformConv2d(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W] -> [B, out, H, W]``."""
        dy_dx_mask = self.offset_mask(x)
        offset, mask = dy_dx_mask[:, :18], torch.sigmoid(dy_dx_mask[:, 18:])
        return self.conv(x, offset, mask)


def _bilinear_upsampling_(deconv: nn.ConvTranspose2d) -> None:
    """Initialise a stride-2, 4x4 transposed convolution as per-channel bilinear upsampling."""
    kernel = bilinear_kernel(deconv.kernel_size[0])
    with torch.no_grad():
        deconv.weight.zero_()
        for channel in range(min(deconv.in_channels, deconv.out_channels)):
            deconv.weight[channel, channel] = kernel


class DeconvNeck(nn.Module):
    """CenterNet's ResNet neck: per stage ``[3x3 conv, BN, ReLU, 4x4 transposed conv x2, BN, ReLU]``.

    Three stages take a stride-32 map to stride 4. ``deformable=True`` uses a modulated
    deformable 3x3 convolution, as in CenterNet's ResNet-DCN. ``skip_channels`` (the channels of
    the trunk's stride-16, 8, 4 maps) adds each of them, through a 3x3 conv-BN, to the upsampled
    map of the same stride, as TTFNet does: shallow, high-resolution features reach the heads
    directly, which helps small objects and short schedules. Without it this is the paper's neck.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (256, 128, 64),
        deformable: bool = False,
        skip_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if skip_channels is not None and len(skip_channels) != len(channels):
            raise ValueError(f"need one skip per neck stage: {len(channels)} stages, {len(skip_channels)} skips")
        self.stages = nn.ModuleList()
        for out_channels in channels:
            conv = (
                ModulatedDeformConv(in_channels, out_channels)
                if deformable
                else nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
            )
            deconv = nn.ConvTranspose2d(out_channels, out_channels, 4, stride=2, padding=1, bias=False)
            _bilinear_upsampling_(deconv)
            self.stages.append(
                nn.Sequential(
                    conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                    deconv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                )
            )
            in_channels = out_channels
        self.skips = None
        if skip_channels is not None:
            self.skips = nn.ModuleList(
                nn.Sequential(nn.Conv2d(skip, out, 3, padding=1, bias=False), nn.BatchNorm2d(out))
                for skip, out in zip(skip_channels, channels)
            )
        self.out_channels = in_channels
        self.upsampling = 2 ** len(channels)

    def forward(self, x: Tensor, skips: Sequence[Tensor] = ()) -> Tensor:
        """``[B, in, H, W] -> [B, channels[-1], H * 2^n, W * 2^n]``; ``skips``: the trunk's maps at
        ``2x, 4x, ...`` the resolution of ``x`` (used only when built with ``skip_channels``)."""
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if self.skips is not None:
                x = x + self.skips[index](skips[index])
        return x
