"""Box coordinates: the one owner of the mapping between original pixels, network input and output cells.

Coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``). Three frames:

- original: the image as read from disk;
- input: what the network sees, ``input = original * scale + shift`` per axis (``scale``, ``shift`` as
  ``(x, y)``; the evaluation letterbox has ``shift = 0``);
- output: the head's maps, ``input = output * stride``.

Box conversions between ``xyxy`` and COCO's ``xywh`` go through :func:`torchvision.ops.box_convert`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_convert

from keypointdet.sizes import letterbox_size, round_up

__all__ = ["BoxMapping", "letterbox_size", "round_up", "xywh_to_xyxy", "xyxy_to_xywh"]


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` corner boxes -> COCO ``[x, y, width, height]``."""
    return box_convert(boxes, "xyxy", "xywh")


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``[..., 4]`` ``[x, y, width, height]`` -> corner boxes."""
    return box_convert(boxes, "xywh", "xyxy")


@dataclass(frozen=True)
class BoxMapping:
    """How a batch's input pixels relate to its images' original pixels.

    Attributes:
        scale: ``[B, 2]`` per-axis ``(x, y)`` factors, ``input = original * scale + shift``.
        shift: ``[B, 2]`` ``(x, y)`` offsets in input pixels.
        original_size: ``[B, 2]`` ``(height, width)`` of the original images.
    """

    scale: Tensor
    shift: Tensor
    original_size: Tensor

    @classmethod
    def from_batch(cls, batch: dict[str, Tensor]) -> BoxMapping:
        """The mapping recorded by the evaluation transform in a collated batch (``scale``, ``shift``,
        ``original_size``)."""
        return cls(batch["scale"], batch["shift"], batch["original_size"])

    def to_original(self, boxes: Tensor) -> Tensor:
        """xyxy ``boxes [B, K, 4]`` in input pixels -> original pixels, clipped to each image."""
        scale, shift = self.scale.repeat(1, 2)[:, None], self.shift.repeat(1, 2)[:, None]
        original = (boxes - shift.to(boxes)) / scale.to(boxes)
        height, width = self.original_size[:, 0], self.original_size[:, 1]
        upper = torch.stack([width, height, width, height], dim=-1)[:, None].to(original)
        return torch.minimum(original.clamp(min=0), upper)

    def points_to_original(self, points: Tensor) -> Tensor:
        """``points [B, ..., 2]`` (x, y) in input pixels -> original pixels, clipped to each image."""
        shape = (points.shape[0], *(1,) * (points.dim() - 2), 2)
        original = (points - self.shift.reshape(shape).to(points)) / self.scale.reshape(shape).to(points)
        upper = self.original_size.flip(-1).reshape(shape).to(original)  # (width, height)
        return torch.minimum(original.clamp(min=0), upper)

    def to_input(self, boxes: Tensor) -> Tensor:
        """xyxy ``boxes [B, K, 4]`` in original pixels -> input pixels."""
        scale, shift = self.scale.repeat(1, 2)[:, None], self.shift.repeat(1, 2)[:, None]
        return boxes * scale.to(boxes) + shift.to(boxes)
