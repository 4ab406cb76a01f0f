"""Prediction heads: raw maps only; losses and decoding are functions of these maps."""

from __future__ import annotations

import math

from torch import Tensor, nn

from keypointdet.models.corner_pool import CornerPooling

# Heatmap bias so that every location starts at the prior probability 0.1 (focal-loss init).
HEATMAP_PRIOR = 0.1


def prediction_branch(in_channels: int, hidden_channels: int, out_channels: int, bias: float = 0.0) -> nn.Sequential:
    """``3x3 conv, ReLU, 1x1 conv``: the output branch used by every head of both detectors."""
    branch = nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden_channels, out_channels, 1),
    )
    nn.init.constant_(branch[-1].bias, bias)
    return branch


def heatmap_bias(prior: float = HEATMAP_PRIOR) -> float:
    """``-log((1 - prior) / prior)``: the logit of the prior probability."""
    return -math.log((1 - prior) / prior)


class CenterHead(nn.Module):
    """CenterNet head: class heatmap (C), box size (2) and centre offset (2) at every cell."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 64) -> None:
        super().__init__()
        self.heatmap = prediction_branch(in_channels, hidden_channels, num_classes, heatmap_bias())
        self.size = prediction_branch(in_channels, hidden_channels, 2)
        self.offset = prediction_branch(in_channels, hidden_channels, 2)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """``[B, in, H, W]`` -> ``heatmap [B, C, H, W]`` logits, ``size [B, 2, H, W]``, ``offset [B, 2, H, W]``."""
        return {"heatmap": self.heatmap(features), "size": self.size(features), "offset": self.offset(features)}


class CenterPoseHead(CenterHead):
    """CenterNet multi-person pose head: :class:`CenterHead`'s maps and, for ``J`` joints, each joint's position
    relative to the object's centre (2J), a heatmap per joint (J) and the joints' sub-cell offset (2)."""

    def __init__(self, in_channels: int, num_classes: int, num_joints: int, hidden_channels: int = 64) -> None:
        super().__init__(in_channels, num_classes, hidden_channels)
        self.joint_vector = prediction_branch(in_channels, hidden_channels, 2 * num_joints)
        self.joint_heatmap = prediction_branch(in_channels, hidden_channels, num_joints, heatmap_bias())
        self.joint_offset = prediction_branch(in_channels, hidden_channels, 2)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """``[B, in, H, W]`` -> :class:`CenterHead`'s maps, ``joint_vector [B, 2J, H, W]`` (x, y per joint),
        ``joint_heatmap [B, J, H, W]`` logits, ``joint_offset [B, 2, H, W]``."""
        return {
            **super().forward(features),
            "joint_vector": self.joint_vector(features),
            "joint_heatmap": self.joint_heatmap(features),
            "joint_offset": self.joint_offset(features),
        }


# Corner kind -> the two pooling directions that collect its object's evidence (right / below for tl).
CORNER_POOLS: dict[str, tuple[str, str]] = {"tl": ("top", "left"), "br": ("bottom", "right")}


class CornerHead(nn.Module):
    """CornerNet head: per corner kind, corner pooling then heatmap (C), embedding (1) and offset (2).

    ``hidden_channels`` (of every output branch) defaults to ``in_channels``, as in the official model.
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_channels: int | None = None, pool_channels: int = 128
    ) -> None:
        super().__init__()
        hidden = hidden_channels or in_channels
        self.pools = nn.ModuleDict(
            {corner: CornerPooling(in_channels, pools, pool_channels) for corner, pools in CORNER_POOLS.items()}
        )
        self.heatmaps = nn.ModuleDict(
            {corner: prediction_branch(in_channels, hidden, num_classes, heatmap_bias()) for corner in CORNER_POOLS}
        )
        self.embeddings = nn.ModuleDict({corner: prediction_branch(in_channels, hidden, 1) for corner in CORNER_POOLS})
        self.offsets = nn.ModuleDict({corner: prediction_branch(in_channels, hidden, 2) for corner in CORNER_POOLS})

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """``[B, in, H, W]`` -> ``{tl,br}_heatmap [B, C, H, W]`` logits (first), ``{tl,br}_embedding [B, 1, H, W]``,
        ``{tl,br}_offset [B, 2, H, W]``."""
        pooled = {corner: pool(features) for corner, pool in self.pools.items()}
        outputs = {}
        for kind, branches in (("heatmap", self.heatmaps), ("embedding", self.embeddings), ("offset", self.offsets)):
            outputs.update({f"{corner}_{kind}": branches[corner](pooled[corner]) for corner in CORNER_POOLS})
        return outputs
