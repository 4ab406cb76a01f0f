"""How much a detector learns in a fixed, short number of steps on the embedded dataset.

    python benchmarks/short_schedule.py --backbone resnet18_skip --steps 400
    python benchmarks/short_schedule.py --backbone resnet18 --steps 400

Composes the real configs (``conf/train.yaml`` + the given backbone / model), trains ``--steps`` steps
through the real training code (``build`` of ``train.py``: optimizer, one-cycle schedule, the machine's
precision), then reports COCO mAP on the val split, class-aware and class-agnostic. Used to compare necks and
settings at equal compute without a full run.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from keypointdet.metrics import evaluate_detections
from keypointdet.runs.train import build

ROOT = Path(__file__).resolve().parents[1]


def class_agnostic(ground_truth, detections):
    """Ground truth and detections with every category merged into one."""
    merged = copy.deepcopy(ground_truth)
    for ann in merged.dataset["annotations"]:
        ann["category_id"] = 1
    merged.dataset["categories"] = [{"id": 1, "name": "object"}]
    merged.createIndex()
    return merged, {image_id: [{**d, "category_id": 1} for d in dets] for image_id, dets in detections.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18_skip")
    parser.add_argument("--model", default="centernet")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.optimizer.lr=1e-3")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"model={args.model}", f"backbone={args.backbone}", "logger=none", "~callbacks", "evaluate_best=false",
            f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
            "++trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "++trainer.enable_checkpointing=false",
            f"paths.output_dir={ROOT / 'logs' / 'short_schedule'}", *args.overrides,
        ])  # fmt: skip
    torch.manual_seed(0)
    datamodule, module, trainer = build(cfg)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_time = time.perf_counter() - start

    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule=datamodule, verbose=False)
    detections = defaultdict(list)
    for detection in module.metric.results:
        detections[detection["image_id"]].append(detection)
    ground_truth = module.metric.ground_truth
    for image_id in ground_truth.getImgIds():
        detections.setdefault(image_id, [])
    metrics = evaluate_detections(ground_truth, detections)
    agnostic = evaluate_detections(*class_agnostic(ground_truth, detections))
    print("| model | backbone | steps | train s | precision | val/mAP | val/mAP50 | class-agnostic mAP |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.backbone} | {args.steps} | {train_time:.0f} | {trainer.precision} | {metrics['mAP']:.3f} "
          f"| {metrics['mAP50']:.3f} | {agnostic['mAP']:.3f} |")


if __name__ == "__main__":
    main()
