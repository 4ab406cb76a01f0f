"""ResNet trunk (torchvision) with CenterNet's deconvolution neck to stride 4."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn

from keypointdet.models.necks import DeconvNeck

_WEIGHTS = {18: "ResNet18_Weights", 34: "ResNet34_Weights", 50: "ResNet50_Weights", 101: "ResNet101_Weights"}


class ResNet(nn.Module):
    """ResNet-18/34/50/101 trunk + :class:`DeconvNeck`: one feature map at stride 4.

    Backbone contract shared with the hourglass: ``forward`` returns a list with one map per stack
    (here one), and the attributes ``out_channels``, ``num_stacks``, ``stride`` and
    ``size_divisor`` (inputs must be a multiple of it for the output to be ``input / stride``).
    ``pretrained=True`` loads torchvision's ImageNet weights (downloads them once; opt-in).
    """

    size_divisor = 32

    def __init__(
        self,
        depth: int = 18,
        pretrained: bool = False,
        neck_channels: Sequence[int] = (256, 128, 64),
        deformable: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _WEIGHTS:
            raise ValueError(f"ResNet depth must be one of {sorted(_WEIGHTS)}, got {depth}")
        weights = getattr(torchvision.models, _WEIGHTS[depth]).DEFAULT if pretrained else None
        trunk = getattr(torchvision.models, f"resnet{depth}")(weights=weights)
        self.trunk = nn.Sequential(*list(trunk.children())[:-2])  # drop avgpool and fc
        self.neck = DeconvNeck(trunk.fc.in_features, neck_channels, deformable)
        self.out_channels = self.neck.out_channels
        self.num_stacks = 1
        self.stride = 32 // self.neck.upsampling

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> [[B, out_channels, H / stride, W / stride]]``."""
        return [self.neck(self.trunk(images))]
