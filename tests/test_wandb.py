"""What an offline W&B run writes: config, loss terms, lr, val/mAP family, images with boxes, per-class AP table."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

from keypointdet.runs.train import train

# The .wandb file is a LevelDB-style log of protobuf records: a 7-byte header, then 32 KiB blocks of
# chunks with a 7-byte header each (crc32, length, type); a record spans FIRST / MIDDLE / LAST chunks.
WANDB_HEADER = b":W&B"
BLOCK_SIZE = 32768
CHUNK_HEADER = struct.Struct("<IHB")
FULL, LAST = 1, 4


@dataclass
class OfflineRun:
    """The records of an offline run, decoded: run settings, the last config, the history rows."""

    directory: Path
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def logged(self, key: str) -> list[Any]:
        return [row[key] for row in self.history if key in row]


def unflatten(items: Any) -> dict[str, Any]:
    """Record items (``key`` or ``nested_key`` path, JSON value) -> a nested dict."""
    row: dict[str, Any] = {}
    for item in items:
        *parents, name = list(item.nested_key) or [item.key]
        node = row
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = json.loads(item.value_json)
    return row


def read_offline_run(directory: Path) -> OfflineRun:
    """Decode the ``run-*.wandb`` file of an offline run directory (``offline-run-*``)."""
    (path,) = directory.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[: len(WANDB_HEADER)] == WANDB_HEADER
    run = OfflineRun(directory)
    position, pending = 7, b""
    while position + CHUNK_HEADER.size <= len(data):
        if BLOCK_SIZE - position % BLOCK_SIZE < CHUNK_HEADER.size:  # block trailer padding
            position += BLOCK_SIZE - position % BLOCK_SIZE
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        pending += data[start : start + length]
        position = start + length
        if kind not in (FULL, LAST):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        kind_name = record.WhichOneof("record_type")
        if kind_name == "run":
            run.group, run.tags = record.run.run_group, list(record.run.tags)
        elif kind_name == "config":
            run.config.update(unflatten(record.config.update))
        elif kind_name == "history":
            run.history.append(unflatten(record.history.item))
    return run


def offline_runs(output_dir: Path) -> list[OfflineRun]:
    return [read_offline_run(directory) for directory in sorted((output_dir / "wandb").glob("offline-run-*"))]


def test_offline_run_records_config_losses_metrics_images_and_per_class_ap(
    compose_train, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    cfg = compose_train(
        "logger=wandb", "logger.wandb.project=keypointdet-test", "logger.wandb.group=ablation",
        "logger.wandb.tags=[small,cpu]", "model.loss.alpha=3.0", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=1",
        "trainer.check_val_every_n_epoch=1", "evaluate_best=false", "callbacks.wandb_images.num_images=3",
        "~callbacks.rich_progress_bar",
    )
    metrics = train(cfg)
    assert os.environ["WANDB_MODE"] == "offline"
    (run,) = offline_runs(tmp_path / "run")

    assert run.group == "ablation" and run.tags == ["small", "cpu"]
    assert run.config["model"]["loss"]["alpha"] == 3.0  # the resolved config
    assert run.config["model"]["optimizer"]["lr"] == cfg.model.optimizer.lr
    assert run.config["global_batch_size"] == cfg.data.batch_size
    for term in ("loss", "heatmap", "size", "offset", "lr"):
        values = run.logged(f"train/{term}_step") or run.logged(f"train/{term}")
        assert values and all(isinstance(value, float) for value in values), term
    assert run.logged("val/mAP") == [metrics["val/mAP"]]
    assert run.logged("val/mAP50") == [metrics["val/mAP50"]]

    (images,) = run.logged("val/images/heatmap")
    assert images["count"] == 3
    for name in images["filenames"]:
        assert (run.directory / "files" / name).stat().st_size > 0
    ground_truth = json.loads((run.directory / "files" / images["all_boxes"][0]["ground_truth"]["path"]).read_text())
    class_names = {category["name"] for category in json.loads((tiny_dataset / "val.json").read_text())["categories"]}
    assert ground_truth["box_data"] and {box["box_caption"] for box in ground_truth["box_data"]} <= class_names

    (table,) = run.logged("val/AP_per_class")
    rows = json.loads((run.directory / "files" / table["path"]).read_text())
    assert rows["columns"] == ["class", "AP"]
    assert {row[0]: row[1] for row in rows["data"]} == {
        name.removeprefix("val/AP/"): value for name, value in metrics.items() if name.startswith("val/AP/")
    }
