"""How much a detector learns in a fixed, short number of steps on the embedded dataset.

    python benchmarks/short_schedule.py --backbone resnet18_skip --steps 400
    python benchmarks/short_schedule.py --backbone resnet18 --steps 400

Composes the real configs (``conf/train.yaml`` + the given backbone / model), trains ``--steps``
steps with the configured optimizer and one-cycle schedule under bf16 autocast, then reports COCO
mAP on the val split, class-aware and class-agnostic. Used to compare necks and settings at equal
compute without a full run.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from keypointdet.metrics import evaluate_detections

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
    torch.manual_seed(0)
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}", f"backbone={args.backbone}", *args.overrides])
    datamodule = instantiate(cfg.data)
    categories = datamodule.categories()
    model = instantiate(cfg.model, _convert_="object", num_classes=len(categories),
                        category_ids=[cat["id"] for cat in categories])
    datamodule.configure_targets(model.encoder, model.stride, model.size_divisor)
    datamodule.setup("fit")
    optimizer = model.hparams.optimizer(params=model.parameters())
    scheduler = model.hparams.scheduler(optimizer=optimizer, total_steps=args.steps)

    start = time.perf_counter()
    model.train()
    for batch in itertools.islice(itertools.cycle(datamodule.train_dataloader()), args.steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(batch["image"])
        loss = torch.stack([model.losses(stack, batch)["loss"] for stack in outputs]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_time = time.perf_counter() - start

    model.eval()
    detections = {}
    for batch in datamodule.val_dataloader():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            detections.update(zip(batch["image_id"].tolist(), model.detect(batch)))
    ground_truth = datamodule.val_dataset.coco
    metrics = evaluate_detections(ground_truth, detections)
    agnostic = evaluate_detections(*class_agnostic(ground_truth, detections))
    print("| model | backbone | steps | train s | val/mAP | val/mAP50 | class-agnostic mAP |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.backbone} | {args.steps} | {train_time:.0f} | {metrics['mAP']:.3f} "
          f"| {metrics['mAP50']:.3f} | {agnostic['mAP']:.3f} |")


if __name__ == "__main__":
    main()
