"""What both detectors share: a backbone with one head per stack, stack-averaged losses, the TTA hooks.

A detector is a plain :class:`torch.nn.Module` (torchvision style): ``forward(images)`` returns the raw
head outputs of every stack, :meth:`KeypointDetector.loss` turns them and the DataModule's targets into
weighted loss terms, and :meth:`KeypointDetector.decode` turns the last stack's outputs into boxes in
output-map pixels. Mapping boxes to original pixels and test-time augmentation live in
:mod:`keypointdet.boxes` and :mod:`keypointdet.tta`; training in :mod:`keypointdet.module`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from keypointdet.data.encode import TargetEncoder
from keypointdet.decode import soft_nms

Outputs = dict[str, Tensor]
# boxes [B, K, 4] xyxy, scores [B, K], labels [B, K] (a pose detector's: then keypoints [B, K, J, 3] x, y, score)
Detections = tuple[Tensor, ...]

# Backbones are built from configs that checkpoints carry: only this package's classes may be named.
BACKBONE_PACKAGE = "keypointdet.models."


def build_backbone(config: Mapping[str, Any]) -> nn.Module:
    """A backbone instantiated from its Hydra config (a mapping with a ``_target_`` in ``keypointdet.models``)."""
    target = config.get("_target_")
    if not isinstance(target, str) or not target.startswith(BACKBONE_PACKAGE):
        raise ValueError(f"a backbone config needs a _target_ inside {BACKBONE_PACKAGE}*, got {target!r}")
    return instantiate(dict(config), _convert_="object")


def plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A (possibly Hydra) mapping as plain, resolved Python containers: what checkpoints may hold."""
    return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)


def concatenate(sets: Sequence[Detections]) -> Detections:
    """Candidate sets of the same images ``(boxes [B, K_i, 4], scores [B, K_i], labels [B, K_i])`` as one set."""
    boxes, scores, labels = (torch.cat(parts, dim=1) for parts in zip(*sets))
    return boxes, scores, labels


@dataclass(frozen=True)
class FocalLossSettings:
    """The heatmap focal loss's exponents (``model.loss.alpha``, ``model.loss.beta``), shared by every detector."""

    alpha: float = 2.0
    beta: float = 4.0


class KeypointDetector(nn.Module):
    """A backbone returning one feature map per stack and one head per stack (built by subclasses).

    Subclasses set ``self.heads``, ``self.encoder`` (the DataModule's target encoder) and implement
    :meth:`stack_loss`, :meth:`candidates`, :meth:`flip_candidates` and :meth:`settings`.

    Args:
        backbone: the backbone's Hydra config (kept, so that checkpoints rebuild the detector), or a module
            with the attributes ``out_channels``, ``num_stacks``, ``stride``, ``size_divisor``.
        num_classes: number of classes.
        category_ids: dataset category id of each label (default ``1..num_classes``).
        class_names: name of each label (default: the category ids).
        max_detections: detections per image of :meth:`decode` and of a test-time-augmented merge.
        soft_nms_sigma, soft_nms_method, soft_nms_iou_threshold: the soft-NMS that merges candidate sets (the
            threshold is the linear method's; the gaussian one decays every overlap).
    """

    name: str  # the key of this class in keypointdet.detectors.DETECTORS
    # whether its detections end with keypoints [B, K, J, 3] (a pose detector)
    predicts_keypoints = False

    def __init__(  # the first four arguments are every detector's; subclasses set the last four
        self, backbone: nn.Module | Mapping[str, Any], num_classes: int, category_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None, max_detections: int = 100, soft_nms_sigma: float = 0.5,
        soft_nms_method: str = "gaussian", soft_nms_iou_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone_config = None if isinstance(backbone, nn.Module) else plain(backbone)
        self.backbone = backbone if isinstance(backbone, nn.Module) else build_backbone(backbone)
        self.num_classes = num_classes
        self.category_ids = [int(i) for i in category_ids] if category_ids is not None else list(range(1, num_classes + 1))
        self.class_names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in self.category_ids]
        if len(self.category_ids) != num_classes or len(self.class_names) != num_classes:
            raise ValueError(f"{num_classes} classes need as many category_ids and class_names")
        self.max_detections = max_detections
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_method = soft_nms_method
        self.soft_nms_iou_threshold = soft_nms_iou_threshold
        self.stride: int = self.backbone.stride
        self.size_divisor: int = self.backbone.size_divisor
        self.encoder: TargetEncoder

    # --- per detector ------------------------------------------------------------------------------
    def stack_loss(self, outputs: Outputs, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted loss terms of one stack's raw outputs; ``"loss"`` is their sum."""
        raise NotImplementedError

    def candidates(self, outputs: Outputs) -> Detections:
        """One view's detections before they are merged (:meth:`merge`), in output pixels."""
        raise NotImplementedError

    def flip_candidates(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """Candidate sets (output pixels of ``outputs``) of a batch and of its horizontal mirror."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that are not common to every detector (for :meth:`config`)."""
        raise NotImplementedError

    def class_layers(self) -> list[str]:
        """Names of the convolutions with one output channel per class (the heatmaps' last layers)."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> list[Outputs]:
        """``images [B, 3, H, W]`` -> the raw head outputs of every stack (the last one is used at inference)."""
        return [head(features) for head, features in zip(self.heads, self.backbone(images))]

    def loss(self, outputs: Sequence[Outputs], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms averaged over the stacks (intermediate supervision, as in the official code)."""
        stacks = [self.stack_loss(stack_outputs, targets) for stack_outputs in outputs]
        return {name: torch.stack([stack[name] for stack in stacks]).mean() for name in stacks[0]}

    def merge(self, sets: Sequence[Detections]) -> Detections:
        """Candidate sets of the same images (same pixels) -> the best ``max_detections`` after soft-NMS."""
        return soft_nms(
            *concatenate(sets),
            sigma=self.soft_nms_sigma,
            method=self.soft_nms_method,
            iou_threshold=self.soft_nms_iou_threshold,
            max_dets=self.max_detections,
        )

    def decode(self, outputs: Outputs) -> Detections:
        """``boxes [B, K, 4]`` xyxy in output pixels, ``scores [B, K]`` (0 for padding), ``labels [B, K]``."""
        return self.merge([self.candidates(outputs)])

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this detector, as plain values (stored in checkpoints)."""
        if self.backbone_config is None:
            raise ValueError("a detector built around a backbone module has no config: give the backbone's config")
        return {
            "name": self.name,
            "backbone": self.backbone_config,
            "num_classes": self.num_classes,
            "category_ids": self.category_ids,
            "class_names": self.class_names,
            **self.settings(),
        }
