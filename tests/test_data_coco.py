"""COCO 2017 layout and explicit paths, category ids both ways, crowd regions, negatives, and both detectors
training with ``data=coco`` on a tiny real-layout dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_coco, write_image

from keypointdet.data.coco import CocoDetection
from keypointdet.data.datamodule import DetectionDataModule
from keypointdet.data.encode import CenterNetEncoder
from keypointdet.data.transforms import Letterbox
from keypointdet.runs.train import train

CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}]  # unsorted, sparse


def split(image_ids: range, seed: int) -> tuple[list[dict], list[dict]]:
    """Images of odd sizes with 0-3 objects each (the last image has none), one crowd box per split."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in image_ids:
        height, width = (int(v) for v in rng.integers(40, 90, size=2))
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        count = 0 if image_id == image_ids[-1] else int(rng.integers(1, 4))
        for k in range(count):
            x, y = rng.uniform(0, [width - 20, height - 20])
            w, h = rng.uniform(8, 20, size=2)
            category = CATEGORIES[int(rng.integers(3))]["id"]
            annotations.append(
                {"id": 100 * image_id + k, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": int(image_id == image_ids[0] and k == 0)}
            )  # fmt: skip
    return images, annotations


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco2017")
    for name, ids, seed in (("train2017", range(1, 9), 0), ("val2017", range(20, 25), 1)):
        images, annotations = split(ids, seed)
        write_coco(root / "annotations" / f"instances_{name}.json", images, annotations, CATEGORIES)
        for image in images:
            write_image(root / name / image["file_name"], image["height"], image["width"], seed=image["id"])
    return root


def test_layout_and_explicit_paths(coco_root: Path, tmp_path: Path) -> None:
    datamodule = DetectionDataModule(root=str(coco_root))
    assert datamodule.train_ann == coco_root / "annotations" / "instances_train2017.json"
    assert datamodule.val_img_dir == coco_root / "val2017"
    other = tmp_path / "mine.json"
    override = DetectionDataModule(root=str(coco_root), val_ann=str(other), train_img_dir=str(tmp_path))
    assert (override.val_ann, override.train_img_dir) == (other, tmp_path)
    assert override.train_ann == datamodule.train_ann
    with pytest.raises(ValueError, match="data.train_ann is not set"):
        DetectionDataModule(train_img_dir="x", val_ann="y", val_img_dir="z")


def test_category_ids_map_to_contiguous_labels_and_back(coco_root: Path) -> None:
    datamodule = DetectionDataModule(root=str(coco_root), input_size=64, num_workers=0)
    assert [c["id"] for c in datamodule.categories()] == [3, 17, 90]
    datamodule.configure_targets(CenterNetEncoder(num_classes=3), stride=4, size_divisor=32)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    assert dataset.category_ids == [3, 17, 90] and dataset.class_names == ["car", "cat", "zebra"]
    for image_id in dataset.image_ids:
        _, labels, _ = dataset.annotations(image_id)
        anns = [a for a in dataset.coco.imgToAnns[image_id] if not a["iscrowd"]]
        assert [dataset.category_ids[label] for label in labels] == [a["category_id"] for a in anns]


def test_crowd_boxes_are_never_positives_and_empty_images_stay(coco_root: Path) -> None:
    datamodule = DetectionDataModule(root=str(coco_root), input_size=64, num_workers=0)
    datamodule.configure_targets(CenterNetEncoder(num_classes=3), stride=4, size_divisor=32)
    datamodule.setup("fit")
    assert (len(datamodule.train_dataset), len(datamodule.val_dataset)) == (8, 5)  # images without objects too
    dataset = CocoDetection(
        datamodule.train_ann, datamodule.train_img_dir, Letterbox(64, 32), CenterNetEncoder(num_classes=3)
    )
    crowd_image = dataset.image_ids[0]
    anns = dataset.coco.imgToAnns[crowd_image]
    assert sum(a["iscrowd"] for a in anns) == 1
    sample = dataset[0]
    # exactly the non-crowd objects are encoded: their sizes, in output pixels, in file order
    scale = sample["scale"].numpy()
    expected = [np.array(a["bbox"][2:]) * scale / 4 for a in anns if not a["iscrowd"]]
    encoded = sample["size"][sample["mask"]].numpy()
    np.testing.assert_allclose(encoded, np.array(expected).reshape(-1, 2), rtol=1e-5)
    empty = dataset[len(dataset) - 1]
    assert not empty["mask"].any() and empty["heatmap"].max() == 0


@pytest.mark.parametrize("model", ["centernet", "cornernet"])
def test_both_detectors_train_on_the_coco_layout(compose_train, coco_root: Path, model: str) -> None:
    cfg = compose_train(
        f"model={model}", "data=coco", f"data.root={coco_root}", "data.input_size=128", "trainer.fast_dev_run=true",
        "evaluate_best=false",
    )  # fmt: skip
    metrics = train(cfg)
    assert {"val/mAP", "val/AP/car", "val/AP/cat", "val/AP/zebra"} <= set(metrics)
