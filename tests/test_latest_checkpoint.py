"""``checkpoints/last.ckpt`` (callbacks.last_checkpoint): written every N steps or minutes within an epoch and at
every epoch end, always the latest state whatever the best-by-metric checkpoint is."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import model_checkpoint

from keypointdet.checkpoints import AtomicCheckpointIO, load_checkpoint
from keypointdet.runs.train import build

STEPS = 4  # steps per epoch (16 images, batches of 2, limited to 4)


@pytest.fixture
def tiny_config(compose_train):
    """A tiny CenterNet config writing under ``tmp_path / "run"``: epochs of ``STEPS`` steps, no validation unless
    the overrides ask for it."""

    def compose(*overrides: str):
        return compose_train(
            "model=centernet", "backbone=hourglass_small_1stack", "backbone.dims=[16,16,24,32]",
            "backbone.modules=[1,1,1,1]", "backbone.stem_channels=16", "backbone.out_channels=16",
            "model.head_channels=16", "data.input_size=64", "trainer.precision=32", "data.batch_size=2",
            f"trainer.limit_train_batches={STEPS}", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
            "~callbacks.rich_progress_bar", "~callbacks.wandb_images", "trainer.enable_progress_bar=false",
            "evaluate_best=false", "seed=11", *overrides,
        )  # fmt: skip

    return compose


NO_BEST = "~callbacks.model_checkpoint"


def fit(cfg, *callbacks: pl.Callback) -> None:
    """``train.py``'s trainer fitted, with ``callbacks`` added (no final evaluation)."""
    datamodule, model, trainer = build(cfg)
    trainer.callbacks.extend(callbacks)
    trainer.fit(model, datamodule=datamodule)


@pytest.fixture
def writes(monkeypatch) -> list[tuple[str, int]]:
    """``(file name, global_step)`` of every checkpoint the trainer writes, in order."""
    recorded: list[tuple[str, int]] = []
    save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None) -> None:
        recorded.append((Path(path).name, checkpoint["global_step"]))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    return recorded


def at_epoch_end(steps: list[int]) -> list[int]:
    """``steps`` of the interval writes, plus the epoch end's unless the last interval write was at it."""
    return steps if steps and steps[-1] == STEPS else [*steps, STEPS]


@pytest.mark.parametrize("every", [2, 3])
def test_every_n_train_steps_writes_last_at_those_steps_within_the_epoch_and_at_its_end(
    tiny_config, tmp_path, writes, every
):
    fit(tiny_config(NO_BEST, f"callbacks.last_checkpoint.every_n_train_steps={every}"))
    expected = at_epoch_end([step for step in range(1, STEPS + 1) if step % every == 0])
    assert writes == [("last.ckpt", step) for step in expected]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == STEPS


class FakeClock(pl.Callback):
    """Lightning's checkpoint clock, advanced by ``seconds_per_step`` before every training step."""

    def __init__(self, seconds_per_step: float) -> None:
        self.seconds_per_step = seconds_per_step
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.now += self.seconds_per_step


def test_every_n_minutes_writes_last_when_that_much_time_has_passed_since_the_previous_write(
    tiny_config, writes, monkeypatch
):
    clock = FakeClock(seconds_per_step=25)
    monkeypatch.setattr(model_checkpoint, "time", SimpleNamespace(monotonic=clock.monotonic))
    fit(tiny_config(NO_BEST, "callbacks.last_checkpoint.every_n_minutes=1"), clock)

    # naive: the clock starts with training; a write when a minute has passed since the start or the last write
    expected, last_write = [], 0.0
    for step in range(1, STEPS + 1):
        if step * 25 - last_write >= 60:
            expected.append(step)
            last_write = step * 25
    assert expected == [3]  # the schedule this test means: one write within the epoch
    assert writes == [("last.ckpt", step) for step in at_epoch_end(expected)]


def test_last_holds_the_latest_state_when_the_best_checkpoint_is_an_earlier_one(tiny_config, tmp_path, writes):
    # the best-by-metric checkpoint monitors the lowest step here, so the first epoch's stays the best one
    fit(tiny_config(
        "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "callbacks.model_checkpoint.monitor=step",
        "callbacks.model_checkpoint.mode=min",
    ))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert load_checkpoint(checkpoints / "epoch_000.ckpt")["global_step"] == STEPS
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2 * STEPS
    assert [step for name, step in writes if name == "last.ckpt"] == [STEPS, 2 * STEPS]
