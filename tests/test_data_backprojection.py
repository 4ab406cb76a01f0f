"""Exact back-projection: ground truth of images of odd sizes and aspect ratios, encoded through the evaluation
pipeline (letterbox + each detector's encoder at stride 4), decoded as perfect predictions and mapped back to
original pixels, returns the original boxes within 1 pixel (COCO AP 1.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_coco, write_image
from oracles import centernet_oracle, cornernet_oracle, decoded_results

from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetEncoder, CornerNetEncoder
from keypointdet.data.transforms import Letterbox
from keypointdet.detectors import CenterNet, CornerNet
from keypointdet.metrics import evaluate_detections
from keypointdet.models.backbones.resnet import ResNet

# (height, width, objects): very wide, very tall, square and odd, one off square, a 2:1 with odd sides
SIZES = [(37, 211, 2), (301, 17, 1), (129, 129, 4), (65, 64, 2), (97, 203, 4)]


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One object per cell of a grid over each image, a random box filling 40-90% of its cell, random classes."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(3)
    images, annotations = [], []
    for image_id, (height, width, count) in enumerate(SIZES, 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
        write_image(root / f"{image_id}.png", height, width, seed=image_id)
        columns = 2 if count == 4 else count if width > height else 1
        rows = count // columns
        cell_w, cell_h = width / columns, height / rows
        for k in range(count):
            w, h = rng.uniform(0.4, 0.9, size=2) * (cell_w, cell_h)
            x = (k % columns) * cell_w + rng.uniform(0, cell_w - w)
            y = (k // columns) * cell_h + rng.uniform(0, cell_h - h)
            annotations.append(
                {"id": 10 * image_id + k, "image_id": image_id, "category_id": int(rng.choice([4, 8])),
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": 4, "name": "a"}, {"id": 8, "name": "b"}]
    write_coco(root / "val.json", images, annotations, categories)
    return root


@pytest.mark.parametrize("detector", ["centernet", "cornernet"])
def test_perfect_predictions_map_back_to_the_original_boxes(odd_dataset: Path, detector: str) -> None:
    dataset = CocoDetection(odd_dataset / "val.json", odd_dataset, Letterbox(128, 32), stride=4)
    backbone = ResNet(18, neck_channels=(16, 16, 16))
    if detector == "centernet":
        dataset.encoder = CenterNetEncoder(num_classes=2)
        model, oracle = CenterNet(backbone, 2, category_ids=dataset.category_ids), centernet_oracle
    else:
        dataset.encoder = CornerNetEncoder(num_classes=2)
        model, oracle = CornerNet(backbone, 2, pool_channels=8, category_ids=dataset.category_ids), cornernet_oracle
    detections = {}
    for index, image_id in enumerate(dataset.image_ids):
        batch = collate([dataset[index]])  # one image per batch: the letterboxed sizes differ
        assert batch["image"].shape[-1] % 32 == 0 and batch["image"].shape[-2] % 32 == 0
        results = decoded_results(model, oracle(batch), batch)[0]
        detections[image_id] = results
        truth = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[image_id]))
        confident = sorted((d for d in results if d["score"] > 0.5), key=lambda d: d["bbox"])
        assert len(confident) == len(truth)
        for found, expected in zip(confident, sorted(truth, key=lambda a: a["bbox"])):
            np.testing.assert_allclose(found["bbox"], expected["bbox"], atol=1.0)
            assert found["category_id"] == expected["category_id"]
    metrics = evaluate_detections(dataset.coco, detections)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAR100"] == pytest.approx(1.0)
