"""Articulated figures for the embedded pose dataset: the keypoint set, random poses, and the body drawn as
polygons (:mod:`keypointdet.data.pose_scenes` composes them into images).

Every figure faces the viewer, so its own left is on the image's right (+x), as COCO's "left" of a person
seen from the front; what tells left from right is the body (which shoulder and hip a limb hangs from), as
for people. Nothing is painted by side: the arm and the leg drawn behind the other are darker than the body
colour, the ones in front lighter (:func:`shade_colours`). So a horizontal flip that swaps the ``left_`` and
``right_`` labels (training augmentation, flip test) gives another figure of the same kind: the labels stay
learnable under the flip. (Figures seen from behind would have their left on the image's left, and nothing
but a face this small could tell them apart.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# joint pairs joined by a limb, 1-based as in COCO's ``skeleton``
SKELETON: list[list[int]] = [
    [1, 2], [1, 3], [2, 3], [2, 4], [4, 6], [3, 5], [5, 7], [2, 8], [3, 9], [8, 9], [8, 10], [10, 12], [9, 11],
    [11, 13],
]  # fmt: skip
# (left, right) joint indices, 0-based, swapped by a horizontal flip
FLIP_PAIRS: list[list[int]] = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
HEAD = 0  # the head's joint index
BODY, BACK, FRONT = 0, 1, 2  # shades of the parts: torso, neck and head; the limbs behind; the limbs in front

# Proportions as fractions of the nominal standing height (ankles to the top of the head), each length jittered
# per figure; widths are diameters. Roughly human, with limbs thick enough to be seen at 40 px.
_TORSO, _NECK, _HEAD_RADIUS = 0.30, 0.12, 0.075
_UPPER_ARM, _FOREARM, _THIGH, _SHIN, _FOOT = 0.18, 0.16, 0.25, 0.24, 0.07
_SHOULDER_HALF, _HIP_HALF = 0.12, 0.08
_UPPER_ARM_WIDTH, _FOREARM_WIDTH, _HAND_WIDTH = 0.07, 0.06, 0.085
_THIGH_WIDTH, _SHIN_WIDTH, _FOOT_WIDTH, _NECK_WIDTH = 0.095, 0.075, 0.055, 0.05
_LENGTH_JITTER = (0.9, 1.1)
_BUILD = (0.8, 1.25)  # scales every width: slim to stocky
# Joint angles in degrees. Arms turn from hanging along the torso (0) outwards (to 170, raised overhead)
# or a little across it; legs from straight down; elbows and knees bend either way, as seen from the front.
_LEAN, _NECK_TILT = 20.0, 20.0
_ARM_RAISE, _ELBOW_BEND = (-20.0, 170.0), 140.0
_LEG_SPREAD, _KNEE_BEND = (-15.0, 45.0), 110.0
_TURN = (0.55, 1.0)  # shoulders and hips narrow as the figure turns sideways
_SHADE = 0.4  # limbs behind: the body colour 40 % of the way to black; limbs in front: 40 % of the way to white
_ARC_POINTS = 8  # points on each rounded end of a limb



class _Side(NamedTuple):
    """A side of the body: its direction in the figure's frame (facing the viewer) and its joint indices."""

    sign: float  # +1: towards +x
    shoulder: int
    elbow: int
    wrist: int
    hip: int
    knee: int
    ankle: int


_LEFT, _RIGHT = _Side(1.0, 1, 3, 5, 7, 9, 11), _Side(-1.0, 2, 4, 6, 8, 10, 12)


@dataclass(frozen=True)
class Figure:
    """A posed figure: joints ``(J, 2)`` (x, y) in :data:`KEYPOINT_NAMES` order and its body parts in drawing
    order, each an outline ``(N, 2)`` with its shade (:data:`BODY`, :data:`BACK`, :data:`FRONT`)."""

    joints: np.ndarray
    parts: list[tuple[np.ndarray, int]]

    def moved(self, offset: np.ndarray) -> Figure:
        return Figure(self.joints + offset, [(outline + offset, shade) for outline, shade in self.parts])

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) minimum and maximum over the outlines."""
        points = np.concatenate([outline for outline, _ in self.parts])
        return points.min(axis=0), points.max(axis=0)


def _direction(degrees: float) -> np.ndarray:
    """The unit vector ``degrees`` from straight down (+y), turned towards +x."""
    angle = np.radians(degrees)
    return np.array([np.sin(angle), np.cos(angle)])


def _capsule(start: np.ndarray, end: np.ndarray, width: float) -> np.ndarray:
    """Outline of the points within ``width / 2`` of the segment ``start``-``end`` (a disc when they meet)."""
    along = np.arctan2(*(end - start)[::-1]) if np.any(end != start) else 0.0
    arc = np.linspace(-np.pi / 2, np.pi / 2, _ARC_POINTS)
    ends = [(end, along + arc), (start, along + np.pi + arc)]
    return np.concatenate([centre + width / 2 * np.stack([np.cos(a), np.sin(a)], axis=1) for centre, a in ends])


def _limbs(
    rng: np.random.Generator, joints: np.ndarray, side: _Side, lengths: dict[str, float], lean: float, width: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Place one side's elbow, wrist, knee and ankle in ``joints`` (its shoulder and hip already placed; arms
    turn with the torso's ``lean``, legs from the vertical); return the outlines of the side's arm and leg."""
    sign, shoulder, elbow, wrist, hip, knee, ankle = side  # one side's joint indices
    raised = rng.uniform(*_ARM_RAISE)
    bend = rng.choice([-1.0, 1.0]) * rng.uniform(0, _ELBOW_BEND)
    joints[elbow] = joints[shoulder] + lengths["upper_arm"] * _direction(lean + sign * raised)
    joints[wrist] = joints[elbow] + lengths["forearm"] * _direction(lean + sign * (raised + bend))
    spread = rng.uniform(*_LEG_SPREAD)
    knee_bend = rng.choice([-1.0, 1.0]) * _KNEE_BEND * rng.uniform() ** 2  # mostly nearly straight
    joints[knee] = joints[hip] + lengths["thigh"] * _direction(sign * spread)
    joints[ankle] = joints[knee] + lengths["shin"] * _direction(sign * (spread + knee_bend))
    toe = joints[ankle] + [sign * lengths["foot"], 0.0]  # feet point outwards
    arm = [
        _capsule(joints[shoulder], joints[elbow], _UPPER_ARM_WIDTH * width),
        _capsule(joints[elbow], joints[wrist], _FOREARM_WIDTH * width),
        _capsule(joints[wrist], joints[wrist], _HAND_WIDTH * width),
    ]
    leg = [
        _capsule(joints[hip], joints[knee], _THIGH_WIDTH * width),
        _capsule(joints[knee], joints[ankle], _SHIN_WIDTH * width),
        _capsule(joints[ankle], toe, _FOOT_WIDTH * width),
    ]
    return arm, leg


def _in_depth(
    rng: np.random.Generator, left: list[np.ndarray], right: list[np.ndarray]
) -> list[tuple[np.ndarray, int]]:
    """A pair of limbs in drawing order, either side in front: the parts of the one behind shaded :data:`BACK`,
    of the one in front :data:`FRONT`."""
    behind, in_front = (left, right) if rng.random() < 0.5 else (right, left)
    return [(outline, BACK) for outline in behind] + [(outline, FRONT) for outline in in_front]


def sample_figure(rng: np.random.Generator, height: float) -> Figure:
    """A figure of nominal standing ``height`` pixels in a random pose, its hip centre at the origin."""
    names = ("torso", "neck", "upper_arm", "forearm", "thigh", "shin", "foot")
    fractions = np.array([_TORSO, _NECK, _UPPER_ARM, _FOREARM, _THIGH, _SHIN, _FOOT])
    lengths = dict(zip(names, height * fractions * rng.uniform(*_LENGTH_JITTER, len(names))))
    width = height * rng.uniform(*_BUILD)
    lean = rng.uniform(-_LEAN, _LEAN)  # bending at the waist: the hips stay level
    turn = rng.uniform(*_TURN)
    up = -_direction(lean)
    across = np.array([-up[1], up[0]])  # perpendicular to the torso, towards the figure's left
    neck = lengths["torso"] * up
    joints = np.zeros((len(KEYPOINT_NAMES), 2))
    joints[HEAD] = neck - lengths["neck"] * _direction(lean + rng.uniform(-_NECK_TILT, _NECK_TILT))
    for side in (_LEFT, _RIGHT):
        joints[side.shoulder] = neck + side.sign * _SHOULDER_HALF * height * turn * across
        joints[side.hip] = [side.sign * _HIP_HALF * height * turn, 0.0]
    left_arm, left_leg = _limbs(rng, joints, _LEFT, lengths, lean, width)
    right_arm, right_leg = _limbs(rng, joints, _RIGHT, lengths, lean, width)
    shoulders_and_hips = [_LEFT.shoulder, _RIGHT.shoulder, _RIGHT.hip, _LEFT.hip]
    head_width = 2 * _HEAD_RADIUS * height * rng.uniform(*_LENGTH_JITTER)
    body = [
        (joints[shoulders_and_hips], BODY),
        (_capsule(neck, joints[HEAD], _NECK_WIDTH * width), BODY),
        (_capsule(joints[HEAD], joints[HEAD], head_width), BODY),
    ]
    return Figure(joints, [*_in_depth(rng, left_leg, right_leg), *body, *_in_depth(rng, left_arm, right_arm)])


def shade_colours(body: np.ndarray) -> np.ndarray:
    """``[3, 3]`` RGB colours of the shades :data:`BODY`, :data:`BACK` (darker), :data:`FRONT` (lighter)."""
    return np.stack([body, body * (1 - _SHADE), body + _SHADE * (255 - body)]).astype(np.float32)
