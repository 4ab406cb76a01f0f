"""Export a checkpoint's detector to ONNX or TorchScript, from image to detections.

``python -m keypointdet.export ckpt_path=FILE format=onnx|torchscript output=FILE [outputs=detections|raw]
[dynamic=true] [input_size=N] [batch_size=1]`` (``conf/export.yaml``)

The exported graph takes ``image [B, 3, H, W]``, letterboxed and normalised as :mod:`keypointdet.inference`
does it, and returns (``outputs=detections``, the default) ``boxes [B, K, 4]`` (xyxy in input pixels),
``scores [B, K]`` (descending, 0 for padding) and ``labels [B, K]`` (0..C-1), and for a pose detector
``keypoints [B, K, J, 3]`` (x, y in input pixels, the joint's score): the network and
:meth:`KeypointDetector.decode` in one graph, so the detections equal PyTorch's (CenterNet: peaks, top-K,
boxes; CornerNet: corner top-K, pairing and soft-NMS, an ONNX ``Loop``). ``outputs=raw``
returns the last stack's raw maps instead, named as in the head (``heatmap``, ``size``, ``offset``;
``tl_heatmap``, ``br_heatmap``, ``tl_embedding``, ``br_embedding``, ``tl_offset``, ``br_offset``).

With ``dynamic=true`` (the default) batch size, height and width are free (any multiple of the size
divisor, from the backbone's ``min_export_size``; CornerNet's corner pooling up to ``EXPORTED_MAX_LENGTH``
output cells a side); ``dynamic=false``
fixes them to the example ``batch_size x 3 x input_size x input_size``. What a runtime needs besides the
graph travels with it (:func:`metadata`): ONNX metadata properties, or ``keypointdet.json`` among a
TorchScript file's extra files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import torch
from onnxscript import opset18 as op
from omegaconf import DictConfig
from torch import Tensor, nn

from keypointdet.detectors import KeypointDetector
from keypointdet.inference import load_detector
from keypointdet.runs import hydra_main

FORMATS = ("onnx", "torchscript")
OUTPUTS = ("detections", "raw")
DETECTION_NAMES = ["boxes", "scores", "labels"]
TORCHSCRIPT_METADATA = "keypointdet.json"  # the extra file of a TorchScript export holding the metadata
MAX_BATCH, MAX_SIDE = 1024, 4096  # bounds of the dynamic dimensions (input pixels for the side)


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


class Detections(nn.Module):
    """A detector as ``image -> (boxes, scores, labels[, keypoints])``: its last stack decoded, in input pixels."""

    def __init__(self, detector: KeypointDetector) -> None:
        super().__init__()
        self.detector = detector
        self.output_names = DETECTION_NAMES + (["keypoints"] if detector.predicts_keypoints else [])

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """``image [B, 3, H, W]`` -> ``boxes [B, K, 4]`` xyxy input pixels, ``scores [B, K]``, ``labels [B, K]``
        (and ``keypoints [B, K, J, 3]``: x, y input pixels, score)."""
        detector = self.detector
        outputs = detector.heads[-1](detector.backbone(image)[-1])
        # Tell the exporter that every map holds at least the peaks kept (true for any real input), so that
        # the number of peaks is the constant k rather than min(k, cells), which the ONNX exporter cannot use.
        _, classes, height, width = next(iter(outputs.values())).shape  # the first output is a heatmap
        if torch.compiler.is_exporting():  # (torch.jit.trace records sizes as tensors and needs no hint)
            torch._check(classes * height * width >= max(getattr(detector, "k", 0), detector.max_detections))
        boxes, scores, labels, *keypoints = detector.decode(outputs)
        joints = tuple(torch.cat([points[..., :2] * detector.stride, points[..., 2:]], dim=-1) for points in keypoints)
        return (boxes * detector.stride, scores, labels, *joints)


def onnx_stable_sort(self: Any, stable: bool | None = None, dim: int = -1, descending: bool = False) -> tuple[Any, Any]:
    """``aten.sort.stable`` in ONNX: ``TopK`` over the whole axis, which puts equal values in ascending index
    order (the ONNX specification), i.e. a stable sort; :func:`keypointdet.decode.top_k` relies on it."""
    count = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    return op.TopK(self, count, axis=dim, largest=int(descending), sorted=1)


def metadata(detector: KeypointDetector, outputs: str) -> dict[str, Any]:
    """What a runtime needs besides the graph (stored as JSON): the outputs, the classes (``class_names``,
    ``category_ids``), the letterbox (``input_size``, ``mean``, ``std``, ``size_divisor``), ``stride`` and a pose
    detector's ``keypoints`` (names, flip pairs, sigmas, skeleton)."""
    letterbox = getattr(detector, "letterbox", None)
    values: dict[str, Any] = {
        "detector": detector.name,
        "outputs": outputs,
        "class_names": detector.class_names,
        "category_ids": detector.category_ids,
        "size_divisor": detector.size_divisor,
        "stride": detector.stride,
    }
    if letterbox is not None:
        values |= {"input_size": letterbox.input_size, "mean": list(letterbox.mean), "std": list(letterbox.std)}
    if detector.predicts_keypoints:
        values["keypoints"] = detector.keypoints.config()
    return values


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The :func:`metadata` of an exported ONNX or TorchScript file, decoded."""
    if Path(path).suffix == ".onnx":
        properties = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
        return {key: json.loads(value) for key, value in properties.items()}
    files = {TORCHSCRIPT_METADATA: ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[TORCHSCRIPT_METADATA])


def dynamic_shapes(detector: KeypointDetector) -> dict[str, dict[int, Any]]:
    """Free batch size and spatial size (multiples of the size divisor, from the backbone's ``min_export_size``
    if it has one) of the ``image`` input."""
    divisor = detector.size_divisor
    min_blocks = -(-getattr(detector.backbone, "min_export_size", divisor) // divisor)
    height = torch.export.Dim("height_blocks", min=min_blocks, max=MAX_SIDE // divisor)
    width = torch.export.Dim("width_blocks", min=min_blocks, max=MAX_SIDE // divisor)
    return {"image": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH), 2: divisor * height, 3: divisor * width}}


def export(
    detector: KeypointDetector, output: str | Path, export_format: str, input_size: int, batch_size: int = 1,
    outputs: str = "detections", dynamic: bool = True,
) -> Path:  # fmt: skip
    """Write the detector (eval mode, CPU) as ``export_format`` to ``output``, with its :func:`metadata`; returns
    the path. ``input_size``, ``batch_size``: the example input (the only shape accepted without ``dynamic``)."""
    if export_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {export_format!r}")
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
    if input_size % detector.size_divisor:
        raise ValueError(f"input_size={input_size} must be a multiple of the backbone's {detector.size_divisor}")
    detector = detector.cpu().eval()
    network = (Detections if outputs == "detections" else RawOutputs)(detector).eval()
    # A dynamic dimension needs an example size above 1 (torch.export specialises sizes 0 and 1).
    example = torch.randn(max(batch_size, 2) if dynamic else batch_size, 3, input_size, input_size)
    shapes = dynamic_shapes(detector) if dynamic else None
    properties = metadata(detector, outputs)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if export_format == "torchscript":
            # Traced: sizes are recorded as the size ops they come from, so the trace holds for other shapes.
            traced = torch.jit.trace(network, (example,), check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(properties)})
        else:
            # Guards on the sizes that hold over the whole range but that the exporter cannot prove (such as
            # `C % (C * H) != 0` of a reshape, for H >= 2) become checks in the graph rather than errors.
            exported = torch.export.export(
                network, (example,), dynamic_shapes=shapes, prefer_deferred_runtime_asserts_over_guards=True
            )
            # optimize=False: ONNX Runtime optimises the graph when it loads it.
            program = torch.onnx.export(
                exported, (example,), input_names=["image"], output_names=network.output_names, dynamo=True,
                optimize=False, verbose=False, custom_translation_table={torch.ops.aten.sort.stable: onnx_stable_sort},
            )  # fmt: skip
            model = program.model_proto
            onnx.helper.set_model_props(model, {key: json.dumps(value) for key, value in properties.items()})
            onnx.save(model, str(path))
    return path


def export_checkpoint(cfg: DictConfig) -> Path:
    """``cfg``: ``ckpt_path``, ``format``, ``output``, ``outputs``, ``dynamic``, ``input_size`` (null: the
    checkpoint's training input size) and ``batch_size``."""
    missing = [key for key in ("ckpt_path", "format", "output") if cfg.get(key) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: {__doc__.splitlines()[2]}")
    detector = load_detector(cfg.ckpt_path)
    input_size = cfg.get("input_size") or detector.letterbox.input_size
    outputs, dynamic = cfg.get("outputs", "detections"), cfg.get("dynamic", True)
    path = export(detector, cfg.output, cfg.format, input_size, cfg.batch_size, outputs, dynamic)
    shape = "any batch and size" if dynamic else f"{cfg.batch_size}x3x{input_size}x{input_size} input"
    print(f"{cfg.format} export of {cfg.ckpt_path} ({outputs}, {shape}) written to {path}")
    return path


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    export_checkpoint(cfg)


if __name__ == "__main__":
    main()
