"""The sweep summary: a Hydra callback that gives every multirun job a status line, crashes included."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from keypointdet.io import write_text_atomically
from keypointdet.log import get_logger

log = get_logger(__name__)


class SweepSummary(HydraCallback):
    """One status line per multirun job, so that a crashed job neither hides nor is hidden by the others.

    After each job, writes ``<job dir>/job_status.json`` (status, overrides, optimised metric or error) and
    rewrites ``<sweep dir>/sweep_summary.tsv`` from all of them. At the end of a sweep that finished (the
    Optuna sweeper continues after failed trials), logs the table and raises when a job failed, so the
    command exits non-zero. Hydra's basic sweeper already raises the first failure after running every job.
    """

    summary_name = "sweep_summary.tsv"
    status_name = "job_status.json"

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self._record(config, job_return)

    @rank_zero_only  # a job running one task per device (SLURM) records itself once
    def _record(self, config: DictConfig, job_return: JobReturn) -> None:
        status = {
            "job": int(config.hydra.job.num),
            "status": job_return.status.name,
            "overrides": list(job_return.overrides or []),
            "metric": config.get("optimized_metric"),
            "value": None,
            "error": None,
        }
        try:
            status["value"] = job_return.return_value
        except Exception as error:  # noqa: BLE001 - the job's own exception, re-raised by Hydra's sweeper
            status["error"] = f"{type(error).__name__}: {error}"
        output_dir = Path(config.hydra.runtime.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / self.status_name, json.dumps(status, indent=2))
        if job_return.status == JobStatus.FAILED:
            log.error(f"job {status['job']} FAILED ({status['error']}) overrides: {' '.join(status['overrides'])}")
        self.write_summary(Path(config.hydra.sweep.dir))

    @classmethod
    def read_statuses(cls, sweep_dir: Path) -> list[dict[str, Any]]:
        """Every job's ``job_status.json`` under ``sweep_dir``, by job number (jobs of a parallel launcher
        that have not written theirs yet are left out)."""
        statuses = []
        for path in sweep_dir.rglob(cls.status_name):
            try:
                statuses.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return sorted(statuses, key=lambda status: status["job"])

    @classmethod
    def write_summary(cls, sweep_dir: Path) -> list[dict[str, Any]]:
        statuses = cls.read_statuses(sweep_dir)
        table = io.StringIO()
        writer = csv.writer(table, delimiter="\t", lineterminator="\n")
        writer.writerow(["job", "status", "metric", "value", "overrides", "error"])
        for status in statuses:
            writer.writerow(
                [status["job"], status["status"], status["metric"], status["value"],
                 " ".join(status["overrides"]), status["error"] or ""]
            )
        write_text_atomically(sweep_dir / cls.summary_name, table.getvalue())
        return statuses

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = self.read_statuses(sweep_dir) if sweep_dir.is_dir() else []
        if not statuses:
            return
        summary = (sweep_dir / self.summary_name).read_text()
        log.info(f"sweep summary ({sweep_dir / self.summary_name}):\n{summary}")
        failed = [status["job"] for status in statuses if status["status"] != JobStatus.COMPLETED.name]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(statuses)} sweep jobs failed (jobs {failed}); see {sweep_dir / self.summary_name}"
            )
