"""CornerNet: objects as paired top-left / bottom-right corners, grouped by 1-D embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from keypointdet.data.encode import CornerNetEncoder
from keypointdet.decode import cornernet_pairs, mirror_boxes
from keypointdet.detectors.base import Detections, FocalLossSettings, KeypointDetector, Outputs
from keypointdet.losses import ae_loss, focal_loss, gather_at, mean_count_over_devices, regression_loss
from keypointdet.models.heads import CORNER_POOLS, CornerHead

CORNER_OUTPUTS = ("tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding", "tl_offset", "br_offset")


@dataclass(frozen=True)
class CornerNetLoss(FocalLossSettings):
    """The focal loss on both heatmaps; pull / push embedding and smooth-L1 offset weights.

    ``ae_sum_images`` says how pull and push are normalised. None: averaged over the images that have
    objects (the paper's formula). A number ``n``: the official code's reduction, which sums them over the
    images of each GPU and averages over GPUs, i.e. ``n`` times their mean over all the images of the global
    batch when each GPU holds ``n`` images (the recipe sets ``n`` to its per-device batch). Either way the
    normaliser is averaged over devices, so the loss does not depend on how the batch is split.
    """

    pull_weight: float = 0.1
    push_weight: float = 0.1
    offset_weight: float = 1.0
    ae_sum_images: float | None = None


class CornerNet(KeypointDetector):
    """CornerNet.

    Args:
        backbone, num_classes, category_ids, class_names: see :class:`KeypointDetector`.
        head_channels: hidden channels of each output branch (None: the backbone's width).
        pool_channels: channels of the corner-pooling branches (128 in the paper).
        loss: fields of :class:`CornerNetLoss`.
        targets: ``max_objects``, ``min_overlap``, ``radius_variant`` of :class:`CornerNetEncoder`.
        k: corners of each kind kept before pairing.
        ae_threshold: largest embedding distance of a pair.
        num_dets: best pairs kept before soft-NMS.
        soft_nms_sigma, soft_nms_method, soft_nms_iou_threshold: the per-class soft-NMS of the pairs (official:
            ``exp_soft_nms`` with sigma 0.5, or ``linear_soft_nms`` above the IoU ``nms_threshold`` 0.5).
        max_dets: detections per image after soft-NMS.
    """

    name = "cornernet"

    def __init__(
        self,
        backbone: nn.Module | Mapping[str, Any],
        num_classes: int,
        category_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        head_channels: int | None = None,
        pool_channels: int = 128,
        loss: Mapping[str, float] | None = None,
        targets: Mapping[str, Any] | None = None,
        k: int = 100,
        ae_threshold: float = 0.5,
        num_dets: int = 1000,
        soft_nms_sigma: float = 0.5,
        soft_nms_method: str = "gaussian",
        max_dets: int = 100,
        soft_nms_iou_threshold: float = 0.5,
    ) -> None:
        super().__init__(
            backbone, num_classes, category_ids, class_names, max_dets, soft_nms_sigma, soft_nms_method,
            soft_nms_iou_threshold,
        )
        self.head_channels, self.pool_channels = head_channels, pool_channels
        self.k, self.ae_threshold, self.num_dets = k, ae_threshold, num_dets
        self.loss_weights = CornerNetLoss(**(loss or {}))
        self.heads = nn.ModuleList(
            CornerHead(self.backbone.out_channels, num_classes, head_channels, pool_channels)
            for _ in range(self.backbone.num_stacks)
        )
        self.encoder = CornerNetEncoder(num_classes, **(targets or {}))

    def stack_loss(self, outputs: Outputs, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        weights, mask = self.loss_weights, targets["mask"]
        num_objects = mean_count_over_devices(mask.sum())
        heatmap = offset = 0.0
        embeddings = []
        for corner in CORNER_POOLS:
            target, index = targets[f"{corner}_heatmap"], targets[f"{corner}_index"]
            num_positives = mean_count_over_devices(target.eq(1).sum())
            heatmap = heatmap + focal_loss(outputs[f"{corner}_heatmap"], target, weights.alpha, weights.beta, num_positives)
            offset = offset + regression_loss(
                outputs[f"{corner}_offset"], index, mask, targets[f"{corner}_offset"], "smooth_l1", num_objects
            )
            embeddings.append(gather_at(outputs[f"{corner}_embedding"], index)[..., 0])
        pull, push = ae_loss(*embeddings, mask, self.embedding_normaliser(mask))
        loss = heatmap + weights.pull_weight * pull + weights.push_weight * push + weights.offset_weight * offset
        return {"loss": loss, "heatmap": heatmap, "pull": pull, "push": push, "offset": offset}

    def embedding_normaliser(self, mask: Tensor) -> Tensor:
        """What the summed pull and push of a batch (``mask [B, M]``) are divided by (:class:`CornerNetLoss`)."""
        if self.loss_weights.ae_sum_images is None:
            return mean_count_over_devices(mask.any(dim=1).sum())
        num_images = mean_count_over_devices(torch.tensor(float(mask.shape[0]), device=mask.device))
        return num_images / self.loss_weights.ae_sum_images

    def candidates(self, outputs: Outputs) -> Detections:
        """The best ``num_dets`` corner pairs before soft-NMS: the pairs of every test-time view are
        suppressed together, once, as in the official multi-scale / flip test."""
        maps = (outputs[name] for name in CORNER_OUTPUTS)
        return cornernet_pairs(*maps, k=self.k, ae_threshold=self.ae_threshold, num_dets=self.num_dets)

    def flip_candidates(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """As the official code: the pairs of both, the mirror's mirrored back."""
        boxes, scores, labels = self.candidates(mirrored)
        return [self.candidates(outputs), (mirror_boxes(boxes, outputs["tl_heatmap"].shape[-1]), scores, labels)]

    def class_layers(self) -> list[str]:
        return [
            f"heads.{i}.heatmaps.{corner}.{len(branch) - 1}"
            for i, head in enumerate(self.heads)
            for corner, branch in head.heatmaps.items()
        ]

    def settings(self) -> dict[str, Any]:
        return {
            "head_channels": self.head_channels,
            "pool_channels": self.pool_channels,
            "loss": asdict(self.loss_weights),
            "targets": self.encoder.settings(),
            "k": self.k,
            "ae_threshold": self.ae_threshold,
            "num_dets": self.num_dets,
            "soft_nms_sigma": self.soft_nms_sigma,
            "soft_nms_method": self.soft_nms_method,
            "soft_nms_iou_threshold": self.soft_nms_iou_threshold,
            "max_dets": self.max_detections,
        }
