"""``python -m keypointdet.tools.dataset_stats``: its counts against a naive count written here, and the command
itself run from another working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_coco

from keypointdet.data.coco import CocoDetection
from keypointdet.data.encode import gaussian_radius
from keypointdet.data.transforms import Letterbox
from keypointdet.tools.dataset_stats import dataset_statistics

INPUT_SIZE, STRIDE, MAX_OBJECTS = 64, 4, 6


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small boxes packed into small images of odd sizes: collisions at stride 4 are common."""
    root = tmp_path_factory.mktemp("crowded")
    rng = np.random.default_rng(0)
    for split, num_images in (("train", 6), ("val", 3)):
        images, annotations = [], []
        for image_id in range(1, num_images + 1):
            height, width = (int(v) for v in rng.integers(30, 120, size=2))
            images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
            for k in range(int(rng.integers(0, 25))):
                w, h = rng.uniform(2, 15, size=2)
                x, y = rng.uniform(0, [width - w, height - h])
                annotations.append(
                    {"id": 100 * image_id + k, "image_id": image_id, "category_id": int(rng.integers(1, 3)),
                     "bbox": [x, y, w, h], "iscrowd": int(k == 3)}
                )  # fmt: skip
        write_coco(root / f"{split}.json", images, annotations, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    return root


def naive_statistics(ann_file: Path, min_overlap: float) -> dict:
    """Counts by looping over the raw annotations (crowd boxes left out)."""
    data = json.loads(ann_file.read_text())
    per_image = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        if not ann["iscrowd"]:
            per_image[ann["image_id"]].append(ann)
    images = {image["id"]: image for image in data["images"]}
    stats = {"centre": 0, "tl": 0, "br": 0, "over": 0, "objects": 0, "radii": []}
    for image_id, anns in per_image.items():
        height, width = images[image_id]["height"], images[image_id]["width"]
        ratio = INPUT_SIZE / max(height, width)
        sx, sy = round(width * ratio) / width, round(height * ratio) / height
        taken = {"centre": set(), "tl": set(), "br": set()}
        for ann in anns:
            x, y, w, h = ann["bbox"]
            x1, y1, x2, y2 = x * sx, y * sy, (x + w) * sx, (y + h) * sy
            points = {"centre": ((x1 + x2) / 2, (y1 + y2) / 2), "tl": (x1, y1), "br": (x2, y2)}
            for name, (px, py) in points.items():
                key = (ann["category_id"], int(px // STRIDE), int(py // STRIDE))
                stats[name] += key in taken[name]
                taken[name].add(key)
            radius = gaussian_radius(np.ceil((y2 - y1) / STRIDE), np.ceil((x2 - x1) / STRIDE), min_overlap)
            stats["radii"].append(max(0, int(radius)))
        stats["over"] += max(0, len(anns) - MAX_OBJECTS)
        stats["objects"] += len(anns)
    return stats


@pytest.mark.parametrize("min_overlap", [0.3, 0.7])
def test_statistics_match_a_naive_count(crowded: Path, min_overlap: float) -> None:
    dataset = CocoDetection(crowded / "train.json", crowded, Letterbox(INPUT_SIZE))
    stats = dataset_statistics(dataset, INPUT_SIZE, STRIDE, MAX_OBJECTS, min_overlap)
    naive = naive_statistics(crowded / "train.json", min_overlap)
    assert naive["centre"] > 0 and naive["tl"] > 0 and naive["over"] > 0  # the fixture exercises them
    assert stats["num_objects"] == naive["objects"]
    assert (stats["centre_collisions"], stats["tl_collisions"], stats["br_collisions"]) == (
        naive["centre"], naive["tl"], naive["br"],
    )  # fmt: skip
    assert stats["objects_over_max"] == naive["over"]
    assert sorted(stats["radius"].tolist()) == sorted(naive["radii"])


def test_command_runs_from_any_directory(crowded: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PROJECT_ROOT"}
    command = [
        sys.executable, "-m", "keypointdet.tools.dataset_stats", "model=cornernet", "data=coco",
        f"data.train_ann={crowded / 'train.json'}", f"data.train_img_dir={crowded}",
        f"data.val_ann={crowded / 'val.json'}", f"data.val_img_dir={crowded}",
        f"data.input_size={INPUT_SIZE}", f"model.targets.max_objects={MAX_OBJECTS}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
    naive = naive_statistics(crowded / "train.json", 0.3)
    train_report = result.stdout.split("[val]")[0]
    assert f"centre collisions           {naive['centre']} (" in train_report
    assert f"top-left corner collisions  {naive['tl']} (" in train_report
    assert f"{naive['over']} objects not encoded" in train_report
    assert "min_overlap 0.3" in result.stdout and "[val]" in result.stdout
