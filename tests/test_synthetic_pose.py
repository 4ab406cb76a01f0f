"""Tests of the embedded pose dataset (articulated figures, COCO person-keypoints format)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from unittest.mock import patch

import cv2
import numpy as np
import pytest
from conftest import check_seeded
from hydra.core.global_hydra import GlobalHydra
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keypointdet.data import synthetic_pose
from keypointdet.data.pose_scenes import PoseSceneConfig, render_pose_scene
from keypointdet.data.synthetic_pose import FLIP_PAIRS, KEYPOINT_NAMES, SIGMAS, SKELETON, generate_pose_dataset

SIZE = {"num_train": 6, "num_val": 3, "image_size": 96, "figure_height": (30.0, 80.0)}
SCENE = PoseSceneConfig(96, (1, 4), (30.0, 80.0), 3, 8.0, 0.5, 0.5, 0.5)
SCENE_SEEDS = range(60)
# pycocotools' per-joint sigmas of COCO's 17 person keypoints, by name
COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip
MARGIN = 0.75  # a pixel whose centre is this deep inside (outside) a polygon is fully (not at all) covered


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pose")
    generate_pose_dataset(root, seed=3, **SIZE)
    return root


@pytest.fixture(scope="module")
def cocos(dataset: Path) -> dict[str, COCO]:
    with contextlib.redirect_stdout(io.StringIO()):
        return {split: COCO(str(dataset / f"{split}.json")) for split in ("train", "val")}


@pytest.fixture(scope="module")
def scenes() -> list:
    return [render_pose_scene(np.random.default_rng(seed), SCENE) for seed in SCENE_SEEDS]


def test_keypoint_set() -> None:
    assert len(KEYPOINT_NAMES) == len(SIGMAS) == 13 and KEYPOINT_NAMES[0] == "head"
    for left, right in FLIP_PAIRS:
        assert KEYPOINT_NAMES[left].startswith("left_")
        assert KEYPOINT_NAMES[right] == KEYPOINT_NAMES[left].replace("left_", "right_")
    assert sorted(i for pair in FLIP_PAIRS for i in pair) == list(range(1, 13))
    # every joint on the skeleton (1-based), no limb twice
    assert {i for limb in SKELETON for i in limb} == set(range(1, 14))
    assert len({tuple(sorted(limb)) for limb in SKELETON}) == len(SKELETON)
    coco = dict(zip(COCO_NAMES, COCOeval(iouType="keypoints").params.kpt_oks_sigmas))
    for name, sigma in zip(KEYPOINT_NAMES[1:], SIGMAS[1:]):
        assert sigma == pytest.approx(coco[name])


def test_coco_format(cocos: dict[str, COCO], dataset: Path) -> None:
    for split, coco in cocos.items():
        assert len(coco.getImgIds()) == SIZE[f"num_{split}"]
        (category,) = coco.loadCats(coco.getCatIds())
        assert category == {"id": 1, "name": "figure", "supercategory": "figure",
                            "keypoints": list(KEYPOINT_NAMES), "skeleton": SKELETON}  # fmt: skip
        anns = coco.loadAnns(coco.getAnnIds())
        assert anns and len({a["id"] for a in anns}) == len(anns)
        for info in coco.dataset["images"]:
            assert info["file_name"].startswith(f"{split}_")
            image = cv2.imread(str(dataset / "images" / info["file_name"]))
            assert image.shape == (info["height"], info["width"], 3) == (96, 96, 3)
            assert 1 <= len(coco.imgToAnns[info["id"]]) <= 4
        for ann in anns:
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1 and ann["area"] > 0
            assert len(ann["keypoints"]) == 3 * 13 and all(isinstance(v, float) for v in ann["bbox"])
    assert not list(dataset.glob("*.tmp"))


def test_keypoints_boxes_and_counts(cocos: dict[str, COCO]) -> None:
    for coco in cocos.values():
        for ann in coco.dataset["annotations"]:
            info = coco.imgs[ann["image_id"]]
            keypoints = np.array(ann["keypoints"], dtype=float).reshape(13, 3)
            labelled = keypoints[:, 2] > 0
            assert set(keypoints[:, 2]) <= {0, 1, 2} and ann["num_keypoints"] == np.count_nonzero(labelled)
            assert np.count_nonzero(keypoints[:, 2] == 2) >= 3
            assert np.all(keypoints[~labelled, :2] == 0)
            x, y = keypoints[labelled, 0], keypoints[labelled, 1]
            assert np.all((x >= 0) & (x < info["width"]) & (y >= 0) & (y < info["height"]))
            bx, by, bw, bh = ann["bbox"]
            assert bx >= 0 and by >= 0 and bx + bw <= info["width"] and by + bh <= info["height"]
            assert min(bw, bh) >= 8
            assert np.all((x >= bx - 1) & (x <= bx + bw + 1) & (y >= by - 1) & (y <= by + bh + 1))


def test_ground_truth_as_detections_gives_keypoint_ap_one(cocos: dict[str, COCO]) -> None:
    coco = cocos["train"]
    detections = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
                  for a in coco.dataset["annotations"]]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(detections), iouType="keypoints")
        evaluation.params.kpt_oks_sigmas = np.array(SIGMAS)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    assert evaluation.stats[1] == pytest.approx(1.0) and evaluation.stats[2] == pytest.approx(1.0)


def _depth(point: np.ndarray, outlines: list[np.ndarray]) -> float:
    """How deep ``point`` lies inside the union of ``outlines`` (negative: its distance outside)."""
    return max(cv2.pointPolygonTest(o.astype(np.float32), tuple(map(float, point)), True) for o in outlines)


def test_visibility_flags_against_the_later_items_geometry(scenes: list) -> None:
    """v=0 outside the image (x = y = 0); otherwise v=1 exactly when a later figure or occluder covers the
    joint's pixel, decided from the item polygons wherever the pixel is clearly inside or outside them."""
    checked = {0: 0, 1: 0, 2: 0}
    for scene in scenes:
        for index, item in enumerate(scene.items):
            if item.joints is None:
                continue
            for joint, (x, y, v) in zip(item.joints, item.keypoints):
                if not np.all((joint >= 0) & (joint < SCENE.image_size)):
                    assert (x, y, v) == (0, 0, 0)
                    checked[0] += 1
                    continue
                assert (x, y) == tuple(joint)
                centre = np.floor(joint) + 0.5
                depths = [_depth(centre, later.outlines) for later in scene.items[index + 1 :]]
                if any(abs(d) <= MARGIN for d in depths):
                    continue  # the pixel straddles an edge: partly covered
                assert v == (1 if any(d > MARGIN for d in depths) else 2), (scene, index, joint, depths)
                checked[v] += 1
    assert min(checked.values()) >= 20, checked


def test_boxes_are_the_drawn_extent(scenes: list) -> None:
    """The box of a figure inside the image lies within its polygons and misses at most a pixel of them."""
    checked = 0
    for scene in scenes:
        for figure in scene.figures:
            points = np.concatenate(figure.outlines)
            low, high = points.min(axis=0), points.max(axis=0)
            if np.any(low < 0) or np.any(high > SCENE.image_size):
                continue  # truncated: the in-image extent of the polygons is not their vertices' extent
            x, y, w, h = figure.bbox
            box_low, box_high = np.array([x, y]), np.array([x + w, y + h])
            assert np.all(box_low >= np.floor(low)) and np.all(box_high <= np.ceil(high)), (figure.bbox, low, high)
            assert np.all(box_low <= low + 1) and np.all(box_high >= high - 1), (figure.bbox, low, high)
            checked += 1
    assert checked >= 50


def test_figures_face_the_viewer_and_shades_do_not_tell_the_side(scenes: list) -> None:
    """Left and right are told by the body, as under a horizontal flip that swaps their labels: every figure's
    left shoulder and hip are on the image's right; at visible wrists and ankles the two limbs differ in shade
    (behind darker, in front lighter) but the lighter is the left one about as often as the right one."""
    told_apart, left_lighter, compared = 0, 0, 0
    for scene in scenes:
        brightness = scene.image.astype(float).sum(axis=2)
        for figure in scene.figures:
            joints = figure.joints
            assert joints[1, 0] > joints[2, 0] and joints[7, 0] > joints[8, 0]
            keypoints = figure.keypoints
            for left, right in ((5, 6), (11, 12)):
                if keypoints[left, 2] == 2 and keypoints[right, 2] == 2:
                    (lx, ly), (rx, ry) = keypoints[left, :2].astype(int), keypoints[right, :2].astype(int)
                    difference = brightness[ly, lx] - brightness[ry, rx]
                    told_apart += abs(difference) > 150  # the shades differ by 0.4 x 255 per channel
                    left_lighter += difference > 0
                    compared += 1
    assert compared >= 50 and told_apart >= 0.85 * compared, (told_apart, compared)
    assert 0.3 * compared <= left_lighter <= 0.7 * compared, (left_lighter, compared)


def test_deterministic_and_seeded(dataset: Path, tmp_path: Path) -> None:
    def generate(root: Path, seed: int) -> None:
        generate_pose_dataset(root, seed=seed, **SIZE)

    check_seeded(generate, dataset, 3, tmp_path, ("images/train_000000.png", "images/val_000000.png"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m keypointdet.data.synthetic_pose out=DIR num_train=4 num_val=2``, its Hydra main run in this
    process: a summary line per split, the count of figures not drawn in the run's log."""
    arguments = [f"out={tmp_path}", "num_train=4", "num_val=2", f"hydra.run.dir={tmp_path / 'run'}"]
    GlobalHydra.instance().clear()
    with patch.object(sys, "argv", ["synthetic_pose.py", *arguments]):
        synthetic_pose.main()
    GlobalHydra.instance().clear()
    printed = capsys.readouterr().out
    assert "train.json: 4 images" in printed and "val.json: 2 images" in printed
    (log,) = (tmp_path / "run").glob("*.log")
    assert "figures could not be placed" in log.read_text()
    assert json.loads((tmp_path / "val.json").read_text())["categories"][0]["keypoints"] == list(KEYPOINT_NAMES)
    assert len(list((tmp_path / "images").glob("*.png"))) == 6


@pytest.mark.parametrize(
    "bad", [{"figures_per_image": (0, 2)}, {"figure_height": (80, 40)}, {"min_visible_joints": 14},
            {"max_covered": 1.0}, {"occluder_probability": 1.5}],  # fmt: skip
)
def test_rejects_bad_settings(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        generate_pose_dataset(tmp_path, num_train=1, num_val=1, **bad)
