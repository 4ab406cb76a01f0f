"""CenterNet pose end to end with an oracle, and the OKS evaluation against its formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_coco
from oracles import centernet_pose_oracle
from pose_data import KEYPOINTS, figure, write_keypoint_dataset

from keypointdet.boxes import BoxMapping
from keypointdet.data.annotations import load_coco
from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetPoseEncoder
from keypointdet.data.transforms import Letterbox
from keypointdet.detectors import CenterNetPose
from keypointdet.metrics import CocoMeanAveragePrecision, coco_results, evaluate_keypoints
from keypointdet.models.backbones.resnet import ResNet

OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def pose_detector() -> CenterNetPose:
    return CenterNetPose(ResNet(18, neck_channels=(16, 16, 16)), 1, keypoints=KEYPOINTS)


def test_perfect_predictions_give_keypoint_ap_1(tmp_path: Path) -> None:
    ann_file = write_keypoint_dataset(tmp_path / "val.json", tmp_path / "images", num_images=6, seed=3)
    dataset = CocoDetection(ann_file, tmp_path / "images", Letterbox(128, 32), CenterNetPoseEncoder(1), num_joints=5)
    model = pose_detector()
    metric = CocoMeanAveragePrecision(dataset.coco, model.category_ids, sigmas=KEYPOINTS["sigmas"])
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["joint_mask"].sum() == sum(ann["num_keypoints"] for ann in dataset.coco.anns.values())
    boxes, scores, labels, keypoints = model.decode(centernet_pose_oracle(batch))
    mapping = BoxMapping.from_batch(batch)
    points = mapping.points_to_original(keypoints[..., :2] * model.stride)
    keypoints = torch.cat([points, keypoints[..., 2:]], -1)
    metric.update(batch["image_id"], mapping.to_original(boxes * model.stride), scores, labels, keypoints)
    metrics = metric.compute()
    assert metrics["kp_mAP"] == pytest.approx(1.0) and metrics["kp_mAR"] == pytest.approx(1.0)
    assert metrics["mAP"] == pytest.approx(1.0)
    assert all(len(result["keypoints"]) == 15 for result in metric.results)


def naive_oks(detected: np.ndarray, truth: np.ndarray, area: float, sigmas: np.ndarray) -> float:
    """COCO's object keypoint similarity: mean over the labelled joints of exp(-d^2 / (2 area (2 sigma)^2))."""
    labelled = truth[:, 2] > 0
    distance2 = ((detected[:, :2] - truth[:, :2]) ** 2).sum(axis=1)
    return float(np.exp(-distance2 / (2 * area * (2 * sigmas) ** 2))[labelled].mean())


@pytest.mark.parametrize("seed", range(4))
def test_keypoint_ap_of_one_detection_follows_the_oks_formula_with_the_given_sigmas(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    box, keypoints = figure(rng, 10.0, 20.0, 5)
    image = {"id": 1, "file_name": "a.png", "width": 64, "height": 64}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "keypoints": keypoints, "num_keypoints": 5}
    categories = [{"id": 1, "name": "figure", "keypoints": KEYPOINTS["names"]}]
    ground_truth = load_coco(write_coco(tmp_path / "val.json", [image], [ann], categories), num_joints=5)
    area = ground_truth.anns[1]["area"]
    sigmas = rng.uniform(0.03, 0.12, size=5)
    truth = np.array(keypoints, dtype=np.float64).reshape(5, 3)
    # shifted by about each joint's tolerance, so that the OKS lands among the thresholds
    shift = rng.normal(0, 1, size=(5, 2)) * np.sqrt(area) * sigmas[:, None] * rng.uniform(0.5, 1.5)
    detected = np.concatenate([truth[:, :2] + shift, np.ones((5, 1))], axis=1)
    oks = naive_oks(detected, truth, area, sigmas)
    assert np.abs(OKS_THRESHOLDS - oks).min() > 1e-6
    matched = (OKS_THRESHOLDS <= oks).astype(float)  # one object, one detection: AP 1 where they match, else 0
    xyxy = torch.tensor([[box[0], box[1], box[0] + box[2], box[1] + box[3]]])
    results = coco_results(1, xyxy, torch.tensor([0.9]), torch.tensor([0]), [1], torch.as_tensor(detected[None]))
    detections = {1: results}
    metrics = evaluate_keypoints(ground_truth, detections, sigmas.tolist())
    assert metrics["kp_mAP"] == pytest.approx(matched.mean())
    assert metrics["kp_mAP50"] == pytest.approx(matched[0]) and metrics["kp_mAP75"] == pytest.approx(matched[5])
