"""Per-image inference latency of the detectors in every execution mode, with the decoder's time beside each.

    python benchmarks/inference.py [--models centernet_resnet18 ...] [--batch 1 8] [--input-size 512]
                                   [--threads 2] [--rounds 3] [--modes float32 ...] [--quick]

Models (80 classes, randomly initialised: latency does not depend on the weights): CenterNet with ResNet-18
(the paper's neck) and DLA-34, CornerNet with the 2-stack small hourglass and Hourglass-104. Modes: eager
float32 (NCHW), channels_last, bf16 autocast, channels_last + bf16, ``torch.compile`` of the last one, and
ONNX Runtime (float32, the raw-map export of ``keypointdet.export``, dynamic shapes); ``--modes`` picks some
(bf16 is emulated, minutes per call for the large models, on CPUs without AVX512-BF16 / AMX). A mode that fails
(an export or a compilation) is reported with its error and skipped. Decode: ``detector.decode`` on that
mode's raw maps (the decoders compute in float32 whatever the forward's precision).

Each cell is the median over ``--rounds`` calls after one warm-up call (at least one call: a round stops
early past ``--max-seconds``), divided by the batch size: the wall time and the CPU time of this process
(``time.process_time``, all its threads), which waiting for a shared machine's cores does not inflate.
``--quick`` (a smoke test): one round, 64-pixel input, batch 1, the models given or CenterNet-ResNet18,
without ``torch.compile`` (its compilation alone takes minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from keypointdet.detectors import CenterNet, CornerNet, KeypointDetector
from keypointdet.export import RawOutputs, export
from keypointdet.speed import InferenceSettings

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"
MODELS = {  # name -> (detector class, backbone config, overrides)
    "centernet_resnet18": (CenterNet, "resnet18", {}),
    "centernet_dla34": (CenterNet, "dla34", {}),
    "cornernet_hourglass_small": (CornerNet, "hourglass_small", {}),
    "cornernet_hourglass104": (CornerNet, "hourglass104", {}),
}
EAGER = {  # mode -> settings of the eager forward
    "float32": InferenceSettings("32", False),
    "channels_last": InferenceSettings("32", True),
    "bf16": InferenceSettings("bf16", False),
    "channels_last + bf16": InferenceSettings("bf16", True),
}
COMPILED = "torch.compile (channels_last + bf16)"
ONNX = "ONNX Runtime"
MODES = (*EAGER, COMPILED, ONNX)


def build(name: str, num_classes: int) -> KeypointDetector:
    detector_class, backbone, overrides = MODELS[name]
    config = OmegaConf.merge(OmegaConf.load(CONF / f"{backbone}.yaml"), overrides)
    return detector_class(instantiate(config), num_classes).eval()


def timed(fn: Callable[[], object], rounds: int, max_seconds: float) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``rounds`` calls after a warm-up call."""
    fn()
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < rounds and (not walls or time.perf_counter() - start < max_seconds):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return median(walls), median(cpus)


def onnx_forward(detector: KeypointDetector, threads: int, input_size: int) -> Callable[[Tensor], dict[str, Tensor]]:
    """The detector's raw-map ONNX export under ONNX Runtime, as ``images -> raw maps`` (torch tensors)."""
    import onnxruntime

    path = Path(tempfile.mkdtemp()) / "raw.onnx"
    export(detector, path, "onnx", input_size, outputs="raw")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = RawOutputs(detector).output_names

    def forward(images: Tensor) -> dict[str, Tensor]:
        maps = session.run(None, {"image": images.numpy()})
        return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(names, maps, strict=True)}

    return forward


def forwards(detector: KeypointDetector, args: argparse.Namespace) -> dict[str, Callable[[Tensor], dict[str, Tensor]]]:
    """Every mode's ``images -> last stack's raw maps``; a mode that cannot be built (an export) maps to its error."""
    modes: dict[str, Callable | str] = {}
    for mode, settings in EAGER.items():
        if mode in args.modes:
            modes[mode] = lambda images, settings=settings: settings.forward(detector, images)[-1]
    if COMPILED in args.modes and not args.quick:  # compiled at its first call, where a failure is reported
        compiled = torch.compile(detector)
        modes[COMPILED] = lambda images: EAGER["channels_last + bf16"].forward(compiled, images)[-1]
    if ONNX in args.modes:
        try:
            modes[ONNX] = onnx_forward(EAGER["float32"].prepare(detector), args.threads, args.input_size)
        except Exception as error:  # noqa: BLE001
            modes[ONNX] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.input_size, args.batch = 1, 64, [1]
    args.models = args.models or (["centernet_resnet18"] if args.quick else list(MODELS))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"input {args.input_size}x{args.input_size}, {args.num_classes} classes, {args.threads} threads, "
          f"median of {args.rounds} after a warm-up; ms per image, wall / CPU")  # fmt: skip
    print("| model | mode | batch | forward wall | forward CPU | decode wall | decode CPU |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        detector = build(name, args.num_classes)
        for mode, forward in forwards(detector, args).items():
            EAGER.get(mode, EAGER["channels_last + bf16" if mode == COMPILED else "float32"]).prepare(detector)
            for batch in args.batch:
                images = torch.randn(batch, 3, args.input_size, args.input_size)
                if isinstance(forward, str):
                    print(f"| {name} | {mode} | {batch} | failed: {forward} | | | |", flush=True)
                    continue
                try:
                    with torch.no_grad():
                        wall, cpu = timed(lambda: forward(images), args.rounds, args.max_seconds)
                        outputs = forward(images)
                        decode_wall, decode_cpu = timed(lambda: detector.decode(outputs), args.rounds, args.max_seconds)
                except Exception as error:  # noqa: BLE001 (e.g. torch.compile fails at the first call)
                    print(f"| {name} | {mode} | {batch} | failed: {type(error).__name__}: {str(error)[:200]} | | | |")
                    continue
                per_image = [f"{1000 * value / batch:.1f}" for value in (wall, cpu, decode_wall, decode_cpu)]
                print(f"| {name} | {mode} | {batch} | {' | '.join(per_image)} |", flush=True)


if __name__ == "__main__":
    main()
