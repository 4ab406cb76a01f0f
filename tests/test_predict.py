"""load_detector / predict / draw_detections and the run behind predict.py, for both detectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detector_checkpoint import tiny_checkpoint
from omegaconf import OmegaConf
from PIL import Image

from keypointdet.data.coco import read_image
from keypointdet.data.datamodule import DetectionDataModule, collate
from keypointdet.checkpoints import CheckpointError
from keypointdet.detectors import CenterNet, CornerNet
from keypointdet.inference import detect_batch, draw_detections, load_detector, predict
from keypointdet.runs.predict import predict_files


@pytest.fixture(scope="module", params=["centernet", "cornernet"])
def checkpoint(request, tiny_dataset, tmp_path_factory):
    return request.param, tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("predict"), request.param)


def assert_same_detections(got: list[dict], expected: list[dict]) -> None:
    """The same detections up to float noise: an untrained CornerNet scores many pairs within 1e-7 of each
    other, so their order may differ; each expected detection must have its match."""
    assert len(got) == len(expected)
    assert [d["score"] for d in got] == pytest.approx([d["score"] for d in expected], rel=1e-5, abs=1e-6)
    for reference in expected:
        assert any(
            detection["category_id"] == reference["category_id"]
            and detection["score"] == pytest.approx(reference["score"], rel=1e-5, abs=1e-6)
            and detection["bbox"] == pytest.approx(reference["bbox"], abs=1e-2)
            for detection in got
        ), reference


def test_load_detector_rebuilds_class_weights_and_letterbox_from_the_checkpoint_alone(checkpoint):
    name, ckpt_path = checkpoint
    model = load_detector(ckpt_path)
    assert type(model) is {"centernet": CenterNet, "cornernet": CornerNet}[name]
    assert not model.training
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    for key, value in state["state_dict"].items():
        torch.testing.assert_close(model.state_dict()[key.removeprefix("detector.")], value, rtol=0, atol=0)
    assert model.letterbox.input_size == state["datamodule_hyper_parameters"]["input_size"] == 64
    assert model.class_names == state["keypointdet"]["detector"]["class_names"]
    assert load_detector(ckpt_path, tta={"flip": True, "scales": [1.0, 0.5]}).tta.scales == (1.0, 0.5)


def test_predict_matches_the_validation_pipeline_for_arrays_pil_images_and_paths(checkpoint, tiny_dataset):
    _, ckpt_path = checkpoint
    model = load_detector(ckpt_path)
    datamodule = DetectionDataModule(**torch.load(ckpt_path, weights_only=True)["datamodule_hyper_parameters"])
    datamodule.configure_targets(model.encoder, model.stride, model.size_divisor)  # what training attaches
    datamodule.setup("validate")
    dataset = datamodule.val_dataset
    # one image per batch: in a batch, collate pads images to the largest, which changes the border outputs
    expected = [detect_batch(model, collate([dataset[index]]))[0] for index in (0, 1)]
    paths = [dataset.img_dir / dataset.coco.imgs[image_id]["file_name"] for image_id in dataset.image_ids[:2]]
    array = read_image(paths[0])
    names = dict(zip(model.category_ids, model.class_names))
    for given in (array, Image.fromarray(array), paths[0], str(paths[0])):
        detections = predict(model, given)
        assert_same_detections(detections, expected[0])
        assert [d["class_name"] for d in detections] == [names[d["category_id"]] for d in detections]
    for got, want in zip(predict(model, paths, batch_size=1), expected, strict=True):
        assert_same_detections(got, want)


def test_predict_rejects_arrays_that_are_not_rgb_uint8(checkpoint):
    model = load_detector(checkpoint[1])
    with pytest.raises(ValueError, match="uint8 RGB array"):
        predict(model, np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB array"):
        predict(model, np.zeros((32, 32, 3), dtype=np.float32))


def test_draw_detections_colours_the_box_outline_only_above_the_threshold():
    image = np.full((60, 60, 3), 255, dtype=np.uint8)
    detections = [
        {"bbox": [5, 5, 40, 30], "score": 0.9, "category_id": 1, "class_name": "a"},
        {"bbox": [48, 45, 8, 8], "score": 0.1, "category_id": 2, "class_name": "b"},
    ]
    drawn = draw_detections(image, detections, score_threshold=0.5)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn[25, 5] != 255).any() and (drawn[25, 44] != 255).any()  # left and right edges of the kept box
    assert (drawn[28, 25] == 255).all()  # inside it, below its label
    assert (drawn[45:54, 48:57] == 255).all()  # the box below the threshold
    assert np.array_equal(draw_detections(image, detections, score_threshold=1.0), image)
    inverted = [{**detections[0], "bbox": [45, 35, -40, -30]}]  # negative size: the same box, from its other corner
    assert np.array_equal(draw_detections(image, inverted, 0.5), draw_detections(image, detections[:1], 0.5))


def test_predict_files_writes_drawn_images_and_one_json(checkpoint, tiny_dataset, tmp_path):
    _, ckpt_path = checkpoint
    images = sorted((tiny_dataset / "val").iterdir())[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    cfg = OmegaConf.create(
        {"ckpt_path": str(ckpt_path), "input": str(folder), "output": str(tmp_path / "out"), "score_threshold": 0.0,
         "model": {"tta": {"flip": False, "scales": [1.0]}}}
    )
    detections = predict_files(cfg)
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(written) == sorted(image.name for image in images) == sorted(detections)
    model = load_detector(ckpt_path)
    for image in images:
        assert written[image.name] == predict(model, image)
        drawn = np.asarray(Image.open(tmp_path / "out" / image.name))
        assert drawn.shape == read_image(image).shape
        assert np.array_equal(drawn, draw_detections(image, written[image.name], 0.0))


def test_predict_files_keeps_each_file_name_and_refuses_to_draw_over_its_inputs(checkpoint, tiny_dataset, tmp_path):
    _, ckpt_path = checkpoint
    folder = tmp_path / "images"
    folder.mkdir()
    image = read_image(sorted((tiny_dataset / "val").iterdir())[0])
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(image[::-1].copy()).save(folder / "a.jpg")
    cfg = {"ckpt_path": str(ckpt_path), "input": str(folder), "score_threshold": 0.0}
    predict_files(OmegaConf.create({**cfg, "output": str(tmp_path / "out")}))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.jpg", "a.png", "detections.json"]
    with pytest.raises(ValueError, match="would overwrite them"):
        predict_files(OmegaConf.create({**cfg, "output": str(folder)}))


def test_load_detector_names_a_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        load_detector(tmp_path / "nope.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="foreign.ckpt was not written by this version of keypointdet"):
        load_detector(tmp_path / "foreign.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "foreign.ckpt").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated.ckpt is not a readable checkpoint"):
        load_detector(tmp_path / "truncated.ckpt")


class CreatesAFile:
    """Unpickling this object would create ``path``: what a malicious checkpoint could do."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_never_executed(checkpoint, tmp_path):
    _, ckpt_path = checkpoint
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    state["keypointdet"]["payload"] = CreatesAFile(marker)
    torch.save(state, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match="crafted.ckpt holds objects other than tensors"):
        load_detector(tmp_path / "crafted.ckpt")
    assert not marker.exists()


def test_checkpoints_name_only_detectors_and_backbones_of_this_package(checkpoint, tmp_path):
    _, ckpt_path = checkpoint
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state["keypointdet"]["detector"]["backbone"]["_target_"] = "os.system"
    torch.save(state, tmp_path / "other_backbone.ckpt")
    with pytest.raises(ValueError, match="inside keypointdet.models"):
        load_detector(tmp_path / "other_backbone.ckpt")
    state["keypointdet"]["detector"]["name"] = "os.system"
    torch.save(state, tmp_path / "other_detector.ckpt")
    with pytest.raises(ValueError, match="unknown detector 'os.system'"):
        load_detector(tmp_path / "other_detector.ckpt")
