"""One-cycle schedules for any number of steps, and their planning from a time budget (with a fake clock)."""

from __future__ import annotations

import math
import types

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import timer as lightning_timer
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

from keypointdet.schedules import TimeBudgetSchedule, end_at_validation, one_cycle, planned_steps

MAX_LR = 1.0


def learning_rates(total_steps: int, **kwargs) -> list[float]:
    """The learning rate of every step of a ``one_cycle`` run, stepped as Lightning does (after each step)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    scheduler = one_cycle(optimizer, total_steps, MAX_LR, **kwargs)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def naive_one_cycle(step: int, total: int, warmup_end: float, div: float = 25.0, final_div: float = 1e4) -> float:
    """Torch's documented one-cycle formula: cosine from max_lr / div to max_lr over [0, warmup_end], then
    cosine to max_lr / (div * final_div) over [warmup_end, total - 1]."""
    initial, final = MAX_LR / div, MAX_LR / (div * final_div)

    def cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))

    if step <= warmup_end:
        return cosine(initial, MAX_LR, step / warmup_end)
    return cosine(MAX_LR, final, (step - warmup_end) / (total - 1 - warmup_end))


@pytest.mark.parametrize("total", [1, 2])
def test_fewer_than_three_steps_keep_max_lr(total):
    assert learning_rates(total) == [MAX_LR] * total


def test_ten_steps_warm_up_for_one_step_then_anneal():
    # torch's own warm-up would end at 0.1 * 10 - 1 = 0 (ZeroDivisionError): raised to 2 / 10
    rates = learning_rates(10)
    assert rates == pytest.approx([naive_one_cycle(step, 10, warmup_end=1.0) for step in range(10)])
    assert rates[1] == MAX_LR and rates[-1] == pytest.approx(MAX_LR / 25e4)


def test_default_length_is_torch_one_cycle_unchanged():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=1500, pct_start=0.1)
    expected = []
    for _ in range(1500):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert learning_rates(1500) == expected


def test_planned_steps_share_the_budget_with_validations():
    # 100 s; 0.5 s per step and a 10 s validation every 40 steps: 0.75 s per step
    assert planned_steps(100.0, 0.5, 10.0, 40) == 133
    assert planned_steps(0.1, 0.5, 0.0, 40) == 1


def test_plans_end_with_a_validation_when_one_fits():
    assert (end_at_validation(100, 8), end_at_validation(96, 8), end_at_validation(7, 8)) == (96, 96, 7)


class Regression(pl.LightningModule):
    """A linear model with the one-cycle schedule (its ``plan_schedule`` as DetectionModule's)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.rates: list[float] = []

    def training_step(self, batch, batch_idx):
        self.rates.append(self.optimizers().param_groups[0]["lr"])
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.validated_at = self.global_step

    def plan_schedule(self, optimizer, total_steps):
        return one_cycle(optimizer, total_steps, MAX_LR)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=MAX_LR)
        scheduler = self.plan_schedule(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FakeClock(pl.Callback):
    """Every training step takes exactly ``step_seconds`` on the Timer's clock (validations take no time)."""

    def __init__(self, step_seconds: float) -> None:
        self.now = 0.0
        self.step_seconds = step_seconds

    def monotonic(self) -> float:
        return self.now

    def on_train_batch_start(self, *args) -> None:
        self.now += self.step_seconds


def run_with_budget(
    monkeypatch, seconds: int, max_epochs: int, step_seconds: float = 1.0
) -> tuple[Regression, pl.Trainer, FakeClock]:
    clock = FakeClock(step_seconds)
    monkeypatch.setattr(lightning_timer, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    data = DataLoader(TensorDataset(torch.randn(16, 2), torch.randn(16, 1)), batch_size=2)  # 8 steps per epoch
    model = Regression()
    trainer = pl.Trainer(
        max_time={"seconds": seconds}, max_epochs=max_epochs, callbacks=[clock, TimeBudgetSchedule(2, 5)],
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data, data)
    return model, trainer, clock


def test_time_budget_plans_warm_up_peak_and_end_inside_the_budget(monkeypatch):
    model, trainer, clock = run_with_budget(monkeypatch, seconds=100, max_epochs=100_000)
    # 1 s per step: 7 steps done, 93 s left: 100 steps fit, 96 planned (12 epochs of 8 steps, each validated),
    # a cycle over the last 89 steps
    assert trainer.global_step == 96 and clock.now <= 100 and model.validated_at == 96
    peak = model.rates.index(max(model.rates))
    assert model.rates[peak] == pytest.approx(MAX_LR, rel=1e-3) and 0 < peak < 20  # the peak: step 7 + 7.9
    assert model.rates[-1] == pytest.approx(MAX_LR / 25e4, rel=0.01)
    assert all(a >= b for a, b in zip(model.rates[peak:], model.rates[peak + 1 :]))


def test_epochs_that_end_before_the_budget_keep_their_plan(monkeypatch):
    model, trainer, _ = run_with_budget(monkeypatch, seconds=100, max_epochs=5)
    assert trainer.global_step == 40
    assert model.rates[-1] == pytest.approx(MAX_LR / 25e4, rel=0.01)


def test_slow_steps_are_planned_after_a_share_of_the_budget(monkeypatch):
    model, trainer, clock = run_with_budget(monkeypatch, seconds=100, max_epochs=100_000, step_seconds=10.0)
    # re-planned after step 3 (30 s, beyond 5% of the budget): 7 more steps fit, 8 planned (one epoch):
    # a 5-step cycle, its peak at its step 1
    assert trainer.global_step == 8 and clock.now <= 100 and model.validated_at == 8
    assert model.rates[4] == MAX_LR and model.rates[-1] == pytest.approx(MAX_LR / 25e4, rel=0.01)


def test_a_plan_too_short_for_a_cycle_keeps_the_resumable_scheduler(monkeypatch):
    model, trainer, clock = run_with_budget(monkeypatch, seconds=50, max_epochs=100_000, step_seconds=10.0)
    # re-planned after step 3 (30 s): 2 more steps fit, too few for a cycle; the run ends there on the long plan
    assert trainer.global_step == 5 and clock.now <= 50
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, OneCycleLR) and scheduler.total_steps == 8 * 100_000
    # a resumed run rebuilds the configured scheduler and loads the saved state into it
    resumed = model.plan_schedule(torch.optim.SGD(model.parameters(), lr=MAX_LR), 8 * 100_000)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == scheduler.get_last_lr() and type(resumed) is type(scheduler)
