"""CenterNet (Objects as Points): a class heatmap of box centres, with size and sub-cell offset regressed there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from keypointdet.data.encode import CenterNetEncoder
from keypointdet.decode import centernet_decode, centernet_decode_scores
from keypointdet.suppression import NMS_MODES, hard_nms
from keypointdet.detectors.base import Detections, FocalLossSettings, KeypointDetector, Outputs
from keypointdet.losses import focal_loss, mean_count_over_devices, regression_loss
from keypointdet.models.heads import CenterHead


@dataclass(frozen=True)
class CenterNetLoss(FocalLossSettings):
    """The focal loss on the heatmap; L1 size and offset losses weighted as in the paper."""

    size_weight: float = 0.1
    offset_weight: float = 1.0


class CenterNet(KeypointDetector):
    """Objects as Points.

    Args:
        backbone, num_classes, category_ids, class_names: see :class:`KeypointDetector`.
        head_channels: hidden channels of each output branch.
        loss: fields of :class:`CenterNetLoss`.
        targets: ``max_objects``, ``min_overlap``, ``radius_variant`` of :class:`CenterNetEncoder`.
        k: detections kept per image (top-k peaks; also after a multi-scale merge).
        nms: ``None`` (the paper: no NMS), ``"class"`` or ``"agnostic"``: greedy NMS of the kept detections
            (:func:`keypointdet.suppression.hard_nms`) within each class or across classes, in :meth:`merge`, so in
            validation, ``eval.py``, ``predict.py`` and exported graphs alike.
        nms_iou: the IoU above which ``nms`` drops the less confident of two detections.
    """

    name = "centernet"

    def __init__(
        self, backbone: nn.Module | Mapping[str, Any], num_classes: int, category_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None, head_channels: int = 64, loss: Mapping[str, float] | None = None,
        targets: Mapping[str, Any] | None = None, k: int = 100, nms: str | None = None, nms_iou: float = 0.5,
    ) -> None:
        if nms not in (None, *NMS_MODES):
            raise ValueError(f"model.nms must be null or one of {NMS_MODES}, got {nms!r}")
        # The official multi-scale test merges with gaussian soft-NMS (sigma 0.5).
        super().__init__(backbone, num_classes, category_ids, class_names, max_detections=k)
        self.head_channels = head_channels
        self.nms, self.nms_iou = nms, float(nms_iou)
        self.loss_weights = CenterNetLoss(**(loss or {}))
        self.heads = nn.ModuleList(
            CenterHead(self.backbone.out_channels, num_classes, head_channels) for _ in range(self.backbone.num_stacks)
        )
        self.encoder = CenterNetEncoder(num_classes, **(targets or {}))

    def stack_loss(self, outputs: Outputs, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        weights = self.loss_weights
        num_objects = mean_count_over_devices(targets["mask"].sum())
        num_positives = mean_count_over_devices(targets["heatmap"].eq(1).sum())
        heatmap = focal_loss(outputs["heatmap"], targets["heatmap"], weights.alpha, weights.beta, num_positives)
        index, mask = targets["index"], targets["mask"]
        size = regression_loss(outputs["size"], index, mask, targets["size"], "l1", num_objects)
        offset = regression_loss(outputs["offset"], index, mask, targets["offset"], "l1", num_objects)
        loss = heatmap + weights.size_weight * size + weights.offset_weight * offset
        return {"loss": loss, "heatmap": heatmap, "size": size, "offset": offset}

    def candidates(self, outputs: Outputs) -> Detections:
        return centernet_decode(outputs["heatmap"], outputs["size"], outputs["offset"], k=self.max_detections)

    def merge(self, sets: Sequence[Detections]) -> Detections:
        """One view's top-k peaks as they are (the paper uses no NMS); several views through soft-NMS. Then, with
        ``nms``, greedy NMS (suppressed detections score 0; same shapes)."""
        merged = sets[0] if len(sets) == 1 else super().merge(sets)
        if self.nms is None:
            return merged
        return hard_nms(*merged, iou_threshold=self.nms_iou, class_wise=self.nms == "class")

    def flip_candidates(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """As the official code: mean heatmap probabilities and sizes of image and mirror, the image's offsets."""
        scores = (torch.sigmoid(outputs["heatmap"].float()) + torch.sigmoid(mirrored["heatmap"].float()).flip(-1)) / 2
        size = (outputs["size"].float() + mirrored["size"].float().flip(-1)) / 2
        return [centernet_decode_scores(scores, size, outputs["offset"], k=self.max_detections)]

    def set_nms(self, nms: str | None, nms_iou: float | None = None) -> None:
        """Change ``nms`` (and ``nms_iou``) of a built detector, e.g. ``+model.nms=class`` given to ``eval.py``."""
        if nms not in (None, *NMS_MODES):
            raise ValueError(f"model.nms must be null or one of {NMS_MODES}, got {nms!r}")
        self.nms = nms
        self.nms_iou = self.nms_iou if nms_iou is None else float(nms_iou)

    def class_layers(self) -> list[str]:
        return [f"heads.{i}.heatmap.{len(head.heatmap) - 1}" for i, head in enumerate(self.heads)]

    def settings(self) -> dict[str, Any]:
        return {
            "head_channels": self.head_channels,
            "loss": asdict(self.loss_weights),
            "targets": self.encoder.settings(),
            "k": self.max_detections,
            "nms": self.nms,
            "nms_iou": self.nms_iou,
        }
