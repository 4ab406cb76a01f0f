"""Crash-safe runs: kills at any point leave whole checkpoints that resume to the uninterrupted result; signals
save a resumable checkpoint; corrupt checkpoints and non-finite losses stop with a message naming the cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detector_checkpoint import compose_tiny

from keypointdet.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint, non_finite_tensors
from keypointdet.module import NonFiniteLossError
from keypointdet.runs.train import train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS_PER_EPOCH = 2, 2
TINY_RUN = (
    "trainer=cpu", "logger=none", "model=centernet", "backbone=resnet18", "backbone.neck_channels=[32,32,32]",
    "model.head_channels=16", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=4",
    "data.input_size=64", "trainer.precision=32", f"trainer.max_epochs={EPOCHS}",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}", "trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
    "++trainer.num_sanity_val_steps=0", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
    "evaluate_best=false", "seed=11", "~callbacks.rich_progress_bar", "~callbacks.wandb_images",
)  # fmt: skip


def train_subprocess(
    dataset: Path, run_dir: Path, *overrides: str, base: tuple[str, ...] = TINY_RUN, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``train.py`` with ``base`` and ``overrides``; fails the test when it is still running after ``timeout``
    seconds (a hang), killing it with every process it started."""
    command = [
        sys.executable, str(ROOT / "train.py"), *base, f"data.root={dataset}", f"hydra.run.dir={run_dir}", *overrides
    ]  # fmt: skip
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}"}
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"train.py {' '.join(overrides)} still running after {timeout} s")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == EPOCHS * STEPS_PER_EPOCH
    return checkpoint["state_dict"]


def assert_every_checkpoint_is_whole(run_dir: Path) -> None:
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        load_checkpoint(path)


def test_killed_while_writing_a_checkpoint_resumes_and_ends_at_the_uninterrupted_weights(tiny_dataset, tmp_path):
    straight = train_subprocess(tiny_dataset, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    # writes 1 and 2: epoch 0's best by mAP and last.ckpt; the third (epoch 1's) is killed half-way
    killed = train_subprocess(
        tiny_dataset, tmp_path / "killed", "+callbacks.crash._target_=crash_hooks.KillDuringCheckpointWrite",
        "+callbacks.crash.write_number=3",
    )
    assert killed.returncode == -signal.SIGKILL
    assert_every_checkpoint_is_whole(tmp_path / "killed")
    resumed = train_subprocess(
        tiny_dataset, tmp_path / "resumed", f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = final_weights(tmp_path / "straight")
    for name, value in final_weights(tmp_path / "resumed").items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill", ["step=3", "validation_epoch=1"], ids=["mid-epoch", "during-validation"]
)
def test_killed_mid_epoch_or_during_validation_resumes_from_last_and_finishes(tiny_dataset, tmp_path, kill):
    killed = train_subprocess(tiny_dataset, tmp_path / "killed", "+callbacks.crash._target_=crash_hooks.KillAt", f"+callbacks.crash.{kill}")
    assert killed.returncode == -signal.SIGKILL
    assert_every_checkpoint_is_whole(tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    resumed = train_subprocess(
        tiny_dataset, tmp_path / "resumed", f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final_weights(tmp_path / "resumed")


def tiny_config(dataset: Path, run_dir: Path, *overrides: str):
    return compose_tiny(dataset, run_dir, "centernet", *TINY_RUN[7:], *overrides)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_resumable_checkpoint_of_the_current_step_and_exits_non_zero(tiny_dataset, tmp_path, signal_name):
    cfg = tiny_config(
        tiny_dataset, tmp_path / "run", "+callbacks.crash._target_=crash_hooks.KillAt",
        f"+callbacks.crash.signal_name={signal_name}", "+callbacks.crash.step=0",
    )  # fmt: skip
    sigint_handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit, match="last.ckpt") as stop:
        train(cfg)
    assert stop.value.code != 0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 1  # the batch during which the signal came was finished
    assert signal.getsignal(signal.SIGINT) is sigint_handler


def test_a_loss_made_infinite_stops_naming_step_term_and_images_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path):
    cfg = tiny_config(
        tiny_dataset, tmp_path / "run", "+callbacks.poison._target_=crash_hooks.PoisonTargets", "+callbacks.poison.step=3"
    )
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 1\): loss term .*size=inf.* for the images \[\d+"):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == STEPS_PER_EPOCH


@pytest.mark.slow  # three Python processes importing torch and Lightning: 31 s on an idle 2-core machine
def test_a_loss_made_infinite_on_one_ddp_rank_stops_every_rank_naming_it_and_keeps_the_last_good_checkpoint(
    tiny_dataset, tmp_path
):
    record = tmp_path / "record"
    record.mkdir()
    result = train_subprocess(
        tiny_dataset, tmp_path / "run", "+callbacks.poison._target_=crash_hooks.PoisonTargets",
        "+callbacks.poison.step=3", "+callbacks.poison.rank=1", f"+callbacks.poison.record={record}",
        base=("trainer=ddp_cpu", *TINY_RUN[1:]),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]  # the error, not a kill or the timeout
    image_ids = json.loads((record / "image_ids.json").read_text())
    expected = f"non-finite loss at step 3 (epoch 1): rank 1: loss term loss=inf, size=inf for the images {image_ids};"
    # both ranks raised it themselves (rank 0 from the summed flag, its own batch finite), with the same message
    messages = [(record / f"error_rank{rank}.txt").read_text() for rank in (0, 1)]
    assert messages[0] == messages[1] and messages[0].startswith(expected) and "rank 0" not in messages[0]
    assert f"NonFiniteLossError: {messages[0]}" in result.stderr
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    for path in checkpoints.iterdir():
        checkpoint = load_checkpoint(path)
        assert checkpoint["global_step"] == STEPS_PER_EPOCH
        assert not non_finite_tensors(checkpoint["state_dict"])


def test_no_checkpoint_with_non_finite_weights_is_written(tmp_path):
    with pytest.raises(CheckpointError, match="non-finite weights in detector.w"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"detector.w": torch.tensor([1.0, float("nan")])}}, tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())


def test_resuming_from_a_truncated_checkpoint_names_the_file(tiny_dataset, tmp_path):
    truncated = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=f"{truncated} is not a readable checkpoint"):
        train(tiny_config(tiny_dataset, tmp_path / "run", f"ckpt_path={truncated}"))
