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
from keypointdet.callbacks import WandbValidationImages, denormalise
from keypointdet.data.datamodule import collate
from keypointdet.drawing import draw_detections, draw_keypoints
from keypointdet.export import export
from keypointdet.inference import detect_batch, load_detector, predict, skeleton
from keypointdet.runs.predict import predict_files
from keypointdet.runs.train import build, train
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
    # validated with the flip test unless tta=none; the COCO recipe decodes with the official threshold
    assert cfg.model.tta.flip and not composed("model=centernet_pose", "tta=none").model.tta.flip
    assert not composed().model.tta.flip
    recipe = composed("experiment=centernet_pose_dla34_coco", "data.root=/data/coco2017")
    assert recipe.model.joint_threshold == 0.1 and recipe.model.targets.radius_variant == "centernet"


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


def test_annotated_poses_are_drawn_only_where_labelled() -> None:
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    keypoints = np.array([[[10.0, 20.0, 2], [50.0, 20.0, 1], [0.0, 0.0, 0], [30.0, 32.0, 2]]])
    drawn = draw_keypoints(image, keypoints, skeleton=[[1, 2], [2, 3], [3, 4]], color=(0, 200, 0))
    assert (drawn[20, 10] == (0, 200, 0)).all() and (drawn[20, 50] == (0, 200, 0)).all()  # labelled joints
    assert (drawn[20, 30] == (0, 200, 0)).all()  # the limb between two labelled joints
    assert not drawn[0:3, 0:3].any() and not drawn[16, 15:25].any()  # not the unlabelled joint, nor its limbs
    assert not drawn[31, 25:27].any() and (drawn[32, 30] == (0, 200, 0)).all()


def test_validation_images_draw_the_true_and_the_predicted_skeletons(tiny_pose_dataset: Path, tmp_path: Path) -> None:
    """The W&B images of a pose model: besides the heatmaps, the input with the ground-truth skeletons in white and
    the detections' in magenta, at their joints mapped to input pixels (naively, from the annotations and from
    the detections of an independent forward pass)."""
    datamodule, module, _ = build(compose_tiny(tiny_pose_dataset, tmp_path, "centernet_pose"))
    datamodule.setup("validate")
    dataset = datamodule.val_dataset
    module.eval()
    module.inference.prepare(module.detector)  # validation's layout
    truth_only = WandbValidationImages(num_images=2, min_score=2.0).render(module, dataset)
    images = WandbValidationImages(num_images=2, min_score=0.0).render(module, dataset)
    assert sorted(images) == ["val/images/heatmap", "val/images/joint_heatmap", "val/images/keypoints"]
    detections = detect_batch(module.detector, collate([dataset[0], dataset[1]]), None, module.inference)
    white, magenta = (255, 255, 255), (255, 0, 255)
    for index in range(2):
        sample = dataset[index]
        scale, shift = sample["scale"].numpy(), sample["shift"].numpy()
        picture = np.asarray(truth_only["val/images/keypoints"][index].image)
        normalised = sample["image"][None]
        plain = denormalise(normalised, dataset.transform.mean, dataset.transform.std)[0].permute(1, 2, 0).numpy()
        plain = (plain * 255).round().astype(np.uint8)
        annotated = dataset.coco.imgToAnns[dataset.image_ids[index]]
        truth = [(np.array(ann["keypoints"]).reshape(-1, 3)) for ann in annotated]
        for joints in truth:
            for x, y in joints[joints[:, 2] > 0, :2] * scale + shift:
                assert tuple(picture[int(y), int(x)]) == white
        untouched = (picture != white).any(axis=2)  # all but the white skeletons: the input itself
        assert untouched.mean() > 0.5 and (picture[untouched] == plain[untouched]).all()
        overlaid = np.asarray(images["val/images/keypoints"][index].image)
        for detection in detections[index]:
            for x, y in np.array(detection["keypoints"]).reshape(-1, 3)[:, :2] * scale + shift:
                if 0 <= x < picture.shape[1] and 0 <= y < picture.shape[0]:
                    assert tuple(overlaid[int(y), int(x)]) == magenta


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
