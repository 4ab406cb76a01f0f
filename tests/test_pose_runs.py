"""The pose model through the runs: its configs, a short training (resumed), eval.py, predict.py and the drawing
of skeletons, and the end-to-end ONNX export with its keypoints output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_checkpoint import ROOT, compose_tiny, sharpened
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from keypointdet.data import synthetic_pose
from keypointdet.drawing import draw_detections
from keypointdet.export import export
from keypointdet.inference import load_detector, predict, skeleton
from keypointdet.runs.predict import predict_files
from keypointdet.runs.train import train
from keypointdet.runtime import OnnxDetector


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def test_the_pose_model_defaults_to_the_embedded_pose_dataset_and_its_keypoint_set() -> None:
    cfg = composed("model=centernet_pose")
    assert cfg.data.generator == "pose" and cfg.model._target_ == "keypointdet.detectors.CenterNetPose"
    keypoints = OmegaConf.to_container(cfg.model.keypoints, resolve=True)
    assert keypoints == {
        "names": list(synthetic_pose.KEYPOINT_NAMES),
        "flip_pairs": [list(pair) for pair in synthetic_pose.FLIP_PAIRS],
        "sigmas": list(synthetic_pose.SIGMAS),
        "skeleton": [list(limb) for limb in synthetic_pose.SKELETON],
    }
    coco = composed("model=centernet_pose", "data=coco_keypoints", "data.root=/data/coco2017")
    assert len(coco.model.keypoints.sigmas) == 17 and coco.data.annotation_prefix == "person_keypoints"
    assert coco.model.targets.max_objects == 32


# 2 steps an epoch, and a schedule that does not depend on the number of epochs (a run can be resumed for more)
RESUMABLE = (
    "trainer.limit_train_batches=2", "optimizer=adam_multistep", "model.scheduler.milestones=[10]",
    "~callbacks.rich_progress_bar",
)  # fmt: skip


@pytest.fixture(scope="module")
def pose_run(tiny_pose_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One epoch of 2 steps of the tiny pose model, validated; its run folder and metrics."""
    run_dir = tmp_path_factory.mktemp("pose_run")
    cfg = compose_tiny(
        tiny_pose_dataset, run_dir, "centernet_pose", *RESUMABLE, "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1", "evaluate_best=false",
    )  # fmt: skip
    return run_dir, train(cfg)


def test_training_reports_keypoint_ap_and_resumes(pose_run, tiny_pose_dataset: Path, tmp_path: Path) -> None:
    run_dir, metrics = pose_run
    assert {"val/mAP", "val/kp_mAP", "val/kp_mAP50", "val/kp_mAP75"} <= set(metrics)
    assert 0.0 <= metrics["val/kp_mAP"] <= 1.0
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_tiny(
        tiny_pose_dataset, tmp_path / "resumed", "centernet_pose", *RESUMABLE, "trainer.max_epochs=2",
        "trainer.limit_val_batches=0", "evaluate_best=false", f"ckpt_path={last}",
        "callbacks.model_checkpoint.monitor=null",
    )  # fmt: skip
    train(cfg)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["epoch"] == 1


def test_eval_py_reports_keypoint_ap_with_flip_and_writes_keypoints(pose_run, tmp_path: Path) -> None:
    run_dir, _ = pose_run
    output = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer=cpu",
         "model.tta.flip=true", f"hydra.run.dir={output}", "trainer.enable_progress_bar=false"],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"val/kp_mAP", "val/kp_mAP50", "val/kp_mAP75"} <= set(metrics)
    assert result.stdout.strip().splitlines()[-1].endswith(f"val/kp_mAP={metrics['val/kp_mAP']:.4f} "
                                                           f"val/kp_mAP50={metrics['val/kp_mAP50']:.4f}")  # fmt: skip
    results = json.loads((output / "results.json").read_text())
    assert results and all(len(result["keypoints"]) == 13 * 3 for result in results)


def test_predict_draws_skeletons(pose_run, tiny_pose_dataset: Path, tmp_path: Path) -> None:
    run_dir, _ = pose_run
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    cfg = OmegaConf.create({"ckpt_path": str(ckpt_path), "input": str(tiny_pose_dataset / "images" / "val_000000.png"),
                            "output": str(tmp_path / "out"), "score_threshold": 0.0})  # fmt: skip
    written = predict_files(cfg)["val_000000.png"]
    assert written and all(len(detection["keypoints"]) == 39 for detection in written)
    assert skeleton(load_detector(ckpt_path)) == [list(limb) for limb in synthetic_pose.SKELETON]


def test_a_skeleton_is_drawn_between_the_joints() -> None:
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    detection = {"bbox": [5, 5, 50, 30], "score": 0.9, "category_id": 1, "class_name": "figure",
                 "keypoints": [10.0, 20.0, 0.8, 50.0, 20.0, 0.7, 30.0, 32.0, 0.1]}  # fmt: skip
    without = draw_detections(image, [detection], 0.5)
    drawn = draw_detections(image, [detection], 0.5, skeleton=[[1, 2]])
    assert not without[20, 30].any() and drawn[20, 30].any()  # the limb's middle
    assert without[20, 10].any() and without[32, 30].any()  # every joint's dot
    assert np.array_equal(draw_detections(image, [detection], 0.95, skeleton=[[1, 2]]), image)


@pytest.mark.slow  # an ONNX export (~35 s); the pose predict, eval and drawing paths stay in make test
def test_the_end_to_end_onnx_export_outputs_the_keypoints(pose_run, tiny_pose_dataset: Path, tmp_path: Path) -> None:
    run_dir, _ = pose_run
    ckpt_path = sharpened(run_dir / "checkpoints" / "last.ckpt", tmp_path)
    model = load_detector(ckpt_path)
    path = export(model, tmp_path / "pose.onnx", "onnx", input_size=64)
    onnx_model = OnnxDetector(path)
    image = tiny_pose_dataset / "images" / "val_000001.png"
    expected, actual = predict(model, image), onnx_model.predict(image)
    assert onnx_model.skeleton == skeleton(model) and len(actual) == len(expected) > 0
    for ours, theirs in zip(actual, expected):
        np.testing.assert_allclose(ours["keypoints"], theirs["keypoints"], atol=1e-3)
        np.testing.assert_allclose(ours["bbox"], theirs["bbox"], atol=1e-3)
