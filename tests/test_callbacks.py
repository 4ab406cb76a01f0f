"""Callbacks: the W&B validation images (boxes, heatmap overlay) and the Hydra sweep summary."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace
from unittest.mock import create_autospec

import matplotlib
import numpy as np
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from keypointdet.callbacks import WandbValidationImages, overlay
from keypointdet.sweeps import SweepSummary
from keypointdet.data.datamodule import collate
from keypointdet.inference import detect_batch
from keypointdet.runs.train import build

TINY = (
    "backbone=hourglass_small_1stack", "backbone.dims=[16,16,24,32]", "backbone.stem_channels=16",
    "backbone.out_channels=16", "model.head_channels=16", "data.input_size=64",
)


@pytest.mark.parametrize(
    ("model", "heatmaps"),
    [(("model=centernet", "model.k=20"), ["heatmap"]), (("model=cornernet", "model.k=10"), ["br_heatmap", "tl_heatmap"])],
)
def test_validation_images_show_ground_truth_predictions_and_every_heatmap(compose_train, model, heatmaps):
    datamodule, module, _ = build(compose_train(*model, *TINY))
    datamodule.setup("validate")
    dataset = datamodule.val_dataset
    module.eval()
    images = WandbValidationImages(num_images=3, min_score=0.0).render(module, dataset)

    assert sorted(images) == [f"val/images/{name}" for name in heatmaps]
    batch = dataset[0]
    expected_gt = []
    for ann in dataset.coco.imgToAnns[dataset.image_ids[0]]:  # naive: COCO xywh -> input pixels
        x, y, w, h = ann["bbox"]
        sx, sy = batch["scale"].tolist()
        dx, dy = batch["shift"].tolist()
        expected_gt.append((dataset.coco.cats[ann["category_id"]]["name"], x * sx + dx, y * sy + dy,
                            (x + w) * sx + dx, (y + h) * sy + dy))
    # as validation ran it: in the inference settings' memory layout (float rounding differs between layouts)
    module.inference.prepare(module.detector)
    detections = detect_batch(module.detector, collate([dataset[index] for index in range(3)]), None, module.inference)[0]
    for logged in images.values():
        assert len(logged) == 3
        first = logged[0]
        assert np.asarray(first.image).shape == (*batch["image"].shape[-2:], 3)
        gt = first._boxes["ground_truth"]._val
        got = [(box["box_caption"], *(box["position"][key] for key in ("minX", "minY", "maxX", "maxY"))) for box in gt]
        assert [entry[0] for entry in got] == [entry[0] for entry in expected_gt]
        np.testing.assert_allclose([entry[1:] for entry in got], [entry[1:] for entry in expected_gt], atol=1e-3)
        predictions = first._boxes["predictions"]._val
        assert len(predictions) == len(detections)
        for box, detection in zip(predictions, detections):
            name = module.detector.class_names[module.detector.category_ids.index(detection["category_id"])]
            assert box["box_caption"] == f"{name} {detection['score']:.2f}"
            # one forward pass of the collated batch; detect_batch pads the hourglass input to the stride: float noise
            assert box["scores"]["score"] == pytest.approx(detection["score"], rel=1e-4)


def test_overlay_keeps_the_image_where_the_heatmap_is_zero_and_blends_its_colour_elsewhere():
    pictures = torch.rand(2, 3, 5, 7)
    probability = torch.rand(2, 5, 7)
    probability[0] = 0
    blended = overlay(pictures, probability, opacity=0.6)
    image = pictures.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(blended[0], image[0] * 255, atol=0.5)
    colour = matplotlib.colormaps["turbo"](probability[1].numpy())[..., :3]
    weight = 0.6 * probability[1].numpy()[..., None]
    np.testing.assert_allclose(blended[1], ((1 - weight) * image[1] + weight * colour) * 255, atol=0.5)


def job_config(tmp_path, num: int):
    return OmegaConf.create(
        {
            "optimized_metric": "val/mAP",
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "job": {"num": num},
                "sweep": {"dir": str(tmp_path)},
                "runtime": {"output_dir": str(tmp_path / str(num))},
            },
        }
    )


def test_sweep_summary_lists_every_job_and_fails_the_sweep_when_one_crashed(tmp_path):
    summary = SweepSummary()
    completed = JobReturn(overrides=["model.loss.alpha=1"], status=JobStatus.COMPLETED, _return_value=0.25)
    failed = JobReturn(overrides=["model.loss.alpha=3"], status=JobStatus.FAILED, _return_value=ValueError("boom"))
    summary.on_job_end(job_config(tmp_path, 1), failed)
    summary.on_job_end(job_config(tmp_path, 0), completed)

    assert json.loads((tmp_path / "0" / "job_status.json").read_text())["value"] == 0.25
    with open(tmp_path / "sweep_summary.tsv") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    assert [(row["job"], row["status"], row["overrides"]) for row in rows] == [
        ("0", "COMPLETED", "model.loss.alpha=1"),
        ("1", "FAILED", "model.loss.alpha=3"),
    ]
    assert rows[0]["value"] == "0.25" and rows[1]["error"] == "ValueError: boom"
    with pytest.raises(RuntimeError, match=r"1 of 2 sweep jobs failed \(jobs \[1\]\)"):
        summary.on_multirun_end(job_config(tmp_path, 0))


def test_sweep_summary_skips_a_status_another_job_is_still_writing(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "job_status.json").write_text('{"job": 1, "sta')  # a parallel job mid-write
    SweepSummary().on_job_end(job_config(tmp_path, 0), JobReturn(status=JobStatus.COMPLETED, _return_value=0.5))
    with open(tmp_path / "sweep_summary.tsv") as file:
        assert [row["job"] for row in csv.DictReader(file, delimiter="\t")] == ["0"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_sweep_summary_is_quiet_outside_a_multirun(tmp_path):
    config = job_config(tmp_path, 0)
    config.hydra.mode = RunMode.RUN
    SweepSummary().on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=1.0))
    assert not list(tmp_path.iterdir())


def test_validation_images_are_logged_at_validations_1_then_every_n_skipping_sanity_checks(monkeypatch):
    callback = WandbValidationImages(every_n_validations=3)
    monkeypatch.setattr(callback, "render", lambda model, dataset: {"val/images/heatmap": []})
    logger = create_autospec(WandbLogger, instance=True)
    trainer = SimpleNamespace(
        sanity_checking=True, loggers=[logger], datamodule=SimpleNamespace(val_dataset=[]), is_global_zero=True,
        global_step=0,
    )
    callback.on_validation_epoch_end(trainer, None)  # the sanity check does not count
    trainer.sanity_checking = False
    logged_at = []
    for validation in range(1, 8):
        trainer.global_step = validation
        calls = logger.experiment.log.call_count
        callback.on_validation_epoch_end(trainer, None)
        if logger.experiment.log.call_count > calls:
            logged_at.append(validation)
    assert logged_at == [1, 4, 7]
    assert logger.experiment.log.call_args.args[0]["trainer/global_step"] == 7
