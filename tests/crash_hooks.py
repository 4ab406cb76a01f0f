"""Ways for tests to kill or poison a training run at a chosen point, added as callbacks from the command line:
``+callbacks.crash._target_=crash_hooks.KillDuringCheckpointWrite`` (with ``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import IO, Callable

import pytorch_lightning as pl

import keypointdet.checkpoints
from keypointdet.module import NonFiniteLossError


class KillDuringCheckpointWrite(pl.Callback):
    """SIGKILL this process half-way through writing its ``write_number``-th checkpoint file."""

    def __init__(self, write_number: int = 2) -> None:
        self.write_number = write_number
        self.writes = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        write_atomically = keypointdet.checkpoints.write_atomically

        def dying_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
            self.writes += 1
            if self.writes < self.write_number:
                return write_atomically(path, write)

            def half_then_kill(file: IO[bytes]) -> None:
                buffer = io.BytesIO()
                write(buffer)
                file.write(buffer.getvalue()[: buffer.tell() // 2])
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            return write_atomically(path, half_then_kill)

        keypointdet.checkpoints.write_atomically = dying_write


class KillAt(pl.Callback):
    """Send ``signal_name`` to this process at the start of training batch ``step`` (global step), or of the
    first validation batch of epoch ``validation_epoch``."""

    def __init__(self, signal_name: str = "SIGKILL", step: int | None = None, validation_epoch: int | None = None):
        self.signal = signal.Signals[signal_name]
        self.step, self.validation_epoch = step, validation_epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int, *args) -> None:
        if trainer.current_epoch == self.validation_epoch and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signal)


class PoisonTargets(pl.Callback):
    """An infinite CenterNet size target in the batch of global step ``step`` (of rank ``rank`` only, when given;
    never when ``step`` is None). ``record``: a directory that receives the poisoned batch's image ids
    (``image_ids.json``) and the :class:`NonFiniteLossError` message of every rank that raised it
    (``error_rank<r>.txt``)."""

    def __init__(self, step: int | None, rank: int | None = None, record: str | None = None) -> None:
        self.step, self.rank, self.record = step, rank, Path(record) if record else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.record is None:
            return
        stop_on_non_finite = pl_module._stop_on_non_finite

        def recording_stop(*args, **kwargs) -> None:
            try:
                stop_on_non_finite(*args, **kwargs)
            except NonFiniteLossError as error:
                (self.record / f"error_rank{trainer.global_rank}.txt").write_text(str(error))
                raise

        pl_module._stop_on_non_finite = recording_stop

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            batch["size"][:] = float("inf")
            if self.record:
                (self.record / "image_ids.json").write_text(json.dumps(batch["image_id"].tolist()))
