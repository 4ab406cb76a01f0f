"""Keypoint sets (``data.keypoints``) and the checks of COCO ``keypoints`` annotations.

A keypoint set names the ``J`` joints of an object, pairs its left and right joints (a horizontal flip swaps
them), gives each joint its OKS sigma (COCO keypoint evaluation) and lists the skeleton's limbs. Annotations
follow COCO: ``keypoints`` is ``[x1, y1, v1, ..., xJ, yJ, vJ]`` in original pixels, visibility ``v`` 0 (not
labelled), 1 (labelled, occluded) or 2 (labelled, visible).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

VISIBILITIES = (0, 1, 2)


@dataclass(frozen=True)
class KeypointSet:
    """The joints of a keypoint dataset.

    Attributes:
        names: ``J`` joint names, in annotation order.
        flip_pairs: ``[left, right]`` joint indices (0-based) that a horizontal flip swaps.
        sigmas: ``J`` per-joint OKS constants, COCO's convention (``kpt_oks_sigmas``: 0.026 for a nose, 0.107 for
            a hip); the OKS of a joint at distance ``d`` is ``exp(-d^2 / (2 area (2 sigma)^2))``.
        skeleton: limbs as ``[a, b]`` joint numbers, 1-based as COCO's ``categories[].skeleton`` (drawing only).
    """

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KeypointSet:
        """A keypoint set from ``data.keypoints`` (``names``, ``flip_pairs``, ``sigmas``, ``skeleton``), checked."""
        unknown = set(config) - {"names", "flip_pairs", "sigmas", "skeleton"}
        if unknown:
            raise ValueError(f"data.keypoints: unknown keys {sorted(unknown)} (names, flip_pairs, sigmas, skeleton)")
        return cls(
            names=tuple(str(name) for name in config["names"]),
            flip_pairs=tuple((int(a), int(b)) for a, b in config.get("flip_pairs") or ()),
            sigmas=tuple(float(sigma) for sigma in config["sigmas"]),
            skeleton=tuple((int(a), int(b)) for a, b in config.get("skeleton") or ()),
        )

    def __post_init__(self) -> None:
        count = len(self.names)
        if count == 0 or len(self.sigmas) != count:
            raise ValueError(f"data.keypoints: {count} names but {len(self.sigmas)} sigmas (one per joint)")
        if min(self.sigmas) <= 0:
            raise ValueError(f"data.keypoints.sigmas must be positive, got {list(self.sigmas)}")
        paired = [joint for pair in self.flip_pairs for joint in pair]
        if any(not 0 <= joint < count for joint in paired) or len(set(paired)) != len(paired):
            raise ValueError(f"data.keypoints.flip_pairs must pair distinct joints 0..{count - 1}: {self.flip_pairs}")
        if any(not 1 <= joint <= count for limb in self.skeleton for joint in limb):
            raise ValueError(f"data.keypoints.skeleton joints are 1-based (COCO), 1..{count}, got {self.skeleton}")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def flip_permutation(self) -> list[int]:
        """``permutation[j]``: the joint that joint ``j`` becomes in a mirrored image (itself when unpaired)."""
        return flip_permutation(self.num_joints, self.flip_pairs)

    def config(self) -> dict[str, Any]:
        """As plain lists (``data.keypoints``, checkpoints)."""
        return {
            "names": list(self.names),
            "flip_pairs": [list(pair) for pair in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "skeleton": [list(limb) for limb in self.skeleton],
        }


def flip_permutation(num_joints: int, flip_pairs: Sequence[Sequence[int]]) -> list[int]:
    """``permutation[j]``: the partner of joint ``j`` in ``flip_pairs`` (``j`` itself when it has none)."""
    permutation = list(range(num_joints))
    for left, right in flip_pairs:
        permutation[left], permutation[right] = right, left
    return permutation


def check_keypoints(
    ann: dict[str, Any], image: dict[str, Any], num_joints: int
) -> tuple[list[float], str | None, int, str]:
    """The cleaned ``keypoints`` of an annotation whose box is valid, and what was wrong with them.

    Returns ``(keypoints, problem, bad_joints, reason)``: ``problem`` is ``"num_bad_keypoints"`` when the list is
    missing, not numbers or not ``3 * num_joints`` long (the object keeps its box, with no labelled joint);
    ``bad_joints`` counts the labelled joints made unlabelled: non-finite coordinates, a visibility other than
    0 / 1 / 2, or a point outside the ``width x height`` image (continuous pixels, borders included). Unlabelled
    joints are written as ``0, 0, 0``.
    """
    values = ann.get("keypoints")
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3 * num_joints
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        length = len(values) if isinstance(values, (list, tuple)) else "no"
        reason = f"keypoints must be {3 * num_joints} numbers ({num_joints} joints x, y, v), got {length} values"
        return [0.0] * (3 * num_joints), "num_bad_keypoints", 0, reason
    cleaned, bad, reasons = [], 0, []
    for joint in range(num_joints):
        x, y, visibility = values[3 * joint : 3 * joint + 3]
        if visibility == 0:
            cleaned += [0.0, 0.0, 0]
            continue
        inside = math.isfinite(x) and math.isfinite(y) and 0 <= x <= image["width"] and 0 <= y <= image["height"]
        if visibility not in VISIBILITIES or not inside:
            bad += 1
            reasons.append(f"joint {joint} ({x}, {y}, v={visibility})")
            cleaned += [0.0, 0.0, 0]
            continue
        cleaned += [float(x), float(y), int(visibility)]
    reason = f"has joints outside the {image['width']}x{image['height']} image or not numbers: {', '.join(reasons)}"
    return cleaned, None, bad, reason
