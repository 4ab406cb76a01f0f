"""Training steps of the default configuration in NCHW and in channels-last memory layout (``channels_last``).

    python benchmarks/train_layout.py [--steps 12] [--rounds 2] [overrides of conf/train.yaml ...]

Each round trains the default run (``conf/train.yaml``: CenterNet ResNet-18, 128 px, batch 16, the precision of
``trainer.precision: auto`` (float32 on a CPU without native bf16), the real data pipeline) for ``--steps`` steps in each layout, alternating; it prints the median wall and CPU
time (``time.process_time``, all threads) of a Lightning training step, the first two steps of each run left
out (warm-up). Any ``key=value`` argument overrides the training config (e.g. ``model=cornernet``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir

from keypointdet.runs.train import build

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(pl.Callback):
    """Wall and CPU time of every training batch, from its start to the end of its optimizer step."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, *args) -> None:
        self.times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))


def step_times(overrides: list[str], channels_last: bool, steps: int) -> list[tuple[float, float]]:
    run_dir = tempfile.mkdtemp()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [*overrides, f"channels_last={str(channels_last).lower()}", "logger=none",
                                "~callbacks", f"trainer.max_steps={steps}", "trainer.limit_val_batches=0",
                                "trainer.enable_progress_bar=false", f"paths.output_dir={run_dir}"])  # fmt: skip
    datamodule, module, trainer = build(cfg)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    return timer.times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    pl.seed_everything(0, verbose=False)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for channels_last in (False, True):
            times[channels_last] += step_times(overrides, channels_last, args.steps)
    print(f"overrides: {' '.join(overrides) or '(none)'}; {args.rounds} rounds of {args.steps} steps per layout")
    print("| layout | steps timed | wall s / step | CPU s / step |")
    print("|---|---|---|---|")
    for channels_last, measured in times.items():
        wall, cpu = median(t[0] for t in measured), median(t[1] for t in measured)
        print(f"| {'channels_last' if channels_last else 'NCHW'} | {len(measured)} | {wall:.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
