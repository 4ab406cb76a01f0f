"""Shared fixtures: a tiny embedded dataset and composition of the real Hydra configs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.synthetic_pose import generate_pose_dataset

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ["WANDB_MODE"] = "offline"

# Parametrized cases run only with the slow tests (`make test-all`), to keep `make test` under 10 minutes on 2
# cores; each has a sibling in `make test` that covers the same code path (the other detector, or another export).
SLOW_CASES = {
    # the CornerNet ONNX export (~45 s: the soft-NMS loop); CenterNet ONNX and CornerNet TorchScript stay
    "test_export.py::test_exported_detections_equal_pytorch_at_any_batch_and_size[cornernet-onnx]",
    # CornerNet's DDP gradient and eval CLI (~15 s each); CenterNet's stay, and CornerNet's DDP loss has unit tests
    "test_ddp_train.py::test_two_processes_with_half_batches_give_the_gradient_of_one_process[cornernet]",
    "test_eval_cli.py::test_eval_prints_the_coco_table_and_writes_metrics_and_full_precision_results[cornernet]",
    # the training notebook (two short trainings, ~90 s); the notebook of targets and losses stays
    "test_notebooks.py::test_notebook_runs[02_train_and_inspect.ipynb]",
    # the converter's command line for CornerNet (~12 s); CenterNet's stays, CornerNet's conversion has unit tests
    "test_convert_official.py::test_command_line_writes_a_checkpoint_that_load_detector_rebuilds[cornernet_hourglass_tiny]",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.partition("/")[2] in SLOW_CASES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded dataset (16 train / 8 val images) in COCO format."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, num_train=16, num_val=8, seed=7)
    return root


@pytest.fixture(scope="session")
def tiny_pose_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded pose dataset (16 train / 8 val images, 13 joints) in COCO keypoints format."""
    root = tmp_path_factory.mktemp("synthetic_pose")
    generate_pose_dataset(root, num_train=16, num_val=8, seed=7)
    return root


def remap_categories(src: Path, dst: Path, new_ids: dict[int, int]) -> Path:
    """Copy a COCO file with its category ids replaced (e.g. by non-contiguous ones)."""
    data = json.loads(src.read_text())
    for category in data["categories"]:
        category["id"] = new_ids[category["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = new_ids[ann["category_id"]]
    dst.write_text(json.dumps(data))
    return dst


def compose_config(overrides: list[str], output_dir: Path, log_dir: Path | None = None) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, writing under ``output_dir``, set as Hydra's config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        if log_dir is not None:
            cfg.paths.log_dir = str(log_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path, tiny_dataset: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` with CPU / tiny / no-logger overrides plus the given ones."""

    def _compose(*overrides: str) -> DictConfig:
        defaults = [
            "trainer=cpu",
            "logger=none",
            f"data.root={tiny_dataset}",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.val_batch_size=4",
        ]
        return compose_config([*defaults, *overrides], tmp_path / "run", tmp_path / "logs")

    yield _compose
    GlobalHydra.instance().clear()


def check_seeded(generate: Callable[[Path, int], object], reference: Path, seed: int, tmp_path: Path,
                 first_images: tuple[str, str]) -> None:  # fmt: skip
    """A dataset generator ``generate(out, seed)`` writes the files of ``reference`` (made with ``seed``) again,
    byte for byte, and files of the same names but other contents for another seed; ``first_images`` (the first
    train and val image) differ, their splits having their own seeds."""

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    generate(tmp_path / "same", seed)
    generate(tmp_path / "other", seed + 1)
    expected = files(reference)
    assert files(tmp_path / "same") == expected
    other = files(tmp_path / "other")
    assert other.keys() == expected.keys()
    train_image, val_image = first_images
    assert other["train.json"] != expected["train.json"] and other[train_image] != expected[train_image]
    assert expected[train_image] != expected[val_image]


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> Path:
    """Write a COCO instances file; ``categories`` default to ids 1..3 named a, b, c."""
    categories = categories if categories is not None else [{"id": i, "name": n} for i, n in enumerate("abc", 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_image(path: Path, height: int, width: int, seed: int = 0, channels: int = 3, dtype=None) -> Path:
    """A random-noise image file of the given size (PNG keeps it exact; JPEG for .jpg names)."""
    rng = np.random.default_rng(seed)
    dtype = dtype or np.uint8
    high = np.iinfo(dtype).max
    shape = (height, width) if channels == 1 else (height, width, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, high, size=shape, endpoint=True).astype(dtype))
    return path


def write_coco_layout(dataset: Path, root: Path) -> Path:
    """``dataset`` (the embedded layout) under the COCO 2017 names that ``data=coco data.root=...`` expects."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").symlink_to(dataset / f"{split}.json")
        (root / f"{split}2017").symlink_to(dataset / split)
    return root
