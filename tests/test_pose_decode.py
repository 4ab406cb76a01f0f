"""Pose decoding against a loop over detections and joints, and flip test-time augmentation of an image and its
mirror (left and right joints swapped through the flip pairs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import centernet_pose_oracle
from pose_data import KEYPOINTS
from test_decode_maths import distinct_map, naive_peak_nms, naive_topk

from keypointdet.data.encode import encode_centernet_pose
from keypointdet.decode import centernet_pose_decode
from keypointdet.detectors import CenterNetPose
from keypointdet.models.backbones.resnet import ResNet


def naive_pose_decode(heatmap, size, offset, joint_vector, joint_heatmap, joint_offset, k, threshold, snap):
    """Per image, per detection: its box, ``[J, 3]`` joints (x, y, score) by the official rule, in loops, and how
    many of them were snapped."""
    batch, num_joints, height, width = joint_heatmap.shape
    joint_scores = torch.sigmoid(joint_heatmap)
    results = []
    for b, peaks in enumerate(naive_topk(naive_peak_nms(torch.sigmoid(heatmap), 3), k)):
        candidates = []
        for j in range(num_joints):
            joint_peaks = naive_topk(naive_peak_nms(joint_scores[b : b + 1, j : j + 1], 3), k)[0]
            candidates.append([
                (x + float(joint_offset[b, 0, y, x]), y + float(joint_offset[b, 1, y, x]))
                for score, _, y, x in joint_peaks if score > threshold
            ])  # fmt: skip
        image = []
        for _, _, y, x in peaks:
            w, h = float(size[b, 0, y, x]), float(size[b, 1, y, x])
            cx, cy = x + float(offset[b, 0, y, x]), y + float(offset[b, 1, y, x])
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            joints, snapped = [], 0
            for j in range(num_joints):
                regressed = (x + float(joint_vector[b, 2 * j, y, x]), y + float(joint_vector[b, 2 * j + 1, y, x]))
                point = regressed
                if candidates[j]:
                    nearest = min(candidates[j], key=lambda c: math.dist(c, regressed))
                    inside = box[0] <= nearest[0] <= box[2] and box[1] <= nearest[1] <= box[3]
                    if inside and math.dist(nearest, regressed) <= snap * max(w, h):
                        point, snapped = nearest, snapped + 1
                cell_x = min(max(math.floor(point[0]), 0), width - 1)
                cell_y = min(max(math.floor(point[1]), 0), height - 1)
                joints.append((*point, float(joint_scores[b, j, cell_y, cell_x])))
            image.append((box, joints, snapped))
        results.append(image)
    return results


@pytest.mark.parametrize("seed", range(3))
def test_pose_decode_matches_a_loop_over_detections_and_joints(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batch, joints, height, width, k = 2, 3, 10, 12, 6
    heatmap = distinct_map(seed, (batch, 1, height, width))
    joint_heatmap = distinct_map(seed + 10, (batch, joints, height, width))
    size = 2 + 6 * torch.rand(batch, 2, height, width, generator=g)
    offset = torch.rand(batch, 2, height, width, generator=g)
    joint_offset = torch.rand(batch, 2, height, width, generator=g)
    joint_vector = 6 * torch.rand(batch, 2 * joints, height, width, generator=g) - 3
    maps = (heatmap, size, offset, joint_vector, joint_heatmap, joint_offset)
    boxes, scores, _, keypoints = centernet_pose_decode(*maps, k=k, joint_threshold=0.3, snap_distance=0.3)
    expected = naive_pose_decode(*maps, k=k, threshold=0.3, snap=0.3)
    assert keypoints.shape == (batch, k, joints, 3)
    for b in range(batch):
        for i, (box, naive_joints, _) in enumerate(expected[b]):
            np.testing.assert_allclose(boxes[b, i].numpy(), box, atol=1e-5)
            np.testing.assert_allclose(keypoints[b, i].numpy(), naive_joints, atol=1e-5)
    snapped = sum(count for image in expected for _, _, count in image)
    assert 0 < snapped < batch * k * joints  # both rules exercised


def two_figures(rng: np.random.Generator, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two boxes in the left and right halves of a 16-row map (centres off the cell borders, where a mirror maps
    cells exactly) and five visible joints in distinct cells of each (output pixels)."""
    boxes = np.array([[1.3, 1.6, 8.9, 13.2], [width / 2 + 1.4, 2.5, width - 1.6, 14.1]])
    keypoints = np.zeros((2, 5, 3))
    for m, (x1, y1, x2, y2) in enumerate(boxes):
        cells = rng.choice(int(x2 - x1 - 1) * int(y2 - y1 - 1), size=5, replace=False)
        columns, rows = cells % int(x2 - x1 - 1), cells // int(x2 - x1 - 1)
        keypoints[m, :, 0] = np.floor(x1) + 1 + columns + rng.uniform(0.1, 0.9, size=5)
        keypoints[m, :, 1] = np.floor(y1) + 1 + rows + rng.uniform(0.1, 0.9, size=5)
        keypoints[m, :, 2] = 2
    return boxes, keypoints


def oracle_of(boxes: np.ndarray, keypoints: np.ndarray, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    targets = encode_centernet_pose(boxes, np.zeros(len(boxes), dtype=np.int64), keypoints, 1, size)
    return centernet_pose_oracle({name: value[None] for name, value in targets.items()})


@pytest.mark.parametrize("snap_distance", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(2))
def test_flip_tta_of_an_image_and_its_mirror_swaps_joints_back(seed: int, snap_distance: float) -> None:
    size = (16, 24)
    boxes, keypoints = two_figures(np.random.default_rng(seed), size[1])
    mirrored_boxes = np.stack([size[1] - boxes[:, 2], boxes[:, 1], size[1] - boxes[:, 0], boxes[:, 3]], axis=1)
    # joint j of the mirror is the mirror of its partner (flip pairs [1, 2], [3, 4])
    mirrored_keypoints = keypoints[:, [0, 2, 1, 4, 3]].copy()
    mirrored_keypoints[..., 0] = size[1] - mirrored_keypoints[..., 0]
    backbone = ResNet(18, neck_channels=(8, 8, 8))
    detector = CenterNetPose(backbone, 1, keypoints=KEYPOINTS, k=2, snap_distance=snap_distance)
    outputs = oracle_of(boxes, keypoints, size)
    _, scores, _, merged = detector.flip_candidates(outputs, oracle_of(mirrored_boxes, mirrored_keypoints, size))[0]
    _, _, _, single = detector.candidates(outputs)
    order = merged[0, :, 0, 0].argsort()  # left figure first
    np.testing.assert_allclose(merged[0, order, :, :2].numpy(), keypoints[..., :2], atol=1e-4)
    np.testing.assert_allclose(merged.numpy(), single.numpy(), atol=1e-4)
    assert (merged[..., 2] > 0.99).all() and (scores > 0.99).all()


@pytest.mark.parametrize("nms", [None, "class"])
def test_merging_views_keeps_every_detection_with_its_keypoints(nms: str | None) -> None:
    g = torch.Generator().manual_seed(0)
    detector = CenterNetPose(ResNet(18, neck_channels=(8, 8, 8)), 1, keypoints=KEYPOINTS, k=6, nms=nms)
    corners = 40 * torch.rand(1, 6, 2, generator=g)
    boxes = torch.cat([corners, corners + 5 + 10 * torch.rand(1, 6, 2, generator=g)], dim=-1)
    # a second view: the same objects, slightly moved and less confident
    scores, labels = torch.rand(1, 6, generator=g), torch.zeros(1, 6, dtype=torch.int64)
    views = [(boxes, scores, labels, torch.rand(1, 6, 5, 3, generator=g))]
    views.append((boxes + 0.5, scores * 0.9, labels, torch.rand(1, 6, 5, 3, generator=g)))
    merged_boxes, merged_scores, _, merged_keypoints = detector.merge(views)
    candidates = [(box, points) for view in views for box, points in zip(view[0][0], view[3][0])]
    kept = merged_scores[0] > 0
    assert kept.sum() == 6 if nms is None else kept.sum() >= 1
    for box, points in zip(merged_boxes[0][kept], merged_keypoints[0][kept]):
        (source,) = [candidate for candidate_box, candidate in candidates if torch.equal(candidate_box, box)]
        assert torch.equal(points, source)
