"""The own-data benchmark: its real-image dataset, and the README command it runs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import cv2
from conftest import ROOT, compose_config


def benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_photo_objects_is_deterministic_coco_with_boxes_inside_the_images(tmp_path: Path):
    photo_objects = benchmark_module("photo_objects")
    photo_objects.generate(tmp_path / "a", num_train=4, num_val=2, seed=3)
    photo_objects.generate(tmp_path / "b", num_train=4, num_val=2, seed=3)
    for name in ("train.json", "val.json", "images/001000.jpg", "images/005001.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    data = json.loads((tmp_path / "a" / "train.json").read_text())
    assert [cat["id"] for cat in data["categories"]] == [2, 5, 11, 17]
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    for image in data["images"]:
        assert cv2.imread(str(tmp_path / "a" / "images" / image["file_name"])).shape[1::-1] == sizes[image["id"]]
        assert 113 <= min(sizes[image["id"]]) and max(sizes[image["id"]]) <= 176
    assert data["annotations"]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and min(w, h) >= 1


def readme_time_budget_command() -> str:
    """The README's command bounded by a time budget (its lines joined)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(python train.py data=coco \\\n.*?max_time.*?)\s+#", readme, re.S).group(1)
    return " ".join(block.replace("\\\n", " ").split())


def test_benchmark_runs_the_readme_command_as_written(tmp_path: Path):
    command = benchmark_module("own_data").readme_command(Path("/data/mine"), minutes=20)
    assert "python " + " ".join(command[1:]) == readme_time_budget_command()


def test_readme_time_budget_command_composes(tmp_path: Path):
    overrides = readme_time_budget_command().split()[2:]
    cfg = compose_config(overrides, tmp_path / "run")
    assert cfg.trainer.max_time == "00:00:20:00" and cfg.trainer.max_epochs == 100000
    assert (cfg.data.input_size, cfg.data.num_workers, cfg.data.pin_memory) == ("auto", "auto", "auto")
