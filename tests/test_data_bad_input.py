"""Bad input, on a crafted broken COCO-format dataset: every problem gets a message naming the file (and the
annotation id) and its documented outcome; ``strict=True`` raises at the first one."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import write_coco, write_image
from torch.utils.data import DataLoader

from keypointdet.data.coco import BadImageError, CocoDetection, DataWarning, load_coco, read_image
from keypointdet.data.datamodule import EpochSampler, collate
from keypointdet.data.encode import CenterNetEncoder
from keypointdet.data.transforms import Letterbox, TrainTransform

# image id -> (file, height, width, what is wrong with the file)
IMAGES = {
    1: ("good.png", 40, 60, None),
    2: ("missing.png", 40, 40, "missing"),
    3: ("corrupt.png", 40, 40, "corrupt"),
    4: ("gray.png", 30, 20, None),
    5: ("empty.png", 32, 32, None),
    6: ("wrong_size.png", 40, 40, "size"),
    7: ("crowded.png", 50, 50, None),
}
BAD_IMAGE_IDS = {2, 3, 6}


def ann(ann_id: int, image_id: int, bbox: list[float], category_id: int = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


ANNOTATIONS = [
    ann(10, 1, [5, 5, 20, 10]),
    ann(11, 1, [5, 5, 0, 10]),  # zero width
    ann(12, 1, [5, 5, math.nan, 10]),  # NaN
    ann(13, 1, [30, 5, -4, 10]),  # negative width
    ann(14, 1, [50, 30, 20, 20], category_id=2),  # partly outside: clipped to [50, 30, 10, 10]
    ann(15, 1, [70, 5, 10, 10]),  # wholly outside
    ann(16, 1, [5, 20, 10, 10], category_id=99),  # unknown category
    {"id": 17, "image_id": 1, "category_id": 1},  # no bbox
    ann(18, 1, [25, 20, 10, 10], category_id=3, iscrowd=1),
    ann(20, 4, [2, 2, 10, 10]),
    ann(30, 2, [2, 2, 10, 10]),
    ann(31, 3, [2, 2, 10, 10]),
    ann(32, 6, [2, 2, 10, 10]),
    *[ann(40 + i, 7, [8 * i, 8 * i, 6, 6], category_id=1 + i % 3) for i in range(5)],
]
SKIPPED_BOXES = {"num_bad_boxes": [11, 12, 13, 17], "num_outside_boxes": [15], "num_unknown_category": [16]}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    images = []
    for image_id, (name, height, width, problem) in IMAGES.items():
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        if problem == "corrupt":
            (root / "images").mkdir(exist_ok=True)
            (root / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
        elif problem == "size":
            write_image(root / "images" / name, height - 10, width, seed=image_id)
        elif problem is None:
            channels = 1 if name == "gray.png" else 3
            write_image(root / "images" / name, height, width, seed=image_id, channels=channels)
    write_coco(root / "ann.json", images, ANNOTATIONS)
    return root


def load(root: Path, transform=None, **kwargs) -> CocoDetection:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return CocoDetection(root / "ann.json", root / "images", transform or Letterbox(64, 32), **kwargs)


def test_bad_annotations_are_skipped_counted_and_named(broken: Path) -> None:
    with pytest.warns(DataWarning) as record:
        dataset = CocoDetection(broken / "ann.json", broken / "images", Letterbox(64, 32))
    messages = [str(w.message) for w in record]
    for kind, ann_ids in SKIPPED_BOXES.items():
        (message,) = [m for m in messages if f"{len(ann_ids)} annotations skipped" in m and str(ann_ids[0]) in m]
        assert str(broken / "ann.json") in message
        assert all(str(ann_id) in message for ann_id in ann_ids)
    assert any("clipped" in m and "14" in m for m in messages)
    sample = dataset[dataset.image_ids.index(1)]
    for kind, ann_ids in SKIPPED_BOXES.items():
        assert int(sample[kind]) == len(ann_ids)
    boxes, labels, skipped = dataset.annotations(1)
    # the good box and the clipped one; the crowd box is never an object
    np.testing.assert_allclose(boxes, [[5, 5, 25, 15], [50, 30, 60, 40]])
    assert labels.tolist() == [0, 1] and skipped == sum(len(ids) for ids in SKIPPED_BOXES.values())
    # evaluation ground truth holds the same checked boxes (the crowd box stays as an ignored region)
    assert sorted(dataset.coco.getAnnIds(imgIds=[1])) == [10, 14, 18]


def test_strict_raises_at_the_first_bad_annotation(broken: Path) -> None:
    with pytest.raises(ValueError, match=r"ann\.json: annotation 11 \(image 1, good\.png\) bbox .* zero, negative"):
        CocoDetection(broken / "ann.json", broken / "images", Letterbox(64, 32), strict=True)


def next_usable(index: int, image_ids: list[int]) -> tuple[int, int]:
    """Naive: (image id used for ``index``, images skipped) when the images of BAD_IMAGE_IDS are unusable."""
    skipped = 0
    while image_ids[(index + skipped) % len(image_ids)] in BAD_IMAGE_IDS:
        skipped += 1
    return image_ids[(index + skipped) % len(image_ids)], skipped


def test_unusable_images_are_replaced_counted_and_named(broken: Path) -> None:
    dataset = load(broken)
    for index, image_id in enumerate(dataset.image_ids):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            sample = dataset[index]
        expected_id, skipped = next_usable(index, dataset.image_ids)
        assert (int(sample["image_id"]), int(sample["num_bad_images"])) == (expected_id, skipped)
        messages = " ".join(str(w.message) for w in record if issubclass(w.category, DataWarning))
        if image_id in BAD_IMAGE_IDS:
            assert str(broken / "images" / IMAGES[image_id][0]) in messages
    assert next_usable(2, dataset.image_ids)[0] == 4  # missing and corrupt in a row


@pytest.mark.parametrize(
    ("image_id", "match"),
    [
        (2, r"missing\.png: file not found"),
        (3, r"corrupt\.png: unreadable or corrupt"),
        (6, r"wrong_size\.png \(id 6\) is 40x30 but .* says 40x40"),
    ],
)
def test_strict_raises_on_an_unusable_image(broken: Path, image_id: int, match: str) -> None:
    dataset = load(broken)  # the annotations are broken too: load leniently, then be strict about images
    dataset.strict = True
    with pytest.raises(BadImageError, match=match):
        dataset[dataset.image_ids.index(image_id)]


def test_training_batches_survive_bad_images_and_count_them(broken: Path) -> None:
    encoder = CenterNetEncoder(num_classes=3, max_objects=3)
    dataset = load(broken, transform=TrainTransform(64, border=8), encoder=encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        (batch,) = DataLoader(
            dataset, batch_size=len(dataset), sampler=EpochSampler(len(dataset), 0), collate_fn=collate
        )
    assert batch["image"].shape == (len(dataset), 3, 64, 64)
    assert not set(batch["image_id"].tolist()) & BAD_IMAGE_IDS
    expected = sum(next_usable(i, dataset.image_ids)[1] for i in range(len(dataset)))
    assert int(batch["num_bad_images"].sum()) == expected == 4
    # the image without annotations is a negative: an all-zero heatmap
    negatives = batch["image_id"] == 5
    assert negatives.any() and batch["heatmap"][negatives].max() == 0 and not batch["mask"][negatives].any()


def test_objects_beyond_max_objects_are_counted_or_raise(broken: Path) -> None:
    index = load(broken).image_ids.index(7)
    dataset = load(broken, transform=Letterbox(64, 32), encoder=CenterNetEncoder(num_classes=3, max_objects=3))
    sample = dataset[index]
    assert int(sample["num_dropped"]) == 2 and int(sample["mask"].sum()) == 3
    dataset.strict = True
    with pytest.raises(ValueError, match=r"crowded\.png \(id 7\) has 5 objects .* max_objects=3"):
        dataset[index]


def test_grayscale_rgba_and_16_bit_images_are_converted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    deep = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([rgb[..., ::-1], np.full((5, 7), 9, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), np.floor(deep / 257 + 0.5).astype(np.uint8))


def test_missing_or_malformed_annotation_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_coco(tmp_path / "nothing.json")
    cases = {
        "syntax.json": "{not json",
        "list.json": "[]",
        "no_images.json": json.dumps({"categories": []}),
        "image_fields.json": json.dumps({"images": [{"id": 1}], "categories": []}),
        "category_fields.json": json.dumps({"images": [], "categories": [{"id": 1}]}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            load_coco(tmp_path / name)


def test_unreadable_validation_images_are_left_out_of_evaluation(broken: Path) -> None:
    dataset = load(broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        batches = list(DataLoader(dataset, batch_size=3, collate_fn=collate))
    seen = torch.cat([batch["image_id"] for batch in batches]).tolist()
    assert set(seen) == set(dataset.image_ids) - BAD_IMAGE_IDS
    assert sum(int(batch["num_bad_images"].sum()) for batch in batches) == 4


def test_a_fit_logs_and_reports_what_was_left_out(compose_train, broken: Path, caplog) -> None:
    from keypointdet.runs.train import build

    data = [
        f"data.{split}_{key}={broken / name}"
        for split in ("train", "val")
        for key, name in (("ann", "ann.json"), ("img_dir", "images"))
    ]
    cfg = compose_train(
        *data,
        "data.input_size=64",
        "data.batch_size=7",
        "data.val_batch_size=7",
        "data.augment.border=8",
        "model.targets.max_objects=3",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.check_val_every_n_epoch=1",
        "~callbacks",
    )
    datamodule, model, trainer = build(cfg)
    with caplog.at_level(logging.WARNING, logger="keypointdet"):
        trainer.fit(model, datamodule=datamodule)
    metrics = trainer.callback_metrics
    # the whole dataset once in one batch: every image's problems once, and the 4 replacements of unusable images
    for prefix in ("data", "val_data"):
        assert int(metrics[f"{prefix}/num_bad_images"]) == 4
        for kind, ann_ids in SKIPPED_BOXES.items():
            # problems of unusable images are not seen: their samples are replaced
            assert int(metrics[f"{prefix}/{kind}"]) == len(ann_ids)
    assert int(metrics["data/num_dropped"]) >= 2
    reported = " ".join(record.getMessage() for record in caplog.records)
    assert "data/num_bad_images=4 were left out of training" in reported
    assert "val_data/num_bad_images=4 were left out of evaluation" in reported
