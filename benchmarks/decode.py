"""Decoding cost of both detectors against the network forward pass it follows.

    python benchmarks/decode.py [--input-size 512] [--batch-size 1] [--threads 2] [--repeats 5]

For CenterNet (ResNet-18) and CornerNet (small hourglass by default; ``--hourglass104`` for the
paper's backbone) it times, in eval mode and without gradients: the forward pass in float32 NCHW and
in its fastest eager form (channels_last, in float32 or bf16 autocast, whichever is faster on this CPU: bf16
is emulated, and slower, on CPUs without AVX512-BF16 / AMX), and the decoder on its raw outputs
(CenterNet: peaks + top-K; CornerNet: peaks, top-K corners, K x K pairing, soft-NMS).
The networks are freshly initialised: every heatmap sits at the 0.1 prior and the embeddings are
close together, so most corner pairs survive the pairing rules and soft-NMS runs its full
``max_dets`` rounds; that is the decoder's worst case.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timing import median_seconds

from keypointdet.detectors import CenterNet, CornerNet
from keypointdet.models.backbones.resnet import ResNet

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hourglass104", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hourglass = "hourglass104" if args.hourglass104 else "hourglass_small"
    backbone_cfg = OmegaConf.load(CONF / f"{hourglass}.yaml")
    detectors = {
        "CenterNet ResNet-18": CenterNet(ResNet(18), args.num_classes),
        f"CornerNet {hourglass}": CornerNet(instantiate(backbone_cfg), args.num_classes),
    }
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    print(f"input {args.input_size}x{args.input_size}, batch {args.batch_size}, {args.num_classes} classes, "
          f"{args.threads} threads, median of {args.repeats}")
    print("| detector | forward ms/batch | fastest forward (channels_last: float32 / bf16) | decode ms/batch | decode / forward | decode / fastest |")
    print("|---|---|---|---|---|---|")
    for name, detector in detectors.items():
        detector.eval()
        with torch.no_grad():
            outputs = detector(images)[-1]
            forward = median_seconds(partial(detector, images), args.repeats)
            decode = median_seconds(partial(detector.decode, outputs), args.repeats)
            fast_images = images.contiguous(memory_format=torch.channels_last)
            detector.to(memory_format=torch.channels_last)
            channels_last = median_seconds(partial(detector, fast_images), args.repeats)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = median_seconds(partial(detector, fast_images), args.repeats)
        fastest = min(channels_last, bf16)
        print(f"| {name} | {1000 * forward:.1f} | {1000 * fastest:.1f} ({1000 * channels_last:.1f} / {1000 * bf16:.1f}) | "
              f"{1000 * decode:.1f} | {100 * decode / forward:.1f}% | {100 * decode / fastest:.1f}% |")


if __name__ == "__main__":
    main()
