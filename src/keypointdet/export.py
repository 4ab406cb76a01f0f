"""Export a checkpoint's network to ONNX or TorchScript: its raw outputs, without decoding.

``python -m keypointdet.export ckpt_path=FILE format=onnx|torchscript output=FILE [input_size=N] [batch_size=1]``
(``conf/export.yaml``)

The exported graph takes ``image [B, 3, H, W]`` (normalised like the training data: the letterbox
of :mod:`keypointdet.inference`) and returns the raw maps of the last stack, named as in the head:
``heatmap`` (logits), ``size``, ``offset`` for CenterNet; ``tl_heatmap``, ``br_heatmap`` (logits),
``tl_embedding``, ``br_embedding``, ``tl_offset``, ``br_offset`` for CornerNet. ONNX outputs carry those
names, in that order (``output_names``).

Both formats go through ``torch.export`` at a fixed input shape (``batch_size x 3 x input_size x input_size``):
corner pooling's scans are plain Python loops over the map size, which ``torch.export`` unrolls. For
another shape, export again; for images of other sizes, letterbox them to ``input_size``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from keypointdet.detectors import KeypointDetector
from keypointdet.inference import load_detector
from keypointdet.runs import hydra_main

FORMATS = ("onnx", "torchscript")


class RawOutputs(nn.Module):
    """A detector's network as ``image -> tuple of the last stack's raw maps`` (in ``output_names`` order)."""

    def __init__(self, detector: KeypointDetector) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.heads[-1]
        with torch.no_grad():
            probe = self.head(self.backbone(torch.zeros(1, 3, detector.size_divisor, detector.size_divisor))[-1])
        self.output_names: list[str] = list(probe)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """``image [B, 3, H, W]`` -> the raw maps ``[B, channels, H / stride, W / stride]``."""
        outputs = self.head(self.backbone(image)[-1])
        return tuple(outputs[name] for name in self.output_names)


def export(detector: KeypointDetector, output: str | Path, export_format: str, input_size: int, batch_size: int = 1) -> Path:
    """Write the detector's network (eval mode, CPU) as ``export_format`` to ``output``; returns the path."""
    if export_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {export_format!r}")
    if input_size % detector.size_divisor:
        raise ValueError(f"input_size={input_size} must be a multiple of the backbone's {detector.size_divisor}")
    network = RawOutputs(detector.cpu().eval()).eval()
    example = torch.randn(batch_size, 3, input_size, input_size)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if export_format == "torchscript":
            # Tracing the functional aten graph of torch.export: the eager corner pooling writes in place.
            program = torch.export.export(network, (example,)).run_decompositions({})
            torch.jit.trace(program.module(), (example,)).save(str(path))
        else:
            # optimize=False: ONNX Runtime optimises the graph when it loads it, while the exporter's own
            # pass takes minutes on the unrolled corner-pooling scans.
            torch.onnx.export(
                network,
                (example,),
                str(path),
                input_names=["image"],
                output_names=network.output_names,
                dynamo=True,
                optimize=False,
                verbose=False,
            )
    return path


def export_checkpoint(cfg: DictConfig) -> Path:
    """``cfg``: ``ckpt_path``, ``format``, ``output``, ``input_size`` (null: the checkpoint's training input size)
    and ``batch_size``."""
    missing = [key for key in ("ckpt_path", "format", "output") if cfg.get(key) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: {__doc__.splitlines()[2]}")
    detector = load_detector(cfg.ckpt_path)
    input_size = cfg.get("input_size") or detector.letterbox.input_size
    path = export(detector, cfg.output, cfg.format, input_size, cfg.batch_size)
    print(f"{cfg.format} export of {cfg.ckpt_path} ({input_size}x{input_size} input) written to {path}")
    return path


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    export_checkpoint(cfg)


if __name__ == "__main__":
    main()
