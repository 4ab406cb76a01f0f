"""``train.py ckpt_path=FILE``: N epochs, stop, resume for M more == N + M epochs in one go; the same from a
checkpoint written within an epoch."""

from __future__ import annotations

import pytest
import torch
from detector_checkpoint import compose_tiny

from keypointdet.runs.train import train

N, M = 1, 1


def run(dataset, output_dir, model: str, max_epochs: int, *overrides: str) -> dict:
    """Train ``max_epochs`` epochs of 2 steps (no validation) and return the last checkpoint."""
    cfg = compose_tiny(
        dataset, output_dir, model,
        f"trainer.max_epochs={max_epochs}", "trainer.limit_train_batches=2", "trainer.limit_val_batches=0",
        "trainer.deterministic=true", "evaluate_best=false", "data.seed=5", "seed=11",
        # a checkpoint at every epoch end, without validation metric
        "callbacks.model_checkpoint.monitor=null", "~callbacks.rich_progress_bar", "~callbacks.wandb_images",
        # a scheduler whose state matters and does not depend on the planned number of steps
        "model.scheduler._target_=torch.optim.lr_scheduler.ExponentialLR", "~model.scheduler.max_lr",
        "~model.scheduler.pct_start", "+model.scheduler.gamma=0.8", "model.scheduler_interval=step",
        *overrides,
    )
    train(cfg)
    return torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("model", ["centernet", "cornernet"])
def test_resumed_training_ends_where_uninterrupted_training_ends(model, tiny_dataset, tmp_path):
    straight = run(tiny_dataset, tmp_path / "straight", model, N + M)
    first = run(tiny_dataset, tmp_path / "first", model, N)
    resume_from = f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"
    resumed = run(tiny_dataset, tmp_path / "resumed", model, N + M, resume_from)

    assert first["global_step"] == 2 * N
    assert resumed["global_step"] == straight["global_step"] == 2 * (N + M)
    assert resumed["epoch"] == straight["epoch"] == first["epoch"] + M
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the last M epochs changed the weights: equal end points are not equal start points
    assert any(not torch.equal(value, straight["state_dict"][name]) for name, value in first["state_dict"].items())
    for resumed_state, straight_state in zip(resumed["optimizer_states"], straight["optimizer_states"]):
        assert resumed_state["param_groups"] == straight_state["param_groups"]  # lr, betas, ...
        for index, moments in straight_state["state"].items():
            for key, value in moments.items():
                torch.testing.assert_close(resumed_state["state"][index][key], value, rtol=1e-5, atol=1e-6)
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]
    assert straight["lr_schedulers"][0]["last_epoch"] == 2 * (N + M)


def test_resumed_from_a_checkpoint_written_within_an_epoch_ends_where_uninterrupted_training_ends(
    tiny_dataset, tmp_path
):
    # epochs of 4 steps, last.ckpt also every 3 steps: the first run stops after step 3, in the middle of epoch 0
    overrides = ("trainer.limit_train_batches=4", "callbacks.last_checkpoint.every_n_train_steps=3")
    straight = run(tiny_dataset, tmp_path / "straight", "cornernet", 2, *overrides)
    first = run(tiny_dataset, tmp_path / "first", "cornernet", 2, *overrides, "trainer.max_steps=3")
    resume_from = f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"
    resumed = run(tiny_dataset, tmp_path / "resumed", "cornernet", 2, *overrides, resume_from)

    assert (first["global_step"], first["epoch"]) == (3, 0)
    assert resumed["global_step"] == straight["global_step"] == 8
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]
