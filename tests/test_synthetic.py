"""Tests of the embedded synthetic shapes dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import check_seeded
from pycocotools.coco import COCO

from keypointdet.data import shapes, synthetic
from keypointdet.data.synthetic import CLASSES, generate_dataset

SIZE = {"num_train": 12, "num_val": 6, "image_size": (96, 128), "max_objects": 10}


def _near(a: np.ndarray, b: np.ndarray, margin: int = 4) -> bool:
    """Whether boxes (x0, y0, x1, y1) come within ``margin`` pixels of each other."""
    return bool(a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin)


def _extent(mask: np.ndarray) -> np.ndarray:
    """Tight box (x0, y0, x1, y1), exclusive end, of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    paths = generate_dataset(out, seed=3, **SIZE)
    assert paths == {"train": out / "train.json", "val": out / "val.json"}
    return out


@pytest.fixture(scope="module")
def cocos(dataset: Path) -> dict[str, COCO]:
    return {split: COCO(str(dataset / f"{split}.json")) for split in ("train", "val")}


def test_coco_format(cocos: dict[str, COCO], dataset: Path) -> None:
    for split, coco in cocos.items():
        assert len(coco.getImgIds()) == SIZE[f"num_{split}"]
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == list(enumerate(CLASSES, 1))
        for ann in coco.dataset["annotations"]:
            assert ann["iscrowd"] == 0 and ann["area"] > 0
            assert all(isinstance(v, float) for v in ann["bbox"])
    assert not list(dataset.glob("*.tmp"))


def test_images_match_records(cocos: dict[str, COCO], dataset: Path) -> None:
    low, high = SIZE["image_size"]
    for split, coco in cocos.items():
        for info in coco.dataset["images"]:
            image = cv2.imread(str(dataset / split / info["file_name"]))
            assert image is not None and image.shape == (info["height"], info["width"], 3)
            assert low <= info["width"] <= high and low <= info["height"] <= high


def test_boxes_and_counts(cocos: dict[str, COCO]) -> None:
    for coco in cocos.values():
        for image_id, info in coco.imgs.items():
            anns = coco.imgToAnns[image_id]
            assert 1 <= len(anns) <= SIZE["max_objects"]
            short = min(info["width"], info["height"])
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= info["width"] and y + h <= info["height"]
                # the longest side is drawn in [min_object, max_object_fraction * short side], up to rounding
                assert 6 - 1 <= max(w, h) <= 0.5 * short + 1


def test_all_classes_appear(cocos: dict[str, COCO]) -> None:
    used = {ann["category_id"] for coco in cocos.values() for ann in coco.dataset["annotations"]}
    assert used == set(range(1, len(CLASSES) + 1))


def test_deterministic_and_seeded(dataset: Path, tmp_path: Path) -> None:
    def generate(out: Path, seed: int) -> None:
        generate_dataset(out, seed=seed, **SIZE)

    check_seeded(generate, dataset, 3, tmp_path, ("train/000000.png", "val/000000.png"))


def test_interrupted_run_leaves_no_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate_dataset(tmp_path, seed=0, num_train=1, num_val=1)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "render_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path, seed=1, num_train=1, num_val=1)
    assert not (tmp_path / "train.json").exists() and not (tmp_path / "val.json").exists()


def test_boxes_are_tight(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a flat, noiseless background an isolated object's coverage is measurable: its box must
    contain every pixel covered at least 3/4 and lie within the pixels covered at least 1/4."""
    grey = 128.0
    monkeypatch.setattr(shapes, "background", lambda rng, h, w: np.full((h, w, 3), grey, np.float32))
    monkeypatch.setattr(shapes, "_NOISE_SIGMA", (0.0, 0.0))
    config = shapes.SceneConfig((96, 128), 6, 0.5, 6, 0.35)
    checked = 0
    for seed in range(40):
        image, objects = shapes.render_scene(np.random.default_rng(seed), config)
        offset = image.astype(np.float64) - grey
        corners = np.array([o.bbox for o in objects]).reshape(-1, 4)
        corners[:, 2:] += corners[:, :2]  # x0, y0, x1, y1
        for i, box in enumerate(corners.astype(int)):
            if any(_near(box, other) for j, other in enumerate(corners) if j != i):
                continue  # a neighbour's pixels would spoil the measurement
            x0, y0 = np.maximum(box[:2] - 2, 0)
            crop = offset[y0 : box[3] + 2, x0 : box[2] + 2]
            colour = crop.reshape(-1, 3)[np.argmax(np.abs(crop).sum(axis=2))]  # a fully covered pixel
            coverage = crop @ colour / (colour @ colour)
            core, extent = (_extent(coverage >= t) + [x0, y0, x0, y0] for t in (0.75, 0.25))
            assert np.all(box[:2] <= core[:2]) and np.all(core[2:] <= box[2:]), (seed, i, box, core)
            assert np.all(extent[:2] <= box[:2]) and np.all(box[2:] <= extent[2:]), (seed, i, box, extent)
            checked += 1
    assert checked >= 30


def test_cli(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "keypointdet.data.synthetic", f"out={tmp_path}", "num_train=2", "num_val=1",
               "max_objects=3", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert "train.json: 2 images" in printed and "val.json: 1 images" in printed
    assert json.loads((tmp_path / "val.json").read_text())["categories"][0]["name"] == CLASSES[0]


def test_rejects_impossible_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, num_train=1, num_val=1, image_size=(20, 30), min_object=12)
