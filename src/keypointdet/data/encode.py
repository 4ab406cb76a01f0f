"""Ground-truth encoding: gaussian heatmaps and the padded index / mask targets of both detectors.

Boxes given to the encoders are ``xyxy`` in output-map pixels (input pixels times
``output_size / input_size``). Targets are padded to ``max_objects`` with a bool ``mask``;
indices are ``y * W + x`` into the flattened ``[H, W]`` map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

RadiusVariant = Literal["corrected", "centernet"]


def gaussian_radius(
    height: float | np.ndarray,
    width: float | np.ndarray,
    min_overlap: float = 0.7,
    variant: RadiusVariant = "corrected",
) -> float | np.ndarray:
    """Largest corner displacement ``r`` that keeps IoU with the ``height x width`` box >= ``min_overlap``.

    The minimum over CornerNet's three cases: one corner inside and one outside the box, both
    inside, both outside. ``"corrected"`` solves each quadratic ``a r^2 + b r + c`` for its
    smaller (cases 1, 2) or positive (case 3) root. ``"centernet"`` reproduces the formula of the
    official CenterNet and the first CornerNet release, which takes ``(b + sqrt(D)) / 2`` (the
    wrong root, no division by ``2a``). Its binding case is then case 3, a factor ``4 * min_overlap``
    (2.8 at 0.7) above that case's true root, which makes its radii 3.35x (square boxes) to 3.8x
    (10:1 boxes) the corrected ones at ``min_overlap=0.7``.
    Works elementwise on arrays. Returns a float radius; callers truncate it to whole cells.
    """
    if not 0.0 < min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    height = np.asarray(height, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    m = min_overlap

    b1 = height + width
    c1 = width * height * (1 - m) / (1 + m)
    sq1 = np.sqrt(b1**2 - 4 * c1)

    b2 = 2 * (height + width)
    c2 = (1 - m) * width * height
    sq2 = np.sqrt(b2**2 - 16 * c2)

    a3 = 4 * m
    b3 = -2 * m * (height + width)
    c3 = (m - 1) * width * height
    sq3 = np.sqrt(b3**2 - 4 * a3 * c3)

    if variant == "corrected":
        r1, r2, r3 = (b1 - sq1) / 2, (b2 - sq2) / 8, (b3 + sq3) / (2 * a3)
    elif variant == "centernet":
        r1, r2, r3 = (b1 + sq1) / 2, (b2 + sq2) / 2, (b3 + sq3) / 2
    else:
        raise ValueError(f"unknown radius variant {variant!r}; use 'corrected' or 'centernet'")
    radius = np.minimum(np.minimum(r1, r2), r3)
    return float(radius) if radius.ndim == 0 else radius


def gaussian_kernel(radius: int) -> np.ndarray:
    """``[2r+1, 2r+1]`` gaussian with peak 1 and sigma = diameter / 6 (its corners stay above e^-9)."""
    sigma = (2 * radius + 1) / 6
    axis = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(axis[None, :] ** 2 + axis[:, None] ** 2) / (2 * sigma * sigma))
    return kernel


def draw_gaussian(heatmap: np.ndarray, center: tuple[int, int], radius: int) -> np.ndarray:
    """Max-merge a gaussian of ``radius`` centred at integer ``center = (x, y)`` into ``heatmap [H, W]``.

    The kernel is cropped where it crosses the border. Modifies ``heatmap`` in place and returns it.
    """
    radius = max(0, int(radius))
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return heatmap
    kernel = gaussian_kernel(radius)
    region = heatmap[y - top : y + bottom, x - left : x + right]
    patch = kernel[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(region, patch, out=region)
    return heatmap


def _cell(points: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Integer cells ``[N, 2]`` (x, y) of points in output pixels, clamped inside the map."""
    height, width = output_size
    cells = np.floor(points).astype(np.int64)
    cells[:, 0] = cells[:, 0].clip(0, width - 1)
    cells[:, 1] = cells[:, 1].clip(0, height - 1)
    return cells


def _keep_first(boxes: np.ndarray, labels: np.ndarray, max_objects: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The first ``max_objects`` boxes (input order, so the choice is deterministic) and the count dropped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if not (np.isfinite(boxes).all() and (boxes[:, 2:] > boxes[:, :2]).all()):
        raise ValueError(f"boxes must be finite xyxy with positive width and height, got {boxes.tolist()}")
    dropped = max(0, len(boxes) - max_objects)
    return boxes[:max_objects], labels[:max_objects], dropped


def _radii(boxes: np.ndarray, min_overlap: float, variant: RadiusVariant) -> np.ndarray:
    """Whole-cell gaussian radius per box ``[N]``, as the official code truncates it."""
    height = np.ceil(boxes[:, 3] - boxes[:, 1])
    width = np.ceil(boxes[:, 2] - boxes[:, 0])
    radius = np.atleast_1d(gaussian_radius(height, width, min_overlap, variant))
    return np.maximum(0, radius.astype(np.int64))


def _padded(values: np.ndarray, max_objects: int, dtype: torch.dtype) -> Tensor:
    """``values [N, ...]`` zero-padded to ``[max_objects, ...]``."""
    out = torch.zeros((max_objects, *values.shape[1:]), dtype=dtype)
    out[: len(values)] = torch.as_tensor(values, dtype=dtype)
    return out


def _heatmap(
    labels: np.ndarray, cells: np.ndarray, radii: np.ndarray, num_classes: int, output_size: tuple[int, int]
) -> Tensor:
    """``[C, H, W]`` float32 map: a gaussian of ``radii[i]`` max-merged at cell ``cells[i]`` (x, y) of ``labels[i]``."""
    heatmap = np.zeros((num_classes, *output_size), dtype=np.float32)
    for label, cell, radius in zip(labels, cells, radii):
        draw_gaussian(heatmap[label], (cell[0], cell[1]), radius)
    return torch.from_numpy(heatmap)


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")


def encode_centernet(
    boxes: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    output_size: tuple[int, int],
    max_objects: int = 128,
    min_overlap: float = 0.7,
    radius_variant: RadiusVariant = "corrected",
) -> dict[str, Tensor]:
    """CenterNet targets for one image.

    Args:
        boxes: ``[N, 4]`` xyxy in output-map pixels, positive width and height.
        labels: ``[N]`` class indices in ``0..num_classes-1``.
        output_size: ``(H, W)`` of the output map.

    Returns:
        ``heatmap [C, H, W]`` float32, ``index [M]`` int64 (``y * W + x`` of the centre cell),
        ``mask [M]`` bool, ``size [M, 2]`` (w, h), ``offset [M, 2]`` (centre minus its cell), all in
        output pixels, and ``num_dropped`` (objects beyond ``max_objects``, not encoded).
    """
    _check_labels(np.asarray(labels).reshape(-1), num_classes)
    boxes, labels, dropped = _keep_first(boxes, labels, max_objects)
    width = output_size[1]
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    cells = _cell(centers, output_size)
    heatmap = _heatmap(labels, cells, _radii(boxes, min_overlap, radius_variant), num_classes, output_size)
    return {
        "heatmap": heatmap,
        "index": _padded(cells[:, 1] * width + cells[:, 0], max_objects, torch.int64),
        "mask": _padded(np.ones(len(boxes)), max_objects, torch.bool),
        "size": _padded(boxes[:, 2:] - boxes[:, :2], max_objects, torch.float32),
        "offset": _padded(centers - cells, max_objects, torch.float32),
        "num_dropped": torch.tensor(dropped),
    }


def encode_cornernet(  # the arguments of encode_centernet, with CornerNet's min_overlap
    boxes: np.ndarray, labels: np.ndarray, num_classes: int, output_size: tuple[int, int], max_objects: int = 128,
    min_overlap: float = 0.3, radius_variant: RadiusVariant = "corrected",
) -> dict[str, Tensor]:
    """CornerNet targets for one image: the top-left corner ``(x1, y1)`` and bottom-right ``(x2, y2)``;
    the arguments as :func:`encode_centernet`.

    Returns:
        ``tl_heatmap``, ``br_heatmap`` ``[C, H, W]`` float32; ``tl_index``, ``br_index`` ``[M]`` int64
        (``y * W + x`` of each corner's cell); ``mask [M]`` bool; ``tl_offset``, ``br_offset``
        ``[M, 2]`` (corner minus its cell, output pixels); ``num_dropped`` (objects beyond
        ``max_objects``, not encoded). Both corners of an object share its radius.
    """
    _check_labels(np.asarray(labels).reshape(-1), num_classes)
    boxes, labels, dropped = _keep_first(boxes, labels, max_objects)
    width = output_size[1]
    radii = _radii(boxes, min_overlap, radius_variant)
    targets = {"mask": _padded(np.ones(len(boxes)), max_objects, torch.bool), "num_dropped": torch.tensor(dropped)}
    for corner, points in (("tl", boxes[:, :2]), ("br", boxes[:, 2:])):
        cells = _cell(points, output_size)
        targets[f"{corner}_heatmap"] = _heatmap(labels, cells, radii, num_classes, output_size)
        targets[f"{corner}_index"] = _padded(cells[:, 1] * width + cells[:, 0], max_objects, torch.int64)
        targets[f"{corner}_offset"] = _padded(points - cells, max_objects, torch.float32)
    return targets


def encode_centernet_pose(  # the arguments of encode_centernet, with the keypoints after the labels
    boxes: np.ndarray, labels: np.ndarray, keypoints: np.ndarray, num_classes: int, output_size: tuple[int, int],
    max_objects: int = 32, min_overlap: float = 0.7, radius_variant: RadiusVariant = "corrected",
) -> dict[str, Tensor]:
    """CenterNet multi-person pose targets for one image: :func:`encode_centernet`'s, and the joints' (official
    ``multi_pose``).

    Args:
        boxes, labels, output_size: as :func:`encode_centernet`.
        keypoints: ``[N, J, 3]`` (x, y, visibility) in output-map pixels; a joint is a target when it is labelled
            (visibility > 0) and inside the map.

    Returns:
        :func:`encode_centernet`'s targets and ``joint_heatmap [J, H, W]`` (a gaussian of the object's radius
        at each joint's cell), ``joint_vector [M, 2J]`` (x, y of each joint minus its object's centre cell),
        ``joint_index [M * J]`` (``y * W + x`` of joint ``j`` of object ``m`` at ``m * J + j``), ``joint_offset
        [M * J, 2]`` (joint minus its cell) and ``joint_mask [M * J]`` bool, in output pixels.
    """
    keypoints, count = np.asarray(keypoints, dtype=np.float64), len(np.reshape(labels, -1))
    if keypoints.ndim != 3 or keypoints.shape[0] != count or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints must be [N, J, 3] for the {count} objects, got {list(keypoints.shape)}")
    targets = encode_centernet(boxes, labels, num_classes, output_size, max_objects, min_overlap, radius_variant)
    boxes, _, _ = _keep_first(boxes, labels, max_objects)
    keypoints, num_joints = keypoints[: len(boxes)], keypoints.shape[1]
    height, width = output_size
    centres = _cell((boxes[:, :2] + boxes[:, 2:]) / 2, output_size)
    points = keypoints[..., :2].reshape(-1, 2)
    valid = (keypoints[..., 2].reshape(-1) > 0) & (points >= 0).all(axis=1)
    valid &= (points[:, 0] < width) & (points[:, 1] < height)
    cells = np.floor(np.where(valid[:, None], points, 0)).astype(np.int64)
    joint_heatmap = np.zeros((num_joints, height, width), dtype=np.float32)
    radii = np.repeat(_radii(boxes, min_overlap, radius_variant), num_joints)
    for slot in np.flatnonzero(valid):
        draw_gaussian(joint_heatmap[slot % num_joints], (cells[slot, 0], cells[slot, 1]), radii[slot])
    vectors = np.where(valid[:, None], points - np.repeat(centres, num_joints, axis=0), 0)
    return {
        **targets,
        "joint_heatmap": torch.from_numpy(joint_heatmap),
        "joint_vector": _padded(vectors.reshape(len(boxes), 2 * num_joints), max_objects, torch.float32),
        "joint_index": _padded(cells[:, 1] * width + cells[:, 0], max_objects * num_joints, torch.int64),
        "joint_offset": _padded(np.where(valid[:, None], points - cells, 0), max_objects * num_joints, torch.float32),
        "joint_mask": _padded(valid, max_objects * num_joints, torch.bool),
    }


@dataclass(frozen=True)
class TargetEncoder:
    """Picklable per-sample encoder handed to the datasets (one copy per data-loading worker):
    ``encoder(boxes, labels, output_size)`` with the detector's settings bound."""

    num_classes: int
    max_objects: int = 128
    min_overlap: float = 0.7
    radius_variant: RadiusVariant = "corrected"
    encode: ClassVar[Callable[..., dict[str, Tensor]]]
    # whether the dataset gives it keypoints [N, J, 3] (in output pixels) after the output size
    needs_keypoints: ClassVar[bool] = False

    def __call__(self, boxes: np.ndarray, labels: np.ndarray, output_size: tuple[int, int]) -> dict[str, Tensor]:
        return self.encode(
            boxes, labels, self.num_classes, output_size, self.max_objects, self.min_overlap, self.radius_variant
        )

    def settings(self) -> dict[str, Any]:
        """The encoder's settings besides ``num_classes`` (``model.targets``)."""
        return {"max_objects": self.max_objects, "min_overlap": self.min_overlap, "radius_variant": self.radius_variant}


@dataclass(frozen=True)
class CenterNetEncoder(TargetEncoder):
    """:func:`encode_centernet` with bound settings."""

    encode = staticmethod(encode_centernet)


@dataclass(frozen=True)
class CornerNetEncoder(TargetEncoder):
    """:func:`encode_cornernet` with bound settings (min_overlap 0.3, CornerNet's released value)."""

    min_overlap: float = 0.3
    encode = staticmethod(encode_cornernet)


@dataclass(frozen=True)
class CenterNetPoseEncoder(TargetEncoder):
    """:func:`encode_centernet_pose` with bound settings (``max_objects`` 32, as the official ``multi_pose``):
    ``encoder(boxes, labels, output_size, keypoints)``."""

    max_objects: int = 32
    needs_keypoints: ClassVar[bool] = True

    def __call__(  # type: ignore[override]
        self, boxes: np.ndarray, labels: np.ndarray, output_size: tuple[int, int], keypoints: np.ndarray
    ) -> dict[str, Tensor]:
        return encode_centernet_pose(
            boxes, labels, keypoints, self.num_classes, output_size, self.max_objects, self.min_overlap,
            self.radius_variant,
        )  # fmt: skip
