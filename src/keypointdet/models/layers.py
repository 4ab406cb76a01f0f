"""Convolution building blocks shared by the backbones and heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """``k x k`` convolution (no bias: the BN has its own shift), "same" padding, then BatchNorm.

    ``[B, in, H, W] -> [B, out, ceil(H / stride), ceil(W / stride)]`` for odd ``kernel_size``.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """:func:`conv_bn` followed by ReLU."""
    return nn.Sequential(*conv_bn(in_channels, out_channels, kernel_size, stride), nn.ReLU(inplace=True))


def bilinear_kernel(size: int) -> Tensor:
    """``[size, size]`` weights of bilinear upsampling by ``(size + 1) // 2`` as a transposed convolution."""
    center = (size - 1) / 2
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / ((size + 1) // 2)
    return ramp[:, None] * ramp[None, :]
