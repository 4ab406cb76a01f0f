"""A user's first run on their own data: the README's command, as written, against a plain baseline.

    python benchmarks/own_data.py --minutes 20      # the benchmark (about 45 minutes on 2 CPU cores)
    python benchmarks/own_data.py --minutes 2       # a smoke test

Generates ``data/photo_objects`` (``benchmarks/photo_objects.py``: real photographs, ~160 px, category
ids 2 / 5 / 11 / 17) on first use, then runs, one after the other on the same machine:

1. the README's "Training on your data" command with only a time budget added, no tuning:
   ``python train.py data=coco data.train_ann=... data.train_img_dir=... data.val_ann=... data.val_img_dir=...
   ++trainer.max_time=00:00:MM:SS ++trainer.max_epochs=100000``;
2. ``benchmarks/plain_centernet.py --minutes MM`` (plain PyTorch CenterNet, same data, same budget).

and prints each one's val/mAP, mAP50 and wall time as a Markdown table row (results in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_command(data: Path, minutes: float) -> list[str]:
    """The README's command for a COCO-format export (its "Defaults from the data and the machine"), with
    ``data`` for ``/data/mine`` and the budget in ``minutes``."""
    seconds = round(minutes * 60)
    budget = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return [
        sys.executable, "train.py", "data=coco",
        f"data.train_ann={data}/train.json", f"data.train_img_dir={data}/images",
        f"data.val_ann={data}/val.json", f"data.val_img_dir={data}/images",
        f"++trainer.max_time={budget}", "++trainer.max_epochs=100000",
    ]  # fmt: skip


def run(command: list[str], log: Path) -> tuple[dict[str, float], float]:
    """Run ``command`` in the repository, its output to ``log``; the ``mAP=`` / ``mAP50=`` of its last
    summary line and its wall time in seconds."""
    start = time.monotonic()
    with log.open("w") as out:
        subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    seconds = time.monotonic() - start
    matches = re.findall(r"mAP=([0-9.]+|nan) (?:val/)?mAP50=([0-9.]+|nan)", log.read_text())
    return {"mAP": float(matches[-1][0]), "mAP50": float(matches[-1][1])}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "photo_objects")
    parser.add_argument("--logs", type=Path, default=ROOT / "logs" / "own_data")
    args = parser.parse_args()
    args.data, args.logs = args.data.resolve(), args.logs.resolve()  # the runs work in the repository
    if not (args.data / "val.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "photo_objects.py"), "--out", str(args.data)], check=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    command = readme_command(args.data, args.minutes)
    baseline = [sys.executable, "benchmarks/plain_centernet.py", "--data", str(args.data), "--minutes", str(args.minutes)]
    print("| run | val/mAP | mAP50 | wall time |\n|---|---|---|---|")
    for name, argv in (("keypointdet, README command", command), ("plain PyTorch baseline", baseline)):
        metrics, seconds = run(argv, args.logs / f"{name.split(',')[0].replace(' ', '_')}.log")
        print(f"| {name} | {metrics['mAP']:.3f} | {metrics['mAP50']:.3f} | {seconds / 60:.1f} min |", flush=True)
    print("command: " + " ".join(command[1:]))


if __name__ == "__main__":
    main()
