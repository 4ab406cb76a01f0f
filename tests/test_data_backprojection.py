"""Exact back-projection: ground truth of images of odd sizes and aspect ratios, encoded through the evaluation
pipeline (letterbox or native resolution + each detector's encoder at stride 4), decoded as perfect predictions and mapped back to
original pixels, returns the original boxes within 1 pixel (COCO AP 1.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_coco, write_image
from oracles import centernet_oracle, cornernet_oracle, decoded_results

from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetEncoder, CornerNetEncoder
from keypointdet.data.transforms import Letterbox, NativeResolution, native_canvas_side
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


@pytest.mark.parametrize("protocol", ["letterbox", "native"])
@pytest.mark.parametrize("detector", ["centernet", "cornernet"])
def test_perfect_predictions_map_back_to_the_original_boxes(odd_dataset: Path, detector: str, protocol: str) -> None:
    transform = Letterbox(128, 32) if protocol == "letterbox" else NativeResolution(32)
    dataset = CocoDetection(odd_dataset / "val.json", odd_dataset, transform, stride=4)
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


@pytest.mark.parametrize(("multiple", "minus_one"), [(32, False), (128, False), (128, True)])
def test_native_resolution_keeps_each_image_centred_in_the_official_canvas(
    odd_dataset: Path, multiple: int, minus_one: bool
) -> None:
    dataset = CocoDetection(odd_dataset / "val.json", odd_dataset, NativeResolution(multiple, minus_one), stride=4)
    plain = CocoDetection(odd_dataset / "val.json", odd_dataset, NativeResolution(1), stride=4)
    for index, (height, width, _) in enumerate(SIZES):
        sample = dataset[index]
        # official: CenterNet (side | (m - 1)) + 1, CornerNet side | 127; the image centred as get_affine_transform
        expected = [(side | (multiple - 1)) + (0 if minus_one else 1) for side in (height, width)]
        assert list(sample["image"].shape[-2:]) == expected
        assert native_canvas_side(height, multiple, minus_one) == expected[0]
        top, left = expected[0] // 2 - height // 2, expected[1] // 2 - width // 2
        assert sample["shift"].tolist() == [left, top] and sample["scale"].tolist() == [1.0, 1.0]
        image = plain[index]["image"]  # canvas = side + 1 with multiple 1: the image at offset (0, 0) or 1 pixel in
        plain_top, plain_left = (height + 1) // 2 - height // 2, (width + 1) // 2 - width // 2
        original = image[:, plain_top : plain_top + height, plain_left : plain_left + width]
        assert torch.equal(sample["image"][:, top : top + height, left : left + width], original)
        assert sample["image"].abs().sum() == pytest.approx(original.abs().sum())  # zeros elsewhere
