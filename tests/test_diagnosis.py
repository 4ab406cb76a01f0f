"""The learning check: each finding on a constructed case, and where users read it (train.py, dataset_stats)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import write_coco
from omegaconf import DictConfig

from keypointdet.data.coco import CocoDetection
from keypointdet.diagnosis import (
    class_size_finding,
    collision_finding,
    data_findings,
    loss_finding,
    paragraph,
    scale_finding,
    small_object_finding,
    warmup_finding,
)
from keypointdet.runs.train import train
from keypointdet.tools.dataset_stats import dataset_statistics, report


def test_scale_finding_beyond_twice_either_way():
    assert "upscaled 3.2x" in scale_finding(160, 512)
    assert "downscaled 2.5x" in scale_finding(1280, 512)
    assert scale_finding(300, 512) is None and scale_finding(1000, 512) is None


def test_small_object_finding_counts_boxes_inside_one_cell():
    widths, heights = np.array([2.0, 3.0, 30.0, 40.0]), np.array([3.0, 30.0, 2.0, 40.0])
    assert "25% of the objects" in small_object_finding(widths, heights, stride=4)  # only the 2 x 3 box
    assert small_object_finding(widths * 10, heights * 10, stride=4) is None


def test_collision_finding_from_two_percent():
    assert "5.0% of the objects" in collision_finding(5, 100, 4)
    assert collision_finding(1, 100, 4) is None and collision_finding(0, 0, 4) is None


def test_class_size_finding_names_the_rare_classes():
    finding = class_size_finding({"cat": 5, "dog": 100, "bird": 19})
    assert "2 of 3 classes" in finding and "cat (5)" in finding and "bird (19)" in finding
    assert class_size_finding({"dog": 20}) is None


def test_warmup_finding_when_the_peak_stays_below_half_the_lr():
    assert "never left its warm-up" in warmup_finding([8e-5, 1e-4, 2e-4], configured_lr=2e-3)
    assert warmup_finding([8e-5, 2e-3, 1e-5], configured_lr=2e-3) is None


def test_loss_finding_compares_first_and_last_tenths():
    assert "did not fall" in loss_finding([2.0] * 50 + [1.9] * 50)
    assert loss_finding(list(np.linspace(5.0, 1.0, 100))) is None
    assert loss_finding([2.0] * 9) is None


def test_data_findings_on_a_constructed_dataset(tmp_path: Path):
    # 40 x 30 images at input 512 (12.8x); class a: two objects with one centre (a collision) in 25 images,
    # class b: a 0.2 px box (2.6 px at 12.8x, under the stride 4) in 3 images; class c: none
    images = [{"id": i, "file_name": f"{i}.png", "height": 30, "width": 40} for i in range(1, 26)]
    annotations = [{"id": 2 * i, "image_id": i, "category_id": 1, "bbox": [5, 5, 10, 10]} for i in range(1, 26)]
    annotations += [{"id": 2 * i + 1, "image_id": i, "category_id": 1, "bbox": [6, 6, 8, 8]} for i in range(1, 26)]
    annotations += [{"id": 100 + i, "image_id": i, "category_id": 2, "bbox": [30, 20, 0.2, 0.2]} for i in (1, 2, 3)]
    dataset = CocoDetection(write_coco(tmp_path / "a.json", images, annotations), tmp_path, transform=None)
    stats = dataset_statistics(dataset, 512, stride=4)
    findings = " ".join(data_findings(dataset, 512, 4, stats))
    assert "upscaled 12.8x" in findings
    assert "of the objects share their centre's output cell" in findings
    assert "b (3)" in findings and "a (25)" not in findings and "c (0)" in findings
    assert "6% of the objects are smaller than the output stride" in findings  # 3 of 53


def test_paragraph_numbers_the_findings_or_says_none_applies():
    text = paragraph(["the images are upscaled", "the loss did not fall"], mean_ap=0.0)
    assert text == "Learning check: val/mAP 0.000 is low. Likely causes: (1) The images are upscaled. (2) The loss did not fall."
    assert "None of the usual causes" in paragraph([])


def test_train_prints_the_check_after_a_poor_run(compose_train: Callable[..., DictConfig], caplog):
    cfg = compose_train("trainer.fast_dev_run=true", "evaluate_best=false")
    with caplog.at_level(logging.WARNING, logger="keypointdet.runs.train"):
        train(cfg)
    text = caplog.text
    # 16 training images over 6 classes
    assert "Learning check: val/mAP 0.0" in text and "6 of 6 classes have fewer than 20 training images" in text


def test_dataset_stats_prints_the_data_findings(compose_train: Callable[..., DictConfig]):
    text = report(compose_train("data.input_size=512"))
    assert "Learning check: Likely causes:" in text and "upscaled" in text
