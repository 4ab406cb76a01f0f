"""README "Pretrained detectors": every command, run as written with tiny stand-ins (converted shared instances,
the embedded dataset in the COCO 2017 layout), on CPU; eval.py on a converted checkpoint under both protocols."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_coco_layout
from test_convert_official import INSTANCES, OFFICIAL, official_state_dict, overrides, save_official, shared

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"no official reference data at {OFFICIAL}")

# README file name -> (shared instance standing in for it, official file form)
STAND_INS = {
    "ctdet_coco_resdcn18": ("centernet_resdcn18", "centernet"),
    "ctdet_coco_dla_2x": ("centernet_dla34", "centernet"),
    "ctdet_coco_hg": ("centernet_hourglass_tiny", "centernet"),
    "CornerNet_500000": ("cornernet_hourglass_tiny", "cornernet"),
}
TINY = ["trainer=cpu", "data.num_workers=0", "trainer.enable_progress_bar=false"]


def readme_commands(program: str) -> list[str]:
    """The commands of the README's "Pretrained detectors" section that start with ``python <program>``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Pretrained detectors", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"python {re.escape(program)} [^`\n]*", section)


def run(arguments: list[str], cwd: Path) -> str:
    """``python ARGUMENTS`` in ``cwd`` (where the README's file names are); the entry-point scripts are the repo's."""
    script = [str(ROOT / arguments[0])] if arguments[0].endswith(".py") else arguments[:1]
    result = subprocess.run([sys.executable, *script, *arguments[1:]], cwd=cwd, capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def workdir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the README's official file names (shared instances) and the tiny COCO layout."""
    directory = tmp_path_factory.mktemp("pretrained")
    for name, (instance, form) in STAND_INS.items():
        suffix = ".pkl" if form == "cornernet" else ".pth"
        save_official(official_state_dict(shared(instance)), directory / f"{name}{suffix}", form)
    write_coco_layout(tiny_dataset, directory / "coco2017")
    return directory


def convert(command: str, workdir: Path) -> Path:
    """Run a README conversion command (with the reduced hourglass's sizes for the hourglass stand-ins)."""
    arguments = shlex.split(command)[1:]
    output = next(argument.split("=", 1)[1] for argument in arguments if argument.startswith("output="))
    instance = STAND_INS[Path(output).stem][0]
    backbone = [f"backbone.{key}={json.dumps(value).replace(' ', '')}" for key, value in (overrides(shared(instance)) or {}).items()]
    assert INSTANCES[instance] in command
    run([*arguments, *backbone, f"hydra.run.dir={workdir / 'convert' / instance}"], workdir)
    return workdir / output


@pytest.mark.slow  # 3 to 5 minutes each on 2 shared CPU cores (one eval.py process per command)
@pytest.mark.parametrize("name", list(STAND_INS))
def test_readme_convert_and_evaluate_commands_run_as_written(name: str, workdir: Path) -> None:
    (conversion,) = [command for command in readme_commands("-m keypointdet.tools.convert_official") if name in command]
    assert convert(conversion, workdir).is_file()
    evaluations = [command for command in readme_commands("eval.py") if f"ckpt_path={name}.ckpt" in command]
    assert len(evaluations) == (2 if name.startswith("CornerNet") else 3)
    for index, command in enumerate(evaluations):
        arguments = [argument.replace("/data/coco2017", str(workdir / "coco2017")) for argument in shlex.split(command)[1:]]
        output = workdir / "eval" / f"{name}_{index}"
        run([*arguments, *TINY, f"hydra.run.dir={output}"], workdir)
        metrics = json.loads((output / "metrics.json").read_text())
        assert 0.0 <= metrics["val/mAP"] <= 1.0


@pytest.mark.slow  # about 80 s on 2 shared CPU cores
def test_eval_of_a_converted_checkpoint_under_both_protocols(workdir: Path) -> None:
    """The same converted model, letterboxed to 64 pixels and at the images' own resolution: both evaluate on CPU,
    and the native protocol's boxes are those of larger inputs (other results)."""
    (conversion,) = [command for command in readme_commands("-m keypointdet.tools.convert_official") if "resdcn18" in command]
    checkpoint = convert(conversion, workdir)
    results = {}
    for protocol in ("letterbox", "native"):
        output = workdir / "protocols" / protocol
        run(["eval.py", f"ckpt_path={checkpoint}", "data=coco", f"data.root={workdir / 'coco2017'}", "data.input_size=64",
             f"data.eval_resize={protocol}", *TINY, f"hydra.run.dir={output}"], workdir)  # fmt: skip
        results[protocol] = json.loads((output / "results.json").read_text())
        assert results[protocol] and {"val/mAP", "val/mAP50"} <= set(json.loads((output / "metrics.json").read_text()))
    assert results["letterbox"] != results["native"]


@pytest.mark.slow  # about 40 s on 2 shared CPU cores
def test_readme_fine_tune_command_starts_from_the_converted_weights(workdir: Path) -> None:
    (conversion,) = [command for command in readme_commands("-m keypointdet.tools.convert_official") if "resdcn18" in command]
    convert(conversion, workdir)
    (command,) = readme_commands("train.py")
    coco = workdir / "coco2017"
    files = {"/data/mine/train.json": coco / "annotations/instances_train2017.json", "/data/mine/val.json":
             coco / "annotations/instances_val2017.json", "/data/mine/images": coco / "train2017"}  # fmt: skip
    script, *overrides = shlex.split(command)[1:]
    arguments = [script]
    for argument in overrides:
        key, _, value = argument.partition("=")
        if key == "data.val_img_dir":
            value = str(coco / "val2017")
        arguments.append(f"{key}={files.get(value, value)}")
    tiny = [*TINY, "logger=none", "~callbacks", "data.input_size=64", "data.batch_size=2", "trainer.max_steps=1",
            "trainer.limit_val_batches=0", "evaluate_best=false", f"hydra.run.dir={workdir / 'fine_tune'}"]  # fmt: skip
    log = run([*arguments, *tiny], workdir)
    # everything but the 80-class heatmap layer: the configs build exactly the converted network
    assert "model.init_from=ctdet_coco_resdcn18.ckpt" in log
    assert "left at their initialisation ['heads.0.heatmap.2.weight', 'heads.0.heatmap.2.bias']" in log
    assert "checkpoint tensors ignored []" in log  # the 80 COCO rows have no class of this name: none kept
