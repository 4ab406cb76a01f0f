"""Fine-tuning (model.init_from): a trained detector starts a run on a dataset with fewer, renamed, reordered classes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from detector_checkpoint import compose_tiny

from keypointdet.checkpoints import detector_from_checkpoint, initialise_from, load_checkpoint
from keypointdet.models.heads import heatmap_bias
from keypointdet.runs.train import build

# the source's classes kept in the subset, under new category ids, listed in another order (the rest removed)
KEPT = {"star": 40, "circle": 7, "ring": 23}


def subset_dataset(source: Path, destination: Path) -> Path:
    """A copy of the embedded dataset with only the KEPT classes, with other ids and in another order."""
    destination.mkdir()
    for split in ("train", "val"):
        data = json.loads((source / f"{split}.json").read_text())
        old_ids = {cat["name"]: cat["id"] for cat in data["categories"]}
        new_id = {old_ids[name]: new for name, new in KEPT.items()}
        data["categories"] = [{"id": new, "name": name} for name, new in KEPT.items()]
        data["annotations"] = [
            {**ann, "category_id": new_id[ann["category_id"]]} for ann in data["annotations"] if ann["category_id"] in new_id
        ]
        (destination / f"{split}.json").write_text(json.dumps(data))
        (destination / split).symlink_to(source / split)
    return destination


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A CenterNet trained briefly on the embedded dataset (every peak kept: k above classes x cells), its
    checkpoint and its validation metrics."""
    directory = tmp_path_factory.mktemp("source")
    cfg = compose_tiny(
        tiny_dataset, directory / "run", "centernet", "~callbacks", "trainer.max_steps=3", "model.k=2000",
        "trainer.check_val_every_n_epoch=1000", "model.optimizer.lr=2e-3",
    )  # fmt: skip
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(directory / "source.ckpt")
    (metrics,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    return directory / "source.ckpt", metrics


def test_init_from_keeps_the_channels_of_classes_by_name(trained, tiny_dataset: Path, tmp_path: Path, caplog) -> None:
    checkpoint, source_metrics = trained
    source_names = load_checkpoint(checkpoint)["keypointdet"]["detector"]["class_names"]
    assert set(KEPT) < set(source_names) and list(KEPT) != sorted(KEPT, key=source_names.index)
    subset = subset_dataset(tiny_dataset, tmp_path / "subset")
    cfg = compose_tiny(subset, tmp_path / "run", "centernet", "~callbacks", f"model.init_from={checkpoint}",
                       "model.k=2000")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="keypointdet"):
        datamodule, model, trainer = build(cfg)
    assert f"model.init_from={checkpoint}" in caplog.text and "classes kept from the checkpoint" in caplog.text
    detector = model.detector
    assert detector.class_names == sorted(KEPT, key=KEPT.get) and detector.category_ids == sorted(KEPT.values())

    # step 0: the kept classes' AP is the source model's, class by class
    (metrics,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    for name in KEPT:
        assert metrics[f"val/AP/{name}"] == pytest.approx(source_metrics[f"val/AP/{name}"], abs=1e-9), name
    # what makes them equal for any weights: the kept classes' heatmap logits are the source's channels
    source = detector_from_checkpoint(load_checkpoint(checkpoint), checkpoint).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # the layout of the source's (validation left the detector in inference.channels_last): same rounding
        detector.to(memory_format=torch.contiguous_format)
        expected, actual = source(images)[-1]["heatmap"], detector.eval()(images)[-1]["heatmap"]
    for row, name in enumerate(detector.class_names):
        torch.testing.assert_close(actual[:, row], expected[:, source_names.index(name)], rtol=0, atol=0)

    # the same checkpoint into a detector whose classes all differ: heatmap layer at its prior, the rest loaded
    other = compose_tiny(subset, tmp_path / "other", "centernet")
    _, fresh, _ = build(other)
    fresh.detector.class_names = ["a", "b", "c"]
    summary = initialise_from(fresh.detector, checkpoint)
    assert summary["kept"] == [] and summary["reinitialised"] == ["a", "b", "c"]
    assert summary["not_in_checkpoint"] == ["heads.0.heatmap.2.weight", "heads.0.heatmap.2.bias"]
    assert torch.allclose(fresh.detector.heads[0].heatmap[2].bias, torch.tensor(heatmap_bias()))
    assert torch.equal(fresh.detector.heads[0].size[2].weight, detector.heads[0].size[2].weight)
    assert trainer.current_epoch == 0 and trainer.global_step == 0
