"""Every command of README.md and docs/*.md, and how the test suite runs it (tests/test_documented_commands.py).

The README's ```bash blocks and its inline commands (`python ...`, `make ...`) are extracted by
:func:`documented_commands`; each one must be a key of :data:`COMMANDS`, so a command cannot be documented
without being run (or without saying here why it is not). A value is either

- a tuple of overrides appended after the tiny settings of its entry point (``()`` for none): the command
  is run as written, its placeholders (``FILE``, ``/data/coco2017``, ``image.jpg``, ...) replaced by tiny
  files of the test (:data:`PLACEHOLDERS`);
- :class:`NotRun` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# inline code that is a command: `python ...`, `.venv/bin/python ...`, `make ...`, `PYTHONPATH=... python ...`
INLINE_COMMAND = re.compile(r"`((?:\.venv/bin/)?python [^`]+|make [^`]+|make|PYTHONPATH=\S+ python [^`]+)`")
FENCED_BASH = re.compile(r"```bash\n(.*?)```", re.S)


@dataclass(frozen=True)
class NotRun:
    """A documented command the suite does not run, and why."""

    reason: str


@dataclass(frozen=True)
class Slow:
    """A command run only with ``-m slow`` (``make test-all``): its extra overrides."""

    overrides: tuple[str, ...] = ()


def normalise(command: str) -> str:
    """One line, single spaces, comment removed."""
    return re.sub(r"\s+", " ", re.sub(r"(^|\s)#.*$", "", command)).strip()


def documented_commands() -> dict[str, str]:
    """Every command of the documents (bash blocks line by line, backslash continuations joined, and the
    inline commands), mapped to the document it is first found in."""
    commands: dict[str, str] = {}
    for document in DOCUMENTS:
        text = document.read_text()
        for block in FENCED_BASH.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if command := normalise(line):
                    commands.setdefault(command, document.name)
        for inline in INLINE_COMMAND.findall(FENCED_BASH.sub("", text)):
            commands.setdefault(normalise(inline), document.name)
    return commands


SLURM = "needs a SLURM cluster (sbatch); the launcher's config is tested in tests/test_sweeps.py"
TEMPLATE = "a template in prose; its instances are run"
# a paper recipe (trainer=ddp on GPUs, ImageNet trunk) on one CPU process, without a download
RECIPE_ON_CPU = ("backbone.pretrained=false", "trainer.devices=1", "trainer.strategy=auto", "trainer.sync_batchnorm=false")
PRETRAINED = "needs the official model-zoo file; tests/test_pretrained_readme.py runs it on a tiny official-format file"
OFFICIAL = "the official repository's own test command, shown for comparison"
OFFICIAL_COMMANDS = [
    "python test.py ctdet --exp_id coco_resdcn18 --arch resdcn_18 --keep_res --resume",
    "python test.py ctdet --exp_id coco_dla_2x --keep_res --resume",
    "python test.py ctdet --exp_id coco_hg --arch hourglass --keep_res --resume",
    "python test.py CornerNet --testiter 500000 --split validation",
]
_NATIVE = "data=coco data.root=/data/coco2017 data.eval_resize=native data.native_multiple={multiple} data.val_batch_size=1"
_CORNERNET_NATIVE = _NATIVE.format(multiple=128).replace(" data.val", " data.native_minus_one=true data.val")
PRETRAINED_COMMANDS = [
    *(
        f"python -m keypointdet.tools.convert_official arch={arch} input={name}.{suffix} output={name}.ckpt"
        for arch, name, suffix in (
            ("centernet_resdcn18", "ctdet_coco_resdcn18", "pth"), ("centernet_dla34", "ctdet_coco_dla_2x", "pth"),
            ("centernet_hourglass104", "ctdet_coco_hg", "pth"), ("cornernet_hourglass104", "CornerNet_500000", "pkl"),
        )
    ),
    *(
        f"python eval.py ckpt_path={name}.ckpt {_NATIVE.format(multiple=multiple)}{tta}"
        for name, multiple in (("ctdet_coco_resdcn18", 32), ("ctdet_coco_dla_2x", 32), ("ctdet_coco_hg", 128))
        for tta in ("", " tta=flip", " tta=multiscale")
    ),
    *(
        f"python eval.py ckpt_path=CornerNet_500000.ckpt {_CORNERNET_NATIVE}{tta}" for tta in (" tta=flip", " tta=multiscale")
    ),
    "python train.py data=coco data.train_ann=/data/mine/train.json data.train_img_dir=/data/mine/images "
    "data.val_ann=/data/mine/val.json data.val_img_dir=/data/mine/images backbone=resnet18_dcn model.head_channels=64 "
    "model.init_from=ctdet_coco_resdcn18.ckpt trainer.precision=32",
]

COMMANDS: dict[str, tuple[str, ...] | NotRun | Slow] = {
    # Quick start
    "make train": NotRun("= .venv/bin/python train.py (Makefile), run as 'python train.py'; make installs first"),
    "make test": NotRun("runs this suite"),
    "make test-all": NotRun("runs this suite with the slow tests"),
    "make benchmark": NotRun("= python benchmarks/train_step.py (Makefile), run below with small arguments"),
    "make": NotRun("the installation step of make train / make test"),
    'make train ARGS="trainer.max_epochs=30"': NotRun("= python train.py trainer.max_epochs=30 (Makefile)"),
    ".venv/bin/python train.py ...": NotRun(TEMPLATE),
    "RUN=$(ls -d logs/train/runs/* | tail -1)": NotRun("shell helper: $RUN is replaced by a run of the test"),
    ".venv/bin/python eval.py ckpt_path=$RUN/checkpoints/last.ckpt model.tta.flip=true": (),
    ".venv/bin/python predict.py ckpt_path=$RUN/checkpoints/last.ckpt input=data/synthetic/val output=predictions": (),
    "python -m keypointdet.data.synthetic out=DIR [num_train=N num_val=N seed=S]": (),
    # docs/pose_data.md
    "python -m keypointdet.data.synthetic_pose out=DIR [num_train=N num_val=N seed=S]": (),
    "python -m keypointdet.data.synthetic_pose": ("out=generated", "num_train=3", "num_val=2"),  # README, in prose
    "python train.py": (),
    "python train.py ckpt_path=...": (),
    # Training on your data
    "python train.py data=coco data.root=/data/coco2017": (),
    "python train.py data=coco data.train_ann=/data/mine/train.json data.train_img_dir=/data/mine/images "
    "data.val_ann=/data/mine/val.json data.val_img_dir=/data/mine/images": (),
    "python train.py data=voc data.root=/data/VOCdevkit": (),
    "python train.py data=voc data.root=/data/VOCdevkit data.train_sets=[2007/trainval] data.val_sets=[2007/test]": (),
    "python train.py data=coco data.root=/data/coco2017 backbone=resnet50 backbone.pretrained=true trainer=gpu": Slow(
        ("backbone.pretrained=false",)  # no download in tests
    ),
    "python -m keypointdet.tools.dataset_stats data=coco data.root=/data/coco2017": (),
    "python -m keypointdet.tools.dataset_stats data=voc data.root=/data/VOCdevkit model=cornernet": (),
    # Detectors and backbones
    "python train.py backbone=dla34": (),
    "python train.py backbone=hourglass_small": (),
    "python train.py model=cornernet": (),
    "python train.py model=cornernet backbone=hourglass104 model.pool_channels=128 data=coco "
    "data.root=/data/coco2017 data.input_size=511 trainer=gpu": Slow(),
    "python train.py backbone=<name> [model=cornernet]": NotRun(TEMPLATE),
    # Multi-person pose (the pose model's default data: the embedded pose dataset of the workspace)
    "python train.py model=centernet_pose": (),
    "python train.py model=centernet_pose data=coco_keypoints data.root=/data/coco2017": (),
    "python -m keypointdet.tools.convert_official arch=centernet_pose_dla34 input=multi_pose_dla_3x.pth "
    "output=multi_pose_dla_3x.ckpt": NotRun(
        "needs the official multi_pose_dla_3x.pth; tests/test_convert_official_pose.py converts a file of its keys and "
        "shapes with the command's function"
    ),
    # Multi-GPU, sweeps, W&B (DDP on GPUs run as 2 CPU processes)
    "python train.py model=cornernet trainer=ddp trainer.devices=4": Slow(("trainer=ddp_cpu", "trainer.devices=2")),
    "python train.py model=cornernet trainer.devices=4": Slow(("trainer.devices=2", "trainer.strategy=ddp_spawn")),
    "python train.py trainer=ddp trainer.devices=8 trainer.num_nodes=2": NotRun(
        "needs 2 nodes; its trainer keys are those of the 4-GPU command, which is run"
    ),
    "python train.py trainer=ddp_cpu": Slow(),  # 2 processes (~30 s); DDP training is tested in test_ddp_train
    "python train.py -m model.loss.alpha=1,2,3 model.loss.beta=2,4": Slow(),
    "python train.py -m model=cornernet model.loss.pull_weight=0.05,0.1,0.2 model.loss.push_weight=0.05,0.1,0.2": Slow(),
    "python train.py -m hparams_search=centernet_optuna": ("hydra.sweeper.n_trials=2",),
    "python train.py -m hparams_search=cornernet_optuna hydra.sweeper.n_trials=50": Slow(("hydra.sweeper.n_trials=2",)),
    "python train.py -m trainer=ddp trainer.strategy=ddp_spawn model.loss.alpha=1,2": Slow(("trainer=ddp_cpu",)),
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=ddp trainer.devices=4 "
    "model.loss.alpha=1,2,3": NotRun(SLURM),
    "python train.py logger.wandb.project=keypointdet logger.wandb.entity=my-team logger.wandb.tags=[resnet18]": (),
    "wandb sync logs/train/runs/*/wandb/offline-run-*": NotRun("uploads to wandb.ai (network)"),
    # Evaluate, predict, export, resume
    "python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt": (),
    "python eval.py ckpt_path=FILE data=coco data.root=/data/coco2017": (),
    "python eval.py ckpt_path=FILE trainer.devices=2 trainer.strategy=ddp": Slow(),
    "python predict.py ckpt_path=FILE input=image.jpg output=out/": (),
    "python predict.py ckpt_path=FILE input=clip.mp4 output=out/": (),
    "python predict.py ckpt_path=FILE input=0 output=out/ max_frames=300": NotRun(
        "needs a camera; tests/test_video.py runs camera 0 as a patched capture of a video, without a display"
    ),
    "python eval.py ckpt_path=FILE inference.precision=bf16 inference.channels_last=true": (),
    "python predict.py ckpt_path=FILE input=image.jpg output=out/ inference=float32": (),
    "python eval.py ckpt_path=FILE model.tta.flip=true": (),
    "python eval.py ckpt_path=FILE model.tta.flip=true model.tta.scales=[0.75,1,1.25]": (),
    "python eval.py ckpt_path=... model.tta.flip=true model.tta.scales=[0.75,1,1.25]": (),
    "python eval.py ckpt_path=FILE tta=multiscale": Slow(),
    "python -m keypointdet.export ckpt_path=FILE format=torchscript output=model.pt": (),
    "python -m keypointdet.export ckpt_path=FILE format=onnx output=model.onnx": Slow(),  # an ONNX export: ~30 s
    "python -m keypointdet.export ckpt_path=FILE format=onnx outputs=raw output=raw.onnx": Slow(),
    "python predict.py runtime=onnxruntime ckpt_path=model.onnx input=IMAGE_OR_DIR output=DIR": NotRun(
        "needs an ONNX export: tests/test_runtime.py runs this command on one"
    ),
    "python train.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt [the run's overrides]": (),
    # Safety and failure behaviour
    "python train.py ckpt_path=<run>/checkpoints/last.ckpt [the run's overrides]": (),
    "python train.py ckpt_path=$RUN/checkpoints/last.ckpt ...": NotRun("the SLURM requeue line, a template of the above"),
    # Paper recipes (on 1 CPU device, 64 px)
    "python train.py experiment=centernet_resnet18_coco data.root=/data/coco2017": RECIPE_ON_CPU,
    "python train.py experiment=centernet_dla34_coco data.root=/data/coco2017": RECIPE_ON_CPU,
    "python train.py experiment=centernet_hourglass104_coco data.root=/data/coco2017": Slow(RECIPE_ON_CPU),
    "python train.py experiment=cornernet_hourglass104_coco data.root=/data/coco2017": Slow(RECIPE_ON_CPU),
    "python train.py experiment=centernet_pose_dla34_coco data.root=/data/coco2017": RECIPE_ON_CPU,
    # Results
    "python train.py model=cornernet": (),
    "python benchmarks/short_schedule.py --backbone resnet18_skip": Slow((  # ~18 s
        "--steps", "2", "data.root=data/synthetic", "data.batch_size=2", "data.input_size=64", "data.num_workers=0"
    )),
    # bf16 is emulated (minutes) on CPUs without AVX512-BF16; float32 (= make benchmark) runs in VARIANTS
    "python benchmarks/train_step.py --precision bf16-mixed": Slow(("--input-size", "64", "--batch-size", "2", "--steps", "1")),
    "python benchmarks/data_pipeline.py": ("--images", "2", "--input-size", "64", "--repeats", "1"),
    "python benchmarks/decode.py": Slow(("--input-size", "64", "--num-classes", "4", "--repeats", "1")),  # ~10 s
    "python benchmarks/inference.py": Slow(("--quick",)),  # CenterNet-ResNet18 at 64 px, one round, ONNX: ~30 s
    "PYTHONPATH=src python benchmarks/corner_pool.py": (
        "--channels", "2", "--height", "8", "--width", "8", "--warmup", "0", "--repeats", "1"
    ),
    # Defaults from the data and the machine
    "python train.py data=coco data.train_ann=/data/mine/train.json data.train_img_dir=/data/mine/images "
    "data.val_ann=/data/mine/val.json data.val_img_dir=/data/mine/images "
    "++trainer.max_time=00:00:20:00 ++trainer.max_epochs=100000": (),
    # two time-budgeted trainings (the README command and the plain baseline) of 9 s each, in subprocesses
    "python benchmarks/own_data.py --minutes 8": Slow(("--minutes", "0.15", "--data", "mine", "--logs", "own_data_logs")),
    # Pretrained detectors: the official files are not here; tests/test_pretrained_readme.py runs each of these
    # commands on a tiny official-format file made from shared/official (slow: conversions and native evaluation)
    **{command: NotRun(PRETRAINED) for command in PRETRAINED_COMMANDS},
    **{command: NotRun(OFFICIAL) for command in OFFICIAL_COMMANDS},
}

# Commands the documents give in words (a comment) rather than as a line of their own, run like the others.
VARIANTS: dict[str, tuple[str, ...]] = {
    "python predict.py ckpt_path=FILE input=a_folder/": (),  # "# or input=a_folder/"
    "python benchmarks/train_step.py": ("--input-size", "64", "--batch-size", "2", "--steps", "1"),  # make benchmark
}
