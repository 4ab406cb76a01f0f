"""Test-time augmentation: detections of a batch from several scales and the mirror, in original pixels.

Every view's candidates are mapped back to the original image (:class:`keypointdet.boxes.BoxMapping`)
and the detector merges them (:meth:`KeypointDetector.merge`: soft-NMS over all views; a single
CenterNet view is kept as it is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from keypointdet.boxes import BoxMapping, round_up
from keypointdet.detectors import Detections, KeypointDetector
from keypointdet.speed import InferenceSettings


@dataclass(frozen=True)
class TestTimeAugmentation:
    """``model.tta.*`` (off by default).

    Args:
        flip: also run the horizontally mirrored image. CenterNet averages the heatmap probabilities
            and sizes of the image and its mirror (offsets from the image), CornerNet pairs the corners of
            both and suppresses them together.
        scales: input scales; every scale's detections are mapped back to the original image and merged.
    """

    __test__ = False  # not a pytest test class despite its name

    flip: bool = False
    scales: Sequence[float] = (1.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(scale) for scale in self.scales))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"model.tta.scales must be a non-empty list of positive scales, got {list(self.scales)}")


def resize_images(images: Tensor, scale: float, size_divisor: int) -> tuple[Tensor, Tensor]:
    """Resize ``images [B, 3, H, W]`` by ``scale`` (bilinear) and zero-pad bottom / right to a multiple of
    ``size_divisor``. Returns the images and the exact ``(x, y)`` resize factors ``[2]`` after rounding."""
    height, width = images.shape[-2:]
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    factors = torch.tensor([new_width / width, new_height / height], device=images.device)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    padding = (0, round_up(new_width, size_divisor) - new_width, 0, round_up(new_height, size_divisor) - new_height)
    return F.pad(images, padding), factors


@torch.no_grad()
def detect(
    detector: KeypointDetector, images: Tensor, mapping: BoxMapping, tta: TestTimeAugmentation | None = None,
    settings: InferenceSettings | None = None,
) -> Detections:  # fmt: skip
    """``boxes [B, K, 4]`` xyxy in original pixels (clipped), ``scores [B, K]`` (0 for padding), ``labels [B, K]``
    (and a pose detector's ``keypoints [B, K, J, 3]``: x, y in original pixels, clipped, and score) of the
    network-input ``images [B, 3, H, W]`` whose relation to the originals is ``mapping``; the forward passes in
    the precision and layout of ``settings`` (float32 NCHW by default; the detector :meth:`prepare`-d for them)."""
    tta, settings = tta or TestTimeAugmentation(), settings or InferenceSettings()
    sets = [
        detections for scale in tta.scales
        for detections in _detect_at_scale(detector, images, mapping, scale, tta.flip, settings)
    ]  # fmt: skip
    return detector.merge(sets)


def _detect_at_scale(
    detector: KeypointDetector, images: Tensor, mapping: BoxMapping, scale: float, flip: bool,
    settings: InferenceSettings,
) -> list[Detections]:  # fmt: skip
    """Candidates (original pixels) of ``images`` resized by ``scale``, and of their mirror with ``flip``."""
    # Padded to a multiple of the stride too, so that the output map mirrors exactly onto the input.
    resized, factors = resize_images(images, scale, math.lcm(detector.size_divisor, detector.stride))
    if flip:
        outputs = settings.forward(detector, torch.cat([resized, resized.flip(-1)]))[-1]
        halves = [{name: value.chunk(2)[half] for name, value in outputs.items()} for half in (0, 1)]
        sets = detector.flip_candidates(*halves)
    else:
        sets = [detector.candidates(settings.forward(detector, resized)[-1])]
    to_input = detector.stride / factors
    return [_to_original(detections, mapping, to_input) for detections in sets]


def _to_original(detections: Detections, mapping: BoxMapping, to_input: Tensor) -> Detections:
    """Detections in output pixels of a view whose input pixels are ``to_input [2]`` (x, y) times them -> in
    original pixels (keypoints, when there are, with their scores)."""
    boxes, scores, labels, *keypoints = detections
    mapped = (mapping.to_original(boxes * to_input.repeat(2)), scores, labels)
    for points in keypoints:
        mapped += (torch.cat([mapping.points_to_original(points[..., :2] * to_input), points[..., 2:]], dim=-1),)
    return mapped
