"""train.py's run composed from the real configs: a fast_dev_run end to end, on any COCO-format data."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from conftest import remap_categories

from keypointdet.runs.train import build, train


def test_fast_dev_run_writes_metrics_and_prints_summary(compose_train, tmp_path, capsys):
    cfg = compose_train("trainer.fast_dev_run=true", "evaluate_best=false")
    metrics = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    assert {"val/mAP", "val/mAP50", "val/mAP75", "val/mAR100"} <= set(metrics)
    assert 0.0 <= metrics["val/mAP"] <= 1.0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("val/mAP=") and " val/mAP50=" in last_line


def test_coco_data_with_non_contiguous_category_ids(compose_train, tiny_dataset, tmp_path):
    ids = {1: 3, 2: 7, 3: 11, 4: 12, 5: 40, 6: 90}
    train_ann = remap_categories(tiny_dataset / "train.json", tmp_path / "train.json", ids)
    val_ann = remap_categories(tiny_dataset / "val.json", tmp_path / "val.json", ids)
    cfg = compose_train(
        "data=coco",
        f"data.train_ann={train_ann}",
        f"data.train_img_dir={tiny_dataset / 'train'}",
        f"data.val_ann={val_ann}",
        f"data.val_img_dir={tiny_dataset / 'val'}",
        "data.input_size=128",
        "trainer.fast_dev_run=true",
    )
    metrics = train(cfg)
    assert "val/mAP" in metrics
    assert {f"val/AP/{name}" for name in ("circle", "ring")} <= set(metrics)


def test_short_training_with_checkpoint_evaluates_best(compose_train, tmp_path):
    cfg = compose_train("trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.limit_train_batches=2")
    metrics = train(cfg)
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert "val/mAP" in metrics


@pytest.mark.slow
def test_cornernet_on_hourglass104_fast_dev_run(compose_train):
    cfg = compose_train(
        "model=cornernet", "backbone=hourglass104", "model.pool_channels=128", "trainer.fast_dev_run=true",
        "evaluate_best=false", "data.batch_size=2", "data.val_batch_size=2",
    )
    assert "val/mAP" in train(cfg)


def test_each_model_picks_its_default_backbone_unless_overridden(compose_train):
    assert compose_train().backbone.skip_connections is True
    cornernet = compose_train("model=cornernet").backbone
    assert cornernet._target_.endswith("Hourglass") and cornernet.num_stacks == 1
    assert compose_train("model=cornernet", "backbone=hourglass104").backbone.depth == 5
    assert compose_train("model=centernet", "backbone=hourglass_small").backbone.num_stacks == 2


class LossRecorder(pl.Callback):
    """Records the training-step loss and the dtype of the last head's raw heatmap outputs."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.head_dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def record(module, inputs, outputs):
            self.head_dtypes |= {value.dtype for name, value in outputs.items() if name.endswith("heatmap")}

        pl_module.detector.heads[-1].register_forward_hook(record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())


@pytest.mark.parametrize("model", ["centernet", "cornernet"])
def test_bf16_mixed_step_on_cpu_gives_finite_float32_losses(compose_train, model):
    cfg = compose_train(
        f"model={model}", "backbone=hourglass_small_1stack", "backbone.dims=[16,16,24,32]", "backbone.stem_channels=16",
        "backbone.out_channels=16", "data.input_size=64", "trainer.precision=bf16-mixed", "trainer.max_steps=2",
        "trainer.limit_val_batches=0", "~callbacks",
    )
    datamodule, module, trainer = build(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    assert recorder.head_dtypes == {torch.bfloat16}  # the network did run in bf16
    assert len(recorder.losses) == 2
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in recorder.losses)
    terms = {name: value for name, value in trainer.callback_metrics.items() if name.startswith("train/")}
    assert {"train/loss", "train/heatmap", "train/offset"} <= set(terms)
    assert all(torch.isfinite(value) for value in terms.values())
