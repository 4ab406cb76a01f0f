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
        skip_connections: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _WEIGHTS:
            raise ValueError(f"ResNet depth must be one of {sorted(_WEIGHTS)}, got {depth}")
        weights = getattr(torchvision.models, _WEIGHTS[depth]).DEFAULT if pretrained else None
        trunk = getattr(torchvision.models, f"resnet{depth}")(weights=weights)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.stages = nn.ModuleList([trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4])
        # output channels of layer1..3 (stride 4, 8, 16), deepest first as the neck meets them
        skip_channels = [stage[-1].conv1.in_channels for stage in self.stages[:-1]][::-1]
        self.neck = DeconvNeck(
            trunk.fc.in_features, neck_channels, deformable, skip_channels if skip_connections else None
        )
        self.out_channels = self.neck.out_channels
        self.num_stacks = 1
        self.stride = 32 // self.neck.upsampling

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> [[B, out_channels, H / stride, W / stride]]``."""
        features = [self.stem(images)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return [self.neck(features[-1], skips=features[-2:0:-1])]
