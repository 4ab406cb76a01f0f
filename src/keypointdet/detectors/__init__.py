"""The detectors as plain ``nn.Module``s, and how a checkpoint's config rebuilds one.

.. code-block:: python

    detector = CenterNet(backbone={"_target_": "keypointdet.models.backbones.resnet.ResNet", "depth": 18},
                         num_classes=3)
    outputs = detector(images)                 # [{"heatmap", "size", "offset"}] per stack
    terms = detector.loss(outputs, targets)    # {"loss", "heatmap", "size", "offset"}
    boxes, scores, labels = detector.decode(outputs[-1])  # output pixels
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keypointdet.detectors.base import Detections, KeypointDetector, Outputs, build_backbone
from keypointdet.detectors.centernet import CenterNet, CenterNetLoss
from keypointdet.detectors.centernet_pose import CenterNetPose, CenterNetPoseLoss
from keypointdet.detectors.cornernet import CornerNet, CornerNetLoss

# The only classes a checkpoint may name: nothing outside this package is ever imported from one.
DETECTORS: dict[str, type[KeypointDetector]] = {cls.name: cls for cls in (CenterNet, CenterNetPose, CornerNet)}


def build_detector(config: Mapping[str, Any]) -> KeypointDetector:
    """The detector described by :meth:`KeypointDetector.config` (``name`` selects the class)."""
    settings = dict(config)
    name = settings.pop("name", None)
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
    return DETECTORS[name](**settings)


__all__ = [
    "DETECTORS",
    "CenterNet",
    "CenterNetLoss",
    "CenterNetPose",
    "CenterNetPoseLoss",
    "CornerNet",
    "CornerNetLoss",
    "Detections",
    "KeypointDetector",
    "Outputs",
    "build_backbone",
    "build_detector",
]
