"""The whole data path checked by an oracle: encode ground truth through the real dataset and
transforms, feed the targets back as perfect predictions, decode, map to original pixels, evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import remap_categories
from oracles import centernet_oracle

from keypointdet.boxes import BoxMapping
from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetEncoder
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.transforms import Letterbox
from keypointdet.detectors import CenterNet
from keypointdet.metrics import coco_results, evaluate_detections
from keypointdet.models.backbones.resnet import ResNet


def postprocess(detector, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[list[dict]]:
    """Raw outputs of a collated evaluation batch -> COCO results per image (decoded, no TTA, original pixels)."""
    boxes, scores, labels = detector.decode(outputs)
    boxes = BoxMapping.from_batch(batch).to_original(boxes * detector.stride)
    return [
        coco_results(int(image_id), boxes[i], scores[i], labels[i], detector.category_ids)
        for i, image_id in enumerate(batch["image_id"].reshape(-1).tolist())
    ]


def same_cell_collisions(sample: dict[str, torch.Tensor]) -> int:
    """Objects of one class whose centres share an output cell: only one of them can be a peak."""
    return int(sample["mask"].sum() - sample["heatmap"].eq(1).sum())


@pytest.mark.parametrize("category_ids", [None, {1: 2, 2: 5, 3: 9, 4: 10, 5: 31, 6: 77}], ids=["contiguous", "sparse"])
def test_perfect_predictions_give_ap_1(tmp_path: Path, category_ids: dict[int, int] | None) -> None:
    generate_dataset(tmp_path, num_train=1, num_val=10, seed=11)
    ann_file = tmp_path / "val.json"
    if category_ids is not None:
        ann_file = remap_categories(ann_file, tmp_path / "val_sparse.json", category_ids)
    dataset = CocoDetection(ann_file, tmp_path / "val", Letterbox(256, 32), stride=4)
    num_classes = len(dataset.category_ids)
    dataset.encoder = CenterNetEncoder(num_classes)
    samples = [dataset[i] for i in range(len(dataset))]
    assert sum(same_cell_collisions(sample) for sample in samples) == 0

    model = CenterNet(ResNet(18, neck_channels=(16, 16, 16)), num_classes, category_ids=dataset.category_ids)
    detections = {}
    for sample in samples:  # one image per batch: the letterboxed maps differ in size
        batch = collate([sample])
        detections[int(sample["image_id"])] = postprocess(model, centernet_oracle(batch), batch)[0]
    metrics = evaluate_detections(dataset.coco, detections)
    assert metrics["mAP"] == pytest.approx(1.0)
    assert metrics["mAR100"] == pytest.approx(1.0)


def test_letterbox_round_trip_of_boxes_on_odd_sizes() -> None:
    rng = np.random.default_rng(0)
    for height, width in [(37, 211), (300, 17), (129, 129), (64, 65)]:
        corners = rng.uniform(0, [width, height, width, height], size=(5, 4)).reshape(5, 2, 2)
        boxes = np.sort(corners, axis=1).reshape(5, 4)
        out = Letterbox(96, 32)(np.zeros((height, width, 3), np.uint8), boxes, np.zeros(5, np.int64))
        assert out["image"].shape[-2] % 32 == 0 and out["image"].shape[-1] % 32 == 0
        assert max(out["image"].shape[-2:]) == 96
        back = (out["boxes"] - np.tile(out["shift"], 2)) / np.tile(out["scale"], 2)
        np.testing.assert_allclose(back, boxes, atol=1e-9)
