"""Every command of README.md and docs/*.md runs as written, on tiny data with tiny settings appended.

The list is tests/documented_commands.py; the first test fails when a document has a command the list does
not have (or the list one the documents dropped). Commands run in this process through their own entry point
(``runpy``, so Hydra parses the command line exactly as in a shell), except the multi-process ones and the
benchmarks, which run as subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_coco_layout, write_image
from documented_commands import COMMANDS, VARIANTS, NotRun, Slow, documented_commands
from hydra.core.global_hydra import GlobalHydra
from pose_data import with_keypoints
from test_data_voc import write_voc
from test_video import write_video

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train.py", "eval.py", "predict.py")
# appended to every train.py command (the dataset_stats tool composes the same config)
TINY_TRAINING = (
    "trainer.accelerator=cpu", "trainer.precision=32", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1", "++trainer.num_sanity_val_steps=0", "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false", "~callbacks.rich_progress_bar", "data.batch_size=2",
    "data.val_batch_size=2", "data.num_workers=0", "evaluate_best=false",
)  # fmt: skip
# appended unless the command relies on data=coco / data=voc's automatic input size (the test images are small)
TINY_INPUT_SIZE = "data.input_size=64"
MULTI_PROCESS = ("trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "trainer.strategy=ddp")


def test_every_documented_command_is_in_the_list_and_every_listed_command_is_documented():
    documented = documented_commands()
    missing = {command: document for command, document in documented.items() if command not in COMMANDS}
    assert not missing, f"documented commands without an entry in tests/documented_commands.py: {missing}"
    dropped = [command for command in COMMANDS if command not in documented]
    assert not dropped, f"tests/documented_commands.py lists commands no document has: {dropped}"


def write_one_image_folder(dataset: Path, mine: Path) -> Path:
    """``dataset``'s splits as one image folder with two annotation files (``/data/mine`` of the README)."""
    (mine / "images").mkdir(parents=True)
    for split in ("train", "val"):
        data = json.loads((dataset / f"{split}.json").read_text())
        for image in data["images"]:
            (mine / "images" / f"{split}_{image['file_name']}").symlink_to(dataset / split / image["file_name"])
            image["file_name"] = f"{split}_{image['file_name']}"
        (mine / f"{split}.json").write_text(json.dumps(data))
    return mine


@pytest.fixture(scope="module")
def workspace(tiny_dataset: Path, tiny_pose_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of the commands: the datasets they name (the embedded pose dataset in
    ``data/synthetic_pose``, COCO-17 keypoint files over the COCO layout's images), an image, and the run of the
    documented ``python train.py`` (``logs/train/runs/tiny``), whose ``last.ckpt`` is their checkpoint."""
    workspace = tmp_path_factory.mktemp("workspace")
    write_coco_layout(tiny_dataset, workspace / "coco2017")
    for split in ("train", "val"):
        annotations = workspace / "coco2017" / "annotations" / f"person_keypoints_{split}2017.json"
        with_keypoints(tiny_dataset / f"{split}.json", annotations, num_joints=17)
    write_one_image_folder(tiny_dataset, workspace / "mine")
    write_voc(workspace / "VOCdevkit")
    write_image(workspace / "image.jpg", 90, 120)
    write_video(tiny_dataset, workspace / "clip.mp4")
    (workspace / "a_folder").symlink_to(tiny_dataset / "val")
    (workspace / "data").mkdir()
    (workspace / "data" / "synthetic").symlink_to(tiny_dataset)
    (workspace / "data" / "synthetic_pose").symlink_to(tiny_pose_dataset)
    run_dir = workspace / "logs" / "train" / "runs" / "tiny"
    # a schedule that does not depend on max_epochs, so that the resume commands can train one more epoch
    argv = with_tiny_settings("python train.py", workspace, run_dir, tiny_dataset, ("optimizer=adam_multistep", "model.scheduler.milestones=[10]"))
    code, output = run_in_process(argv, workspace)
    assert code == 0 and (run_dir / "checkpoints" / "last.ckpt").is_file(), output
    return workspace


def substituted(command: str, workspace: Path) -> str:
    """The command with its placeholders replaced by the workspace's files."""
    replacements = {
        ".venv/bin/python ": "python ",
        "PYTHONPATH=src python ": "python ",  # the package is installed
        "$RUN": "logs/train/runs/tiny",
        "ckpt_path=<run>/": "ckpt_path=logs/train/runs/tiny/",
        "<run>": "tiny",
        "ckpt_path=FILE": "ckpt_path=logs/train/runs/tiny/checkpoints/last.ckpt",
        "ckpt_path=...": "ckpt_path=logs/train/runs/tiny/checkpoints/last.ckpt",
        "/data/coco2017": str(workspace / "coco2017"),
        "/data/mine": str(workspace / "mine"),
        "/data/VOCdevkit": str(workspace / "VOCdevkit"),
        "out=DIR": "out=generated",
        "num_train=N num_val=N seed=S": "num_train=3 num_val=2 seed=1",
        "[the run's overrides]": "",
    }
    for placeholder, value in replacements.items():
        command = command.replace(placeholder, value)
    # optional arguments written [key=value ...]
    return re.sub(r"(?<=\s)\[([\w.]+=[^\]]*)\]", r"\1", command)


def with_tiny_settings(
    command: str, workspace: Path, run_dir: Path, dataset: Path, extra: tuple[str, ...] = ()
) -> list[str]:
    """The command line (``python ...`` and its arguments), its placeholders replaced, with the tiny settings
    of its entry point, ``extra`` and the run / sweep directories appended."""
    argv = shlex.split(substituted(command, workspace))
    entry = argv[2] if argv[1] == "-m" else argv[1]
    if entry.startswith("benchmarks/"):  # argparse scripts: their own small-size arguments only
        return [*argv, *extra]
    tiny: list[str] = []
    if entry == "train.py" or entry.endswith("dataset_stats"):
        tiny += TINY_TRAINING
        automatic_size = any(a in ("data=coco", "data=voc") for a in argv) and not any(
            a.startswith("data.input_size=") for a in argv
        )
        tiny += [] if automatic_size else [TINY_INPUT_SIZE]
        tiny += [] if any(argument.startswith("logger") for argument in argv) else ["logger=none"]
        names_data = any(argument.startswith(("data=", "data.root=", "experiment=")) for argument in argv)
        # the pose model's default data is the embedded pose dataset
        default_data = workspace / "data" / "synthetic_pose" if "model=centernet_pose" in argv else dataset
        tiny += [] if names_data else [f"data.root={default_data}"]
    elif entry == "eval.py":
        tiny += ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
        tiny += ["data.input_size=64", "data.num_workers=0"] if any(a.startswith("data=") for a in argv) else []
    elif entry.endswith("export"):
        tiny += ["input_size=64"]
    return [*argv, *tiny, *extra, f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}"]


def run_in_process(argv: list[str], workspace: Path) -> tuple[int, str]:
    """Run ``python <script> ...`` / ``python -m <module> ...`` in this process, as ``python`` would; returns
    the exit code and the printed output."""
    GlobalHydra.instance().clear()
    previous_argv, previous_directory = sys.argv, Path.cwd()
    os.chdir(workspace)
    try:
        if argv[1] == "-m" and argv[2].startswith("keypointdet."):
            sys.argv = [argv[2], *argv[3:]]
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [str(ROOT / argv[1]), *argv[2:]]
            runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
        return 0, ""
    except SystemExit as exit_:
        return int(exit_.code or 0), f"exit {exit_.code}"
    finally:
        sys.argv = previous_argv
        os.chdir(previous_directory)
        GlobalHydra.instance().clear()


def run_subprocess(argv: list[str], workspace: Path) -> tuple[int, str]:
    script = [str(ROOT / argv[1])] if argv[1] != "-m" else argv[1:3]
    rest = argv[2:] if argv[1] != "-m" else argv[3:]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, *script, *rest], cwd=workspace, env=env, capture_output=True, text=True, timeout=600
    )
    return result.returncode, result.stdout[-3000:] + result.stderr[-3000:]


def check_outputs(argv: list[str], run_dir: Path, workspace: Path) -> None:
    """What the command must have written."""
    entry = argv[2] if argv[1] == "-m" else argv[1]
    arguments = dict(argument.split("=", 1) for argument in argv if "=" in argument)
    if entry == "train.py" and argv[2:3] == ["-m"]:
        with open(run_dir / "sweep_summary.tsv") as file:
            assert {row["status"] for row in csv.DictReader(file, delimiter="\t")} == {"COMPLETED"}
    elif entry in ("train.py", "eval.py"):
        assert "val/mAP" in json.loads((run_dir / "metrics.json").read_text())
    elif entry == "predict.py":
        output = workspace / arguments["output"] if "output" in arguments else run_dir
        if arguments["input"].endswith(".mp4"):  # a video: the drawn video and one JSON line per frame
            name = Path(arguments["input"]).stem
            assert (output / f"{name}.mp4").stat().st_size > 0
            lines = (output / f"{name}.jsonl").read_text().splitlines()
            assert lines and all(json.loads(line)["frame"] == i for i, line in enumerate(lines))
        else:
            assert json.loads((output / "detections.json").read_text())
    elif entry.endswith("export"):
        assert (workspace / arguments["output"]).stat().st_size > 0
    elif entry.endswith(("synthetic", "synthetic_pose")):
        assert json.loads((workspace / "generated" / "val.json").read_text())["images"]


def cases() -> list:
    params = []
    for command, setting in {**COMMANDS, **VARIANTS}.items():
        if isinstance(setting, NotRun):
            continue
        marks = [pytest.mark.slow] if isinstance(setting, Slow) else []
        extra = setting.overrides if isinstance(setting, Slow) else setting
        params.append(pytest.param(command, extra, marks=marks, id=command[:100]))
    return params


@pytest.mark.parametrize(("command", "extra"), cases())
def test_documented_command_runs(command, extra, workspace, tiny_dataset, tmp_path):
    if "ckpt_path=" in command and command.startswith("python train.py"):
        # resume: one more epoch than the run it continues, with its schedule
        extra = (*extra, "trainer.max_epochs=2", "optimizer=adam_multistep", "model.scheduler.milestones=[10]")
    argv = with_tiny_settings(command, workspace, tmp_path / "run", tiny_dataset, extra)
    # benchmarks set thread counts for their whole process
    if any(argument in MULTI_PROCESS for argument in argv) or "trainer.devices=2" in argv or "benchmarks/" in argv[1]:
        code, output = run_subprocess(argv, workspace)
    else:
        code, output = run_in_process(argv, workspace)
    assert code == 0, f"{shlex.join(argv)}\n{output}"
    if argv[1].startswith("benchmarks/"):  # a table row per measurement, none failed
        rows = [line for line in output.splitlines() if line.startswith("| ") and "---" not in line][1:]
        assert rows and not any("failed" in row for row in rows), output
        return
    check_outputs(argv, tmp_path / "run", workspace)
