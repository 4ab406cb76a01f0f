"""CenterNet multi-person pose (Objects as Points, section 4): the object's box as CenterNet's, and its joints
regressed from the centre, snapped to the peaks of a heatmap per joint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from keypointdet.data.encode import CenterNetPoseEncoder
from keypointdet.data.keypoints import KeypointSet
from keypointdet.decode import centernet_pose_decode, centernet_pose_decode_scores
from keypointdet.detectors.base import Detections, Outputs
from keypointdet.detectors.centernet import CenterNet, CenterNetLoss
from keypointdet.losses import focal_loss, mean_count_over_devices, regression_loss
from keypointdet.models.heads import CenterPoseHead
from keypointdet.suppression import hard_nms_order, soft_nms_selection, take


@dataclass(frozen=True)
class CenterNetPoseLoss(CenterNetLoss):
    """CenterNet's terms and the joints': focal loss on the joint heatmaps, L1 on the joints regressed from the
    centre (labelled joints only) and on their sub-cell offsets; weights of the official ``multi_pose``
    (``hp_weight``, ``hm_hp_weight``, ``off_weight``: 1)."""

    joint_vector_weight: float = 1.0
    joint_heatmap_weight: float = 1.0
    joint_offset_weight: float = 1.0


class CenterNetPose(CenterNet):
    """Objects as Points for multi-person pose: one object class (e.g. person) and ``J`` joints.

    Args:
        backbone, num_classes, category_ids, class_names, head_channels, targets, k, nms, nms_iou: see
            :class:`CenterNet` (``targets.max_objects`` defaults to 32, as the official ``multi_pose``).
        keypoints: the dataset's keypoint set (``data.keypoints``: ``names``, ``flip_pairs``, ``sigmas``,
            ``skeleton``; :class:`~keypointdet.data.keypoints.KeypointSet`).
        loss: fields of :class:`CenterNetPoseLoss`.
        joint_threshold, snap_distance: the snapping rule of :func:`~keypointdet.decode.snap_joints` (official
            0.1 and 0.3).
    """

    name = "centernet_pose"
    predicts_keypoints = True

    def __init__(  # CenterNet's arguments, the keypoint set and the snapping rule
        self, backbone: nn.Module | Mapping[str, Any], num_classes: int, category_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None, keypoints: Mapping[str, Any] | None = None, head_channels: int = 64,
        loss: Mapping[str, float] | None = None, targets: Mapping[str, Any] | None = None, k: int = 100,
        nms: str | None = None, nms_iou: float = 0.5, joint_threshold: float = 0.1, snap_distance: float = 0.3,
    ) -> None:  # fmt: skip
        if keypoints is None:
            raise ValueError(
                "centernet_pose needs the dataset's keypoint set: a data config with data.keypoints (names, "
                "flip_pairs, sigmas, skeleton), e.g. data=pose_synthetic or data=coco_keypoints"
            )
        super().__init__(backbone, num_classes, category_ids, class_names, head_channels, None, None, k, nms, nms_iou)
        self.keypoints = KeypointSet.from_config(keypoints)
        self.joint_threshold, self.snap_distance = float(joint_threshold), float(snap_distance)
        self.loss_weights = CenterNetPoseLoss(**(loss or {}))
        # CenterNet's heads and encoder, with the joints' branches and targets
        self.heads = nn.ModuleList(
            CenterPoseHead(self.backbone.out_channels, num_classes, self.keypoints.num_joints, head_channels)
            for _ in range(self.backbone.num_stacks)
        )
        self.encoder = CenterNetPoseEncoder(num_classes, **(targets or {}))

    def stack_loss(self, outputs: Outputs, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().stack_loss(outputs, targets)
        weights = self.loss_weights
        joint_mask = targets["joint_mask"]  # [B, M * J]
        batch, max_objects = targets["mask"].shape
        vector_mask = joint_mask.reshape(batch, max_objects, -1).repeat_interleave(2, dim=2)  # [B, M, 2J]
        num_joints = mean_count_over_devices(joint_mask.sum())
        num_positives = mean_count_over_devices(targets["joint_heatmap"].eq(1).sum())
        joint_heatmap = focal_loss(
            outputs["joint_heatmap"], targets["joint_heatmap"], weights.alpha, weights.beta, num_positives
        )
        joint_vector = regression_loss(
            outputs["joint_vector"], targets["index"], vector_mask, targets["joint_vector"], "l1", num_joints
        )
        joint_offset = regression_loss(
            outputs["joint_offset"], targets["joint_index"], joint_mask, targets["joint_offset"], "l1", num_joints
        )
        terms["loss"] = terms["loss"] + (
            weights.joint_heatmap_weight * joint_heatmap
            + weights.joint_vector_weight * joint_vector
            + weights.joint_offset_weight * joint_offset
        )
        return {**terms, "joint_heatmap": joint_heatmap, "joint_vector": joint_vector, "joint_offset": joint_offset}

    def candidates(self, outputs: Outputs) -> Detections:
        return centernet_pose_decode(
            outputs["heatmap"], outputs["size"], outputs["offset"], outputs["joint_vector"], outputs["joint_heatmap"],
            outputs["joint_offset"], self.max_detections, self.joint_threshold, self.snap_distance,
        )  # fmt: skip

    def flip_candidates(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """As the official flip test: mean heatmap probabilities, sizes and joint vectors of image and mirror (the
        mirror's joints swapped through ``flip_pairs``), mean joint heatmap probabilities (swapped too), the
        image's offsets. The mirror's joint vector ``v`` at its cell is ``1 - v`` in x from the image's cell (the
        official ``-v`` is the same in its pixel-index mirror ``W - 1 - x``; here mirrors are ``W - x``)."""
        permutation = self.keypoints.flip_permutation()
        scores = (torch.sigmoid(outputs["heatmap"].float()) + torch.sigmoid(mirrored["heatmap"].float()).flip(-1)) / 2
        size = (outputs["size"].float() + mirrored["size"].float().flip(-1)) / 2
        joint_scores = torch.sigmoid(mirrored["joint_heatmap"].float()).flip(-1)[:, permutation]
        joint_scores = (torch.sigmoid(outputs["joint_heatmap"].float()) + joint_scores) / 2
        batch, channels, height, width = outputs["joint_vector"].shape
        vectors = mirrored["joint_vector"].float().flip(-1).reshape(batch, -1, 2, height, width)[:, permutation]
        vectors = torch.stack([1 - vectors[:, :, 0], vectors[:, :, 1]], dim=2).reshape(batch, channels, height, width)
        joint_vector = (outputs["joint_vector"].float() + vectors) / 2
        return [
            centernet_pose_decode_scores(
                scores, size, outputs["offset"], joint_vector, joint_scores, outputs["joint_offset"],
                self.max_detections, self.joint_threshold, self.snap_distance,
            )  # fmt: skip
        ]

    def merge(self, sets: Sequence[Detections]) -> Detections:
        """:meth:`CenterNet.merge` with every detection's keypoints kept along with it."""
        boxes, scores, labels, keypoints = (torch.cat(parts, dim=1) for parts in zip(*sets))
        if len(sets) > 1:
            selected, scores, found = soft_nms_selection(
                boxes, scores, labels, self.soft_nms_sigma, self.soft_nms_method, self.soft_nms_iou_threshold,
                max_dets=self.max_detections,
            )  # fmt: skip
            boxes, labels, keypoints = (
                torch.where(found.reshape(*found.shape, *(1,) * (value.dim() - 2)), take(value, selected), 0)
                for value in (boxes, labels, keypoints)
            )
        if self.nms is not None:
            scores, order = hard_nms_order(boxes, scores, labels, self.nms_iou, class_wise=self.nms == "class")
            boxes, labels, keypoints = (take(value, order) for value in (boxes, labels, keypoints))
        return boxes, scores, labels, keypoints

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "keypoints": self.keypoints.config(),
            "joint_threshold": self.joint_threshold,
            "snap_distance": self.snap_distance,
        }
