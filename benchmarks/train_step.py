"""Training throughput of CenterNet-ResNet18 and the share of a step spent outside the network.

    python benchmarks/train_step.py [--input-size 512] [--batch-size 8] [--steps 6] [--threads 2]

Measures, on the same model and batch:
  network   forward + backward + optimizer step of the bare network on the batch (pure PyTorch);
  step      one Lightning training step (network + losses + logging + optimizer), timed by a callback;
  targets   encoding the batch's targets (normally hidden in data-loading workers, counted here anyway);
  decode    decoding the batch's outputs (validation only; reported for scale).
The share outside the network is ``(step - network + targets) / (step + targets)``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import median

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from keypointdet.data.coco import CocoDetection, read_image
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetEncoder
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.transforms import TrainTransform
from keypointdet.detectors import CenterNet
from keypointdet.models.backbones.resnet import ResNet


class StepTimer(pl.Callback):
    """Wall time of every training batch, from batch start to the end of the optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self.start)


class ListModule(pl.LightningDataModule):
    def __init__(self, batch: dict, steps: int) -> None:
        super().__init__()
        self.batch, self.steps = batch, steps

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self.batch] * self.steps, batch_size=None)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)

    root = Path(tempfile.mkdtemp())
    generate_dataset(root, num_train=args.batch_size, num_val=1, seed=0)
    encoder = CenterNetEncoder(num_classes=6)
    dataset = CocoDetection(root / "train.json", root / "train", TrainTransform(args.input_size), encoder, stride=4)
    samples = [dataset[i] for i in range(args.batch_size)]
    batch = collate(samples)

    model = CenterNet(ResNet(18), num_classes=6)
    bf16 = args.precision == "bf16-mixed"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def network_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(batch["image"])[-1]
        sum(value.float().mean() for value in outputs.values()).backward()
        optimizer.step()
        optimizer.zero_grad()

    model.train()
    network = timed(network_step, args.steps)

    raw = [dataset.transform(*_raw(dataset, i)) for i in range(args.batch_size)]
    targets = timed(lambda: [dataset._targets(r["image"], r["boxes"], r["labels"]) for r in raw], args.steps)

    model.eval()
    with torch.no_grad():
        outputs = model(batch["image"])[-1]
    decode = timed(lambda: model.decode(outputs), args.steps)
    model.train()

    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, precision=args.precision, logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=ListModule(batch, args.steps + 1))
    step = median(timer.times[1:])

    outside = (step - network + targets) / (step + targets)
    print(f"| input | batch | precision | threads | images/s (Lightning step) | network s | step s | targets s | decode s | outside the network |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.input_size} | {args.batch_size} | {args.precision} | {args.threads} | {args.batch_size / step:.2f} "
        f"| {network:.3f} | {step:.3f} | {targets:.4f} | {decode:.4f} | {100 * outside:.1f}% |"
    )


def _raw(dataset: CocoDetection, index: int) -> tuple:
    """Image, boxes and labels of one sample before any transform."""
    image_id = dataset.image_ids[index]
    image = read_image(dataset.img_dir / dataset.coco.imgs[image_id]["file_name"])
    boxes, labels, _ = dataset.annotations(image_id)
    return image, boxes, labels


if __name__ == "__main__":
    main()
