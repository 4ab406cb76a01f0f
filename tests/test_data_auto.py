"""Settings chosen from the data and the machine: ``data.input_size``, ``num_workers``, ``pin_memory`` = auto."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from omegaconf import DictConfig, OmegaConf

from keypointdet.data.datamodule import DetectionDataModule, auto_input_size, auto_num_workers


def naive_auto_size(long_sides: list[int], divisor: int) -> int:
    """The nearest multiple of ``divisor`` to the median, clipped to [divisor, largest multiple <= 512]."""
    median = float(np.median(long_sides))
    candidates = range(divisor, 513, divisor)
    return min(candidates, key=lambda size: (abs(size - median), size))


@pytest.mark.parametrize("divisor", [1, 32])
def test_coco_like_images_keep_512(divisor):
    long_sides = [640] * 90 + [500] * 10  # COCO: mostly 640 px long sides
    assert auto_input_size(long_sides, divisor) == 512


@pytest.mark.parametrize(
    "long_sides, divisor",
    [([160] * 5, 32), ([150, 150, 170], 32), ([100, 90, 110], 32), ([10, 12], 32), ([161, 163], 1), ([383, 500], 32)],
)
def test_small_images_choose_small_sizes(long_sides, divisor):
    size = auto_input_size(long_sides, divisor)
    assert size == naive_auto_size(long_sides, divisor)
    assert size % divisor == 0 and divisor <= size <= 512


def test_auto_input_size_is_chosen_from_training_images_and_recorded(tiny_dataset: Path):
    datamodule = DetectionDataModule(root=str(tiny_dataset), train_ann=str(tiny_dataset / "train.json"),
                                      train_img_dir=str(tiny_dataset / "train"), val_ann=str(tiny_dataset / "val.json"),
                                      val_img_dir=str(tiny_dataset / "val"), input_size="auto", num_workers=0)  # fmt: skip
    with pytest.raises(RuntimeError, match="setup"):
        datamodule.input_record()
    datamodule.setup("fit")
    images = json.loads((tiny_dataset / "train.json").read_text())["images"]
    expected = naive_auto_size([max(image["width"], image["height"]) for image in images], 32)
    assert datamodule.input_record()["input_size"] == expected
    assert datamodule.train_dataset[(0, 1)]["image"].shape[-2:] == (expected, expected)
    assert max(datamodule.val_dataset[0]["image"].shape[-2:]) == expected


def test_explicit_input_size_overrides_auto(tiny_dataset: Path):
    datamodule = DetectionDataModule(root=str(tiny_dataset), train_ann=str(tiny_dataset / "train.json"),
                                      train_img_dir=str(tiny_dataset / "train"), val_ann=str(tiny_dataset / "val.json"),
                                      val_img_dir=str(tiny_dataset / "val"), input_size=64, num_workers=0)  # fmt: skip
    datamodule.setup("validate")
    assert datamodule.input_record()["input_size"] == 64


@pytest.mark.parametrize("cpus, workers", [(1, 0), (2, 1), (4, 3), (9, 8), (64, 8)])
def test_auto_workers_leave_one_cpu_and_stop_at_eight(cpus, workers):
    assert auto_num_workers(cpus) == workers


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_loader_settings_from_the_machine(monkeypatch, gpu, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    with caplog.at_level("INFO", logger="keypointdet.data.loading"):
        datamodule = DetectionDataModule(root="unused", num_workers="auto", pin_memory="auto")
    assert (datamodule.num_workers, datamodule.pin_memory) == (1, gpu)
    assert "num_workers=1" in caplog.text


def test_explicit_loader_settings_are_kept():
    datamodule = DetectionDataModule(root="unused", num_workers=3, pin_memory=False)
    assert (datamodule.num_workers, datamodule.pin_memory) == (3, False)


def test_coco_and_voc_default_to_auto_and_paper_recipes_keep_their_sizes(compose_train: Callable[..., DictConfig]):
    for data in ("coco", "voc"):
        config = OmegaConf.load(ROOT / "conf" / "data" / f"{data}.yaml")
        assert (config.input_size, config.num_workers, config.pin_memory) == ("auto", "auto", "auto")
    assert compose_train("experiment=centernet_resnet18_coco").data.input_size == 512
    assert compose_train("experiment=cornernet_hourglass104_coco").data.input_size == 511
    synthetic = compose_train().data
    assert (synthetic.input_size, synthetic.pin_memory) == (128, False)
