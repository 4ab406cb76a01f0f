"""Learning-rate schedules that work for any positive number of steps, and their time-budgeted planning.

:func:`one_cycle` is torch's ``OneCycleLR`` with a warm-up of at least one step: torch's warm-up ends at step
``pct_start * total_steps - 1``, which is 0 for 10 steps at ``pct_start=0.1`` (a division by zero) and
negative below. :class:`TimeBudgetSchedule` re-plans a schedule that takes ``total_steps`` once, from the
measured step time, when the trainer has a time budget (``trainer.max_time``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from keypointdet.log import get_logger

log = get_logger(__name__)

# a warm-up step, a peak and an annealing step
MIN_CYCLE_STEPS = 3


def one_cycle(optimizer: Optimizer, total_steps: int, max_lr: float, pct_start: float = 0.1, **kwargs: Any) -> LRScheduler:
    """Torch's ``OneCycleLR`` over ``total_steps``, with ``pct_start`` raised to ``2 / total_steps`` when
    lower, so that the warm-up ends at step 1 or later (step 0 at ``max_lr / div_factor``, the peak at the
    end of the warm-up, then annealing to the last step). Unchanged from torch from 20 steps on at the
    default 0.1. Fewer than 3 steps cannot hold a warm-up and an annealing: the learning rate is then
    ``max_lr`` throughout. ``kwargs``: the other arguments of ``OneCycleLR``.
    """
    if total_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps}")
    if total_steps < MIN_CYCLE_STEPS:
        for group in optimizer.param_groups:
            group["lr"] = max_lr
        return LambdaLR(optimizer, lambda step: 1.0)
    pct_start = max(pct_start, 2 / total_steps)
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start, **kwargs)


def warmup_steps(scheduler: LRScheduler) -> float:
    """The step at which ``scheduler``'s learning rate peaks (the end of a one-cycle warm-up; 0 otherwise)."""
    if isinstance(scheduler, OneCycleLR):
        return float(scheduler._schedule_phases[0]["end_step"])
    return 0.0


def planned_steps(
    remaining_seconds: float, step_seconds: float, validation_seconds: float, steps_between_validations: float
) -> int:
    """Training steps that fit in ``remaining_seconds`` when each costs ``step_seconds`` and every
    ``steps_between_validations`` steps a validation costs ``validation_seconds``."""
    per_step = step_seconds + validation_seconds / steps_between_validations
    return max(1, int(remaining_seconds / per_step))


def end_at_validation(steps: int, steps_per_validation: int) -> int:
    """``steps`` rounded down to a multiple of ``steps_per_validation`` when at least one fits, so that the
    run's last step is validated (and checkpointed); unchanged when fewer steps fit."""
    return steps // steps_per_validation * steps_per_validation if steps >= steps_per_validation else steps


class TimeBudgetSchedule(pl.Callback):
    """Plans a step-wise schedule that takes ``total_steps`` from the time budget (``trainer.max_time``).

    The LightningModule plans it first from the trainer's step estimate (``max_epochs`` / ``max_steps``),
    which means nothing under a time budget. This callback times the validation of the sanity check and
    the ``measure_steps`` training steps after the first ``skip_steps`` (fewer, at least one, when they take
    more than ``measure_share`` of the budget), then once: plans the steps that fit in the remaining time
    (validations included; ending with one, see :func:`end_at_validation`), keeps the smaller of that and
    the current plan (whichever limit ends first), and when smaller swaps in the module's schedule over the
    remaining steps (the steps so far were at the very start of the long plan's warm-up, so the new cycle
    continues from their learning rate: warm-up, peak, annealing) and ends the run there (``max_steps``);
    with fewer than :data:`MIN_CYCLE_STEPS` steps left it only ends the run there. The plan is in the
    checkpoint (the callback's state and the scheduler's own ``total_steps``), so a resumed run keeps it.
    Without ``max_time``, or when the module has no ``plan_schedule`` or the scheduler no ``total_steps``,
    it does nothing.
    """

    def __init__(self, skip_steps: int = 2, measure_steps: int = 10, measure_share: float = 0.05) -> None:
        self.skip_steps = skip_steps
        self.measure_steps = measure_steps
        self.measure_share = measure_share
        self.planned_steps: int | None = None
        self._validation_seconds = 0.0
        self._started_at: float | None = None

    @staticmethod
    def _timer(trainer: pl.Trainer) -> Timer | None:
        timers = [callback for callback in trainer.callbacks if isinstance(callback, Timer)]
        return timers[0] if timers and timers[0].time_remaining() is not None else None

    @staticmethod
    def _replannable(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        configs = trainer.lr_scheduler_configs
        return (
            hasattr(pl_module, "plan_schedule")
            and len(configs) == 1
            and configs[0].interval == "step"
            and hasattr(configs[0].scheduler, "total_steps")
        )

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A full validation's cost, from the sanity check's few batches (timed by the Timer as validation)."""
        timer = self._timer(trainer)
        batches = sum(trainer.num_sanity_val_batches)
        if timer is not None and batches:
            self._validation_seconds = timer.time_elapsed("validate") / batches * sum(trainer.num_val_batches)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.planned_steps is not None:  # resumed: the scheduler's state holds the plan
            trainer.fit_loop.epoch_loop.max_steps = self.planned_steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        timer = self._timer(trainer)
        step = trainer.global_step
        if timer is None or self.planned_steps is not None:
            return
        if step == self.skip_steps:
            self._started_at = timer.time_elapsed()
        measured = step - self.skip_steps
        budget_share = timer.time_elapsed() / (timer.time_elapsed() + timer.time_remaining())
        if self._started_at is None or measured < 1:
            return
        if measured < self.measure_steps and budget_share < self.measure_share:
            return
        step_seconds = (timer.time_elapsed() - self._started_at) / measured
        self._started_at = None
        if not self._replannable(trainer, pl_module):
            return
        config = trainer.lr_scheduler_configs[0]
        steps_per_validation = trainer.num_training_batches * (trainer.check_val_every_n_epoch or 1)
        fits = step + planned_steps(timer.time_remaining(), step_seconds, self._validation_seconds, steps_per_validation)
        total = min(max(end_at_validation(fits, steps_per_validation), step + 1), config.scheduler.total_steps)
        self.planned_steps = total
        # The steps so far were at the start of the long plan's warm-up: a whole cycle over the rest. Fewer than
        # MIN_CYCLE_STEPS left cannot hold one; those steps stay on the long plan, which also keeps the scheduler's
        # kind the one a resumed run rebuilds (its state then loads into the same class).
        if total < config.scheduler.total_steps and total - step >= MIN_CYCLE_STEPS:
            config.scheduler = pl_module.plan_schedule(trainer.optimizers[0], total - step)
        trainer.fit_loop.epoch_loop.max_steps = total
        log.info(
            f"time budget: {step_seconds:.3f} s per step, {self._validation_seconds:.1f} s per validation, "
            f"{timer.time_remaining():.0f} s left: the schedule is planned over {total} steps"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_steps = state_dict["planned_steps"]
