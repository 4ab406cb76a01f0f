"""Training throughput of CenterNet-ResNet18 and the share of a step spent outside the network.

    python benchmarks/train_step.py [--input-size 512] [--batch-size 8] [--steps 6] [--threads 2]

Each part is timed on its own (median over ``--steps``), on the same batch of the real data pipeline:
  network    forward + backward + optimizer step of the bare network (pure PyTorch, the loss replaced
             by a plain mean of the raw outputs);
  targets    encoding the batch's targets (normally hidden in data-loading workers, counted anyway);
  loss       the detector's losses, forward and backward, on the network's (detached) raw outputs;
  lightning  Lightning's own per-step cost: a Lightning step minus a bare step, both with a one-layer
             network, so that the difference is not lost in the noise of a large one;
  decode     decoding the batch's outputs (validation only; reported for scale).
Outside the network = (targets + loss + lightning) / (network + targets + loss + lightning). The
images/s column is the throughput of a full Lightning training step (network + losses + Lightning).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import median

import pytorch_lightning as pl
import torch
from timing import median_seconds
from torch import Tensor, nn
from torch.utils.data import DataLoader

from keypointdet.data.coco import CocoDetection, read_image
from keypointdet.data.datamodule import collate
from keypointdet.data.encode import CenterNetEncoder
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.transforms import TrainTransform
from keypointdet.detectors import CenterNet
from keypointdet.models.backbones.resnet import ResNet
from keypointdet.module import DetectionModule


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

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-4}


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

    bf16 = args.precision == "bf16-mixed"
    model = CenterNet(ResNet(18), num_classes=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    network = median_seconds(lambda: bare_step(model, optimizer, batch, bf16), args.steps)

    raw = [dataset.transform(*_raw(dataset, i)) for i in range(args.batch_size)]
    targets = median_seconds(
        lambda: [
            dataset._targets(r["image"], r["boxes"], r["labels"], dataset.image_ids[i], None) for i, r in enumerate(raw)
        ],
        args.steps,
    )

    with torch.no_grad():
        outputs = model(batch["image"])[-1]
    loss = median_seconds(lambda: loss_step(model, outputs, batch), args.steps)
    decode = median_seconds(lambda: model.decode(outputs), args.steps)

    tiny = CenterNet(TinyBackbone(), num_classes=6)
    tiny_optimizer = torch.optim.Adam(tiny.parameters(), lr=1e-4)
    tiny_bare = median_seconds(lambda: bare_step(tiny, tiny_optimizer, batch, bf16), args.steps)
    with torch.no_grad():
        tiny_outputs = tiny(batch["image"])[-1]
    tiny_loss = median_seconds(lambda: loss_step(tiny, tiny_outputs, batch), args.steps)
    lightning = max(0.0, lightning_step(tiny, batch, args) - tiny_bare - tiny_loss)
    step = lightning_step(model, batch, args)

    outside = (targets + loss + lightning) / (network + targets + loss + lightning)
    print(
        "| input | batch | precision | threads | images/s | network s | loss s | Lightning s | targets s "
        "| decode s | outside the network |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.input_size} | {args.batch_size} | {args.precision} | {args.threads} | {args.batch_size / step:.2f} "
        f"| {network:.3f} | {loss:.4f} | {lightning:.4f} | {targets:.4f} | {decode:.4f} | {100 * outside:.1f}% |"
    )


class TinyBackbone(nn.Module):
    """One stride-4 convolution with the backbone contract: isolates Lightning's per-step cost."""

    out_channels, num_stacks, stride, size_divisor = 8, 1, 4, 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, images: Tensor) -> list[Tensor]:
        return [self.conv(images)]


def bare_step(model: CenterNet, optimizer: torch.optim.Optimizer, batch: dict, bf16: bool) -> None:
    """Forward, a plain mean of the raw outputs as the loss, backward, Adam step (no Lightning)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model(batch["image"])[-1]
    sum(value.float().mean() for value in outputs.values()).backward()
    optimizer.step()
    optimizer.zero_grad()


def loss_step(model: CenterNet, outputs: dict, batch: dict) -> None:
    """The detector's losses, forward and backward, on detached raw outputs."""
    leaves = {name: value.detach().requires_grad_() for name, value in outputs.items()}
    model.stack_loss(leaves, batch)["loss"].backward()


def lightning_step(model: CenterNet, batch: dict, args: argparse.Namespace) -> float:
    """Median seconds of a Lightning training step (forward, losses, logging, backward, optimizer)."""
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, precision=args.precision, logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    module = DetectionModule(model, ground_truth=None, input_record={}, optimizer=ADAM)
    trainer.fit(module, datamodule=ListModule(batch, args.steps + 1))
    return median(timer.times[1:])


def _raw(dataset: CocoDetection, index: int) -> tuple:
    """Image, boxes and labels of one sample before any transform."""
    image_id = dataset.image_ids[index]
    image = read_image(dataset.img_dir / dataset.coco.imgs[image_id]["file_name"])
    boxes, labels, _ = dataset.annotations(image_id)
    return image, boxes, labels


if __name__ == "__main__":
    main()
