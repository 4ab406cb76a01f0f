"""The whole data path checked by an oracle: encode ground truth through the real dataset and
transforms, feed the targets back as perfect predictions, decode, map to original pixels, evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import remap_categories
from oracles import centernet_oracle, cornernet_oracle, decoded_results

from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetEncoder, CornerNetEncoder
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.transforms import Letterbox
from keypointdet.detectors import CenterNet, CornerNet
from keypointdet.metrics import evaluate_detections
from keypointdet.models.backbones.resnet import ResNet


def same_cell_collisions(sample: dict[str, torch.Tensor]) -> int:
    """Objects whose keypoint shares an output cell with another's: one peak (or one embedding) cannot serve both."""
    mask = sample["mask"]
    if "heatmap" in sample:  # centres of one class
        return int(mask.sum() - sample["heatmap"].eq(1).sum())
    return sum(int(mask.sum()) - len(set(sample[f"{c}_index"][mask].tolist())) for c in ("tl", "br"))


DETECTORS = {
    "centernet": (CenterNetEncoder, lambda backbone, n, ids: CenterNet(backbone, n, category_ids=ids), centernet_oracle),
    "cornernet": (
        CornerNetEncoder, lambda backbone, n, ids: CornerNet(backbone, n, pool_channels=8, category_ids=ids), cornernet_oracle
    ),
}


@pytest.mark.parametrize("detector", list(DETECTORS))
@pytest.mark.parametrize("category_ids", [None, {1: 2, 2: 5, 3: 9, 4: 10, 5: 31, 6: 77}], ids=["contiguous", "sparse"])
def test_perfect_predictions_give_ap_1(tmp_path: Path, category_ids: dict[int, int] | None, detector: str) -> None:
    generate_dataset(tmp_path, num_train=1, num_val=10, seed=11)
    ann_file = tmp_path / "val.json"
    if category_ids is not None:
        ann_file = remap_categories(ann_file, tmp_path / "val_sparse.json", category_ids)
    dataset = CocoDetection(ann_file, tmp_path / "val", Letterbox(256, 32), stride=4)
    num_classes = len(dataset.category_ids)
    encoder, build, oracle = DETECTORS[detector]
    dataset.encoder = encoder(num_classes)
    samples = [dataset[i] for i in range(len(dataset))]
    assert sum(same_cell_collisions(sample) for sample in samples) == 0

    model = build(ResNet(18, neck_channels=(16, 16, 16)), num_classes, dataset.category_ids)
    detections = {}
    for sample in samples:  # one image per batch: the letterboxed maps differ in size
        batch = collate([sample])
        detections[int(sample["image_id"])] = decoded_results(model, oracle(batch), batch)[0]
    assert all(det["score"] > 0 for image in detections.values() for det in image)
    metrics = evaluate_detections(dataset.coco, detections)
    # CornerNet: a rare pair of one image's corners can cross another object's and cost a detection
    minimum = {"centernet": 1.0 - 1e-6, "cornernet": 0.99}[detector]
    assert metrics["mAP"] >= minimum and metrics["mAR100"] >= minimum
