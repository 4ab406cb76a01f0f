"""Pose data: joint targets against a per-joint loop, keypoints through the augmentation (a flip swaps left and
right), bad keypoints named, counted, skipped or made unlabelled."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_coco
from pose_data import KEYPOINTS, write_keypoint_dataset
from test_encode import naive_corrected_radius, naive_gaussian_map

from keypointdet.data.annotations import DataWarning
from keypointdet.data.coco import CocoDetection
from keypointdet.data.encode import encode_centernet_pose
from keypointdet.data.keypoints import KeypointSet
from keypointdet.data.transforms import Letterbox, TrainTransform


def random_poses(rng: np.random.Generator, count: int, num_joints: int, size: tuple[int, int]):
    """Boxes in output pixels and joints ``[N, J, 3]`` around them: some outside the map, some unlabelled."""
    height, width = size
    corner = rng.uniform(0, [width - 6, height - 6], size=(count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(3, 8, size=(count, 2))], axis=1)
    points = boxes[:, None, :2] + rng.uniform(-3, 10, size=(count, num_joints, 2))
    visibility = rng.choice([0, 1, 2], size=(count, num_joints)).astype(np.float64)
    return boxes, np.concatenate([points, visibility[..., None]], axis=-1)


@pytest.mark.parametrize("seed", range(3))
def test_joint_targets_follow_a_per_joint_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size, max_objects, num_joints = (20, 24), 4, 3
    boxes, keypoints = random_poses(rng, 5, num_joints, size)
    targets = encode_centernet_pose(boxes, np.zeros(5, dtype=np.int64), keypoints, 1, size, max_objects)

    heatmaps = np.zeros((num_joints, *size))
    valid = np.zeros(max_objects * num_joints, dtype=bool)
    for m in range(max_objects):  # the fifth object is beyond max_objects
        x1, y1, x2, y2 = boxes[m]
        radius = max(0, int(naive_corrected_radius(math.ceil(y2 - y1), math.ceil(x2 - x1), 0.7)))
        centre = (math.floor((x1 + x2) / 2), math.floor((y1 + y2) / 2))
        for j in range(num_joints):
            x, y, visibility = keypoints[m, j]
            slot = m * num_joints + j
            if visibility == 0 or not (0 <= x < size[1] and 0 <= y < size[0]):
                assert (targets["joint_vector"][m, 2 * j : 2 * j + 2] == 0).all()
                continue
            valid[slot] = True
            cell = (math.floor(x), math.floor(y))
            heatmaps[j] = np.maximum(heatmaps[j], naive_gaussian_map(size, cell, radius))
            assert targets["joint_index"][slot] == cell[1] * size[1] + cell[0]
            np.testing.assert_allclose(targets["joint_offset"][slot], [x - cell[0], y - cell[1]], atol=1e-5)
            vector = targets["joint_vector"][m, 2 * j : 2 * j + 2]
            np.testing.assert_allclose(vector, [x - centre[0], y - centre[1]], atol=1e-5)
    assert targets["joint_mask"].numpy().tolist() == valid.tolist() and 0 < valid.sum() < valid.size
    np.testing.assert_allclose(targets["joint_heatmap"].numpy(), heatmaps, atol=1e-6)
    assert targets["num_dropped"] == 1


def test_flip_mirrors_keypoints_and_swaps_left_and_right() -> None:
    rng = np.random.default_rng(0)
    keypoint_set = KeypointSet.from_config(KEYPOINTS)
    boxes = np.array([[20.0, 30, 60, 90], [70, 10, 110, 50]])
    _, keypoints = random_poses(rng, 2, 5, (120, 120))
    keypoints[..., :2] = boxes[:, None, :2] + rng.uniform(0, 40, size=(2, 5, 2))
    image = rng.integers(0, 255, size=(120, 120, 3), dtype=np.uint8)
    outputs = {}
    for flip in (0.0, 1.0):
        permutation = keypoint_set.flip_permutation()
        transform = TrainTransform(96, scales=(1.0,), border=16, flip=flip, flip_permutation=permutation)
        transform.set_random_seed(5)  # the same crop in both
        outputs[flip] = transform(image, boxes, np.zeros(2, dtype=np.int64), keypoints)
    plain, mirrored = outputs[0.0], outputs[1.0]
    permutation = [0, 2, 1, 4, 3]
    np.testing.assert_allclose(mirrored["boxes"][:, [0, 2]], 96 - plain["boxes"][:, [2, 0]], atol=1e-4)
    np.testing.assert_allclose(mirrored["keypoints"][:, :, 0], 96 - plain["keypoints"][:, permutation, 0], atol=1e-4)
    np.testing.assert_allclose(mirrored["keypoints"][:, :, 1:], plain["keypoints"][:, permutation, 1:], atol=1e-4)
    np.testing.assert_array_equal(plain["keypoints"][..., 2], keypoints[..., 2])


def bad_keypoint_file(tmp_path: Path) -> Path:
    image = {"id": 1, "file_name": "a.png", "width": 100, "height": 80}
    good = [10, 10, 2, 20, 20, 1, 0, 0, 0, 30, 30, 2, 40, 40, 2]
    anns = [
        {"id": 1, "keypoints": good},
        {"id": 2, "keypoints": good[:12]},  # wrong count
        {"id": 3},  # no keypoints
        {"id": 4, "keypoints": [float("nan"), 10, 2, *good[3:]]},  # a non-finite labelled joint
        {"id": 5, "keypoints": [*good[:12], 101, 40, 2]},  # a labelled joint outside the image
        {"id": 6, "keypoints": [*good[:12], 40, 40, 3]},  # visibility 3
        {"id": 7, "keypoints": [*good[:6], float("nan"), 500, 0, *good[9:]]},  # unlabelled: not checked
    ]
    anns = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 50, 50], **ann} for ann in anns]
    categories = [{"id": 1, "name": "figure", "keypoints": KEYPOINTS["names"]}]
    return write_coco(tmp_path / "bad.json", [image], anns, categories)


def test_bad_keypoints_are_named_counted_and_skipped_or_unlabelled(tmp_path: Path) -> None:
    with pytest.warns(DataWarning) as caught:
        dataset = CocoDetection(bad_keypoint_file(tmp_path), tmp_path, Letterbox(64), num_joints=5)
    messages = [str(warning.message) for warning in caught]
    assert any("2 keypoint lists skipped" in m and "annotation ids 2, 3" in m for m in messages), messages
    assert any("3 labelled joints made unlabelled" in m and "annotation ids 4, 5, 6" in m for m in messages), messages
    assert dataset.problem_counts[1] == {"num_bad_keypoints": 2, "num_bad_joints": 3}
    anns = dataset.coco.anns
    assert len(anns) == 7  # every object keeps its box
    assert [anns[i]["num_keypoints"] for i in range(1, 8)] == [4, 0, 0, 3, 3, 3, 4]
    assert anns[4]["keypoints"][:3] == [0.0, 0.0, 0] and anns[5]["keypoints"][12:] == [0.0, 0.0, 0]
    assert dataset.keypoints(1).shape == (7, 5, 3)


def test_strict_raises_naming_file_and_annotation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad\.json: annotation 2 .*keypoints must be 15 numbers"):
        CocoDetection(bad_keypoint_file(tmp_path), tmp_path, Letterbox(64), strict=True, num_joints=5)


def test_a_joint_count_other_than_the_keypoint_set_is_refused(tmp_path: Path) -> None:
    ann_file = write_keypoint_dataset(tmp_path / "val.json", tmp_path / "images", num_images=1)
    data = json.loads(ann_file.read_text())
    data["categories"][0]["keypoints"] = data["categories"][0]["keypoints"][:4]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"val\.json: category 'figure' has 4 keypoints, but data.keypoints"):
        CocoDetection(ann_file, tmp_path / "images", Letterbox(64), num_joints=5)


@pytest.mark.parametrize(
    "config, message",
    [
        ({**KEYPOINTS, "sigmas": [0.1] * 4}, "5 names but 4 sigmas"),
        ({**KEYPOINTS, "flip_pairs": [[1, 2], [2, 3]]}, "flip_pairs must pair distinct joints"),
        ({**KEYPOINTS, "skeleton": [[0, 1]]}, "skeleton joints are 1-based"),
    ],
)
def test_keypoint_set_checks(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeypointSet.from_config(config)
