"""Pascal VOC on a tiny VOCdevkit written in a tmp dir: conversion of the 1-based boxes, difficult objects
as ignored regions, several sets, bad XML, and both detectors training with ``data=voc``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image

from keypointdet.data.coco import DataWarning
from keypointdet.data.transforms import Letterbox
from keypointdet.data.voc import VOC_CLASSES, VOCDetection, voc_to_coco
from keypointdet.metrics import evaluate_detections, voc07_map50
from keypointdet.runs.train import train

# (year, name, height, width, objects as (class, difficult, xmin, ymin, xmax, ymax) 1-based inclusive)
VOC_IMAGES = [
    ("2007", "000001", 61, 97, [("dog", 0, 3, 5, 40, 50), ("person", 1, 50, 10, 90, 60)]),
    ("2007", "000002", 83, 45, [("car", 0, 1, 1, 45, 83)]),
    ("2007", "000003", 57, 71, [("cat", 0, 10, 8, 30, 40), ("cat", 1, 40, 20, 70, 55), ("dog", 0, 33, 2, 60, 15)]),
    ("2012", "2008_000001", 64, 80, [("bus", 0, 20, 20, 60, 50), ("dragon", 0, 5, 5, 15, 15)]),
]
SETS = {("2007", "trainval"): ["000001", "000002"], ("2007", "test"): ["000003"], ("2012", "trainval"): ["2008_000001"]}


def write_xml(path: Path, height: int, width: int, objects: list[tuple]) -> None:
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, difficult, *box in objects:
        coords = "".join(f"<{key}>{value}</{key}>" for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts) + "</annotation>")


def write_voc(root: Path) -> Path:
    """A tiny VOCdevkit: :data:`VOC_IMAGES` in the image sets :data:`SETS`."""
    for seed, (year, name, height, width, objects) in enumerate(VOC_IMAGES):
        write_xml(root / f"VOC{year}" / "Annotations" / f"{name}.xml", height, width, objects)
        write_image(root / f"VOC{year}" / "JPEGImages" / f"{name}.jpg", height, width, seed=seed)
    for (year, image_set), names in SETS.items():
        list_file = root / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc(tmp_path_factory.mktemp("VOCdevkit"))


def test_voc_sets_become_a_coco_dataset_with_0_based_boxes(voc_root: Path) -> None:
    data = voc_to_coco(voc_root, ["2007/trainval", "2012/trainval"])
    assert [c["name"] for c in data["categories"]] == list(VOC_CLASSES)
    assert [image["file_name"] for image in data["images"]] == [
        "VOC2007/JPEGImages/000001.jpg", "VOC2007/JPEGImages/000002.jpg", "VOC2012/JPEGImages/2008_000001.jpg",
    ]  # fmt: skip
    assert len({image["id"] for image in data["images"]}) == 3
    expected = [obj for year, name, *_, objects in VOC_IMAGES if name in ("000001", "000002", "2008_000001")
                for obj in objects]  # fmt: skip
    assert len(data["annotations"]) == len(expected)
    for annotation, (name, difficult, xmin, ymin, xmax, ymax) in zip(data["annotations"], expected):
        # pixel xmin (1-based) starts at x = xmin - 1; pixel xmax ends at x = xmax
        assert annotation["bbox"] == [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
        assert annotation["iscrowd"] == difficult
    with pytest.warns(DataWarning, match=r"1 annotations skipped: category id .*annotation ids 5\)"):
        dataset = VOCDetection(voc_root, ["2007/trainval", "2012/trainval"], Letterbox(64, 32))
    # a box covering the whole image, after the conversion, is exactly the image
    boxes, labels, _ = dataset.annotations(2)
    np.testing.assert_allclose(boxes, [[0, 0, 45, 83]])
    assert dataset.class_names[int(labels[0])] == "car"
    # the difficult person is an ignored region, the unknown "dragon" was skipped and counted
    assert dataset.annotations(1)[1].tolist() == [VOC_CLASSES.index("dog")]
    assert int(dataset[2]["num_unknown_category"]) == 1


def test_difficult_objects_are_neither_hits_nor_misses(voc_root: Path) -> None:
    dataset = VOCDetection(voc_root, ["2007/test"], Letterbox(64, 32))
    (image_id,) = dataset.image_ids
    gt = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[image_id]))

    def detection(annotation: dict, score: float) -> dict:
        return {
            "image_id": image_id,
            "category_id": annotation["category_id"],
            "bbox": annotation["bbox"],
            "score": score,
        }

    easy = [detection(a, 0.9 - 0.1 * i) for i, a in enumerate(gt) if not a["iscrowd"]]
    on_difficult = [detection(a, 0.95) for a in gt if a["iscrowd"]]
    assert len(easy) == 2 and len(on_difficult) == 1
    for detections in (easy, easy + on_difficult):
        metrics = evaluate_detections(dataset.coco, {image_id: detections})
        assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP50"] == pytest.approx(1.0)
        assert voc07_map50(dataset.coco, {image_id: detections}) == pytest.approx(1.0)


def test_unreadable_xml_is_named_and_left_out_or_raises(voc_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "VOCdevkit"
    main = broken / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    main.joinpath("test.txt").write_text("good\nbad\nmissing\n")
    write_xml(broken / "VOC2007" / "Annotations" / "good.xml", 10, 10, [("cat", 0, 1, 1, 5, 5)])
    (broken / "VOC2007" / "Annotations" / "bad.xml").write_text("<annotation><size>")
    with pytest.warns(DataWarning) as record:
        data = voc_to_coco(broken, ["2007/test"])
    messages = " ".join(str(w.message) for w in record)
    assert "bad.xml" in messages and "missing.xml" in messages
    assert [image["file_name"] for image in data["images"]] == ["VOC2007/JPEGImages/good.jpg"]
    with pytest.raises(ValueError, match=r"bad\.xml"):
        voc_to_coco(broken, ["2007/test"], strict=True)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/train\.txt"):
        voc_to_coco(broken, ["2007/train"])


@pytest.mark.parametrize("model", ["centernet", "cornernet"])
def test_both_detectors_train_on_voc(compose_train, voc_root: Path, model: str) -> None:
    cfg = compose_train(
        f"model={model}", "data=voc", f"data.root={voc_root}", "data.input_size=128", "trainer.fast_dev_run=true",
        "evaluate_best=false",
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        metrics = train(cfg)
    assert {"val/mAP", "val/mAP50", "val/mAP50_voc07"} <= set(metrics)  # the VOC2007 11-point AP beside COCO's


def test_eval_rebuilds_the_voc_datamodule_of_a_checkpoint(compose_train, voc_root: Path, tmp_path: Path) -> None:
    import torch
    from omegaconf import OmegaConf

    from keypointdet.data.datamodule import VOCDataModule
    from keypointdet.runs.evaluate import build_datamodule
    from keypointdet.runs.train import build

    cfg = compose_train(
        "data=voc", f"data.root={voc_root}", "data.input_size=64", "trainer.max_steps=1",
        "trainer.limit_val_batches=0", "~callbacks",
    )  # fmt: skip
    datamodule, detector, trainer = build(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        trainer.fit(detector, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "voc.ckpt")
    checkpoint = torch.load(tmp_path / "voc.ckpt", weights_only=True)
    rebuilt = build_datamodule(OmegaConf.create({"data": None}), checkpoint, str(tmp_path / "voc.ckpt"))
    assert isinstance(rebuilt, VOCDataModule)
    # the normalisation comes from the checkpoint's input record (lists; the DataModule's defaults are tuples)
    def plain(hparams):
        return {key: list(value) if isinstance(value, tuple) else value for key, value in hparams.items()}

    assert plain(rebuilt.hparams) == plain(datamodule.hparams)
