"""Hydra sweeps: real multiruns of train.py, crash reporting, the Optuna searches, multirun + DDP, SLURM."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import read_write
from test_wandb import offline_runs

from keypointdet.runs.train import build, configure_sweep_wandb

ROOT = Path(__file__).resolve().parents[1]


def multirun(tiny_dataset: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python train.py -m`` on the tiny dataset, CPU, one train + one val batch per job."""
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", "trainer=cpu", "trainer.fast_dev_run=true",
        "evaluate_best=false", f"data.root={tiny_dataset}", "data.num_workers=0", "data.batch_size=4",
        "data.val_batch_size=4", "~callbacks.rich_progress_bar", f"hydra.sweep.dir={sweep_dir}", *overrides,
    ]
    env = {
        **os.environ, "WANDB_MODE": "offline", "PROJECT_ROOT": str(ROOT),
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}",  # tests/: crash_hooks
    }  # fmt: skip
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep_summary.tsv") as file:
        return list(csv.DictReader(file, delimiter="\t"))


@pytest.mark.slow  # two training jobs (~21 s); the documented sweep and the NaN-job sweep run multiruns in make test
def test_two_job_multirun_writes_each_job_and_its_wandb_run_grouped_by_sweep(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "alpha_sweep"
    result = multirun(tiny_dataset, sweep_dir, "logger=wandb", "model.loss.alpha=1,3")
    assert result.returncode == 0, result.stderr[-3000:]

    rows = summary_rows(sweep_dir)
    assert [(row["job"], row["status"], row["overrides"].split()[-1]) for row in rows] == [
        ("0", "COMPLETED", "model.loss.alpha=1"),
        ("1", "COMPLETED", "model.loss.alpha=3"),
    ]
    for job, alpha in ((0, 1), (1, 3)):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        assert float(rows[job]["value"]) == pytest.approx(metrics["val/mAP"])
        (run,) = offline_runs(sweep_dir / str(job))
        assert run.group == "alpha_sweep"
        assert run.tags == ["dev", f"model.loss.alpha={alpha}"]  # the swept value, not the common overrides
        assert run.config["model"]["loss"]["alpha"] == alpha


@pytest.mark.slow
def test_a_crashed_job_is_reported_without_hiding_the_others(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # 100 is not a multiple of the backbone's 32: the first job fails in setup, the second trains.
    result = multirun(tiny_dataset, sweep_dir, "logger=none", "data.input_size=100,128")
    assert result.returncode != 0

    failed, completed = summary_rows(sweep_dir)
    assert (failed["job"], failed["status"], completed["status"]) == ("0", "FAILED", "COMPLETED")
    assert "data.input_size=100" in failed["error"]
    assert "val/mAP" in json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert "job 0 FAILED" in result.stdout + result.stderr


def test_a_job_whose_loss_turns_non_finite_is_marked_failed_and_the_others_complete(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # job 0's first batch gets infinite targets (as from a corrupt image, or weights diverged by a too high lr)
    result = multirun(
        tiny_dataset, sweep_dir, "logger=none", "+callbacks.poison._target_=crash_hooks.PoisonTargets",
        "+callbacks.poison.step=0,null",
    )
    assert result.returncode != 0  # README: Sweeps

    failed, completed = summary_rows(sweep_dir)
    assert (failed["job"], failed["status"], completed["status"]) == ("0", "FAILED", "COMPLETED")
    assert failed["error"].startswith("NonFiniteLossError: non-finite loss at step 0 (epoch 0): loss term ")
    assert not (sweep_dir / "0" / "metrics.json").exists()
    metrics = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert float(completed["value"]) == pytest.approx(metrics["val/mAP"])
    assert "job 0 FAILED (NonFiniteLossError" in result.stdout + result.stderr
    # what the sweep exits with, after every job ran
    assert "keypointdet.module.NonFiniteLossError: non-finite loss at step 0" in result.stderr


@pytest.mark.slow
def test_multirun_with_ddp_processes_started_by_multiprocessing(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "ddp_sweep"
    result = multirun(tiny_dataset, sweep_dir, "logger=none", "trainer=ddp_cpu", "model.loss.alpha=1,3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["COMPLETED", "COMPLETED"]
    assert result.stdout.count("Launching 2 jobs") + result.stderr.count("Launching 2 jobs") == 1  # not re-run
    for job in (0, 1):
        assert "val/mAP" in json.loads((sweep_dir / str(job) / "metrics.json").read_text())


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "optuna"
    result = multirun(tiny_dataset, sweep_dir, "logger=none", "hparams_search=centernet_optuna",
                      "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    best = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_value" in best and "model.loss.size_weight" in best


@pytest.mark.parametrize(("search", "model"), [("centernet_optuna", "CenterNet"), ("cornernet_optuna", "CornerNet")])
def test_optuna_searches_maximise_val_map_over_the_model_loss_keys(compose_train, search, model):
    cfg = compose_train(f"hparams_search={search}")
    sweeper = cfg.hydra.sweeper
    assert cfg.model._target_.endswith(model)
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/mAP"
    searched = {key.removeprefix("model.loss.") for key in sweeper.params}
    assert {"alpha", "beta"} < searched <= set(cfg.model.loss)


def set_mode(cfg, mode: RunMode) -> None:
    with read_write(cfg.hydra):
        cfg.hydra.mode = mode
    HydraConfig.instance().set_config(cfg)


def test_optuna_jobs_are_tagged_with_their_values_of_the_search_space(compose_train, tmp_path):
    cfg = compose_train(
        "hparams_search=cornernet_optuna", "logger=wandb", "model.loss.alpha=2.5", "model.loss.push_weight=0.05",
        f"hydra.sweep.dir={tmp_path / 'search'}",
    )
    set_mode(cfg, RunMode.MULTIRUN)
    configure_sweep_wandb(cfg)
    assert cfg.logger.wandb.group == "search"
    assert list(cfg.logger.wandb.tags) == ["dev", "model.loss.alpha=2.5", "model.loss.push_weight=0.05"]


def test_multirun_refuses_a_strategy_that_relaunches_the_command_line(compose_train):
    cfg = compose_train("trainer=ddp_cpu", "trainer.strategy=ddp")
    set_mode(cfg, RunMode.MULTIRUN)
    with pytest.raises(ValueError, match="ddp_spawn") as error:
        build(cfg)
    assert "hydra/launcher=slurm" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [(("trainer=ddp_cpu", "trainer.strategy=ddp"), RunMode.RUN), (("trainer=ddp_cpu",), RunMode.MULTIRUN)],
)
def test_single_runs_and_spawned_processes_are_allowed(compose_train, overrides, mode):
    cfg = compose_train(*overrides)
    set_mode(cfg, mode)
    _, _, trainer = build(cfg)
    assert trainer.num_devices == 2


def test_slurm_launcher_runs_one_task_per_device(compose_train):
    cfg = compose_train(
        "hydra/launcher=slurm", "hydra.sweep.dir=/sweeps/alpha", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert (launcher.params["nodes"], launcher.params["tasks_per_node"], launcher.params["gpus_per_node"]) == (2, 8, 8)
    assert launcher.params["submitit_folder"].startswith("/sweeps/alpha")
    assert compose_train("hydra/launcher=submitit_slurm").hydra.launcher._target_.endswith("SlurmLauncher")
