"""Checkpoint files: plain tensors and containers only, read with ``torch.load(weights_only=True)``.

Every checkpoint this repository writes (``train.py``'s Lightning checkpoints, the converter's) holds

- ``state_dict``: the detector's tensors, each key prefixed with ``detector.``;
- ``keypointdet``: ``{"detector": KeypointDetector.config(), "input": {"input_size", "mean", "std"}}``,
  everything needed to rebuild the detector and to prepare its input (:func:`keypointdet.inference.load_detector`).

A file that needs more than that to unpickle is refused, never executed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from keypointdet.detectors import KeypointDetector, build_detector
from keypointdet.io import write_atomically
from keypointdet.log import get_logger

log = get_logger(__name__)

METADATA_KEY = "keypointdet"
PREFIX = "detector."


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, truncated, unsafe, or not of this repository)."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, unpickled with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses every global that is not a tensor type or a plain container
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, and was not loaded (loading it "
            f"could run code): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {error}") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def metadata(detector: KeypointDetector, input_record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``keypointdet`` entry of a checkpoint: the detector's config and how its input is prepared
    (``input_size`` of the letterbox, RGB ``mean`` and ``std`` on the 0-1 scale)."""
    record = {"input_size": int(input_record["input_size"])}
    record.update({key: [float(value) for value in input_record[key]] for key in ("mean", "std")})
    return {"detector": detector.config(), "input": record}


def save_detector(path: str | Path, detector: KeypointDetector, input_record: Mapping[str, Any]) -> Path:
    """Write ``detector`` alone as a checkpoint of this repository (atomically)."""
    checkpoint = {
        "state_dict": {PREFIX + name: value for name, value in detector.state_dict().items()},
        METADATA_KEY: metadata(detector, input_record),
    }
    return write_atomically(path, lambda file: torch.save(checkpoint, file))


def checkpoint_metadata(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``keypointdet`` entry; a clear error for files of other code or older versions."""
    if METADATA_KEY not in checkpoint:
        raise CheckpointError(
            f"{path} was not written by this version of keypointdet (no '{METADATA_KEY}' entry): retrain, or "
            "convert official weights with python -m keypointdet.tools.convert_official"
        )
    return checkpoint[METADATA_KEY]


def detector_from_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> KeypointDetector:
    """The checkpoint's detector with its weights (train mode, CPU)."""
    config = dict(checkpoint_metadata(checkpoint, path)["detector"])
    if "pretrained" in config["backbone"]:  # the ImageNet weights are in the state_dict: no download
        config["backbone"] = {**config["backbone"], "pretrained": False}
    detector = build_detector(config)
    state_dict = {
        name.removeprefix(PREFIX): value for name, value in checkpoint["state_dict"].items() if name.startswith(PREFIX)
    }
    missing, unexpected = detector.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its detector: missing {missing}, unexpected {unexpected}")
    return detector


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (``trainer.save_checkpoint``, every ``ModelCheckpoint``) through
    :func:`write_atomically`: a run killed at any moment leaves each checkpoint whole or absent. A checkpoint
    whose weights are not finite is never written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        non_finite = non_finite_tensors(checkpoint.get("state_dict", {}))
        if non_finite:
            raise CheckpointError(f"not writing {path}: non-finite weights in {', '.join(non_finite[:5])}")
        write_atomically(path, lambda file: torch.save(checkpoint, file))


def initialise_from(detector: KeypointDetector, path: str | Path) -> dict[str, list[str]]:
    """Start ``detector`` from the weights of a checkpoint of this repository (``model.init_from``, fine-tuning).

    Every tensor whose name and shape match is loaded. When the classes differ (names, or their order), the
    heatmaps' last layers (:meth:`KeypointDetector.class_layers`) keep their fresh initialisation (prior
    bias) except for the classes whose names the checkpoint also has: those rows of the weight and bias are
    copied from the checkpoint's channel of the same name. No optimizer state or epoch is read (that is
    resuming, ``ckpt_path``). Logs and returns the tensor names ``loaded``, ``not_in_checkpoint`` (left at their
    initialisation), ``ignored`` (checkpoint tensors of other names or shapes) and the class names ``kept`` and
    ``reinitialised``.
    """
    checkpoint = load_checkpoint(path)
    source_names = list(checkpoint_metadata(checkpoint, path)["detector"]["class_names"])
    source = {key.removeprefix(PREFIX): value for key, value in checkpoint["state_dict"].items() if key.startswith(PREFIX)}
    target = detector.state_dict()
    class_tensors = {f"{layer}.{kind}" for layer in detector.class_layers() for kind in ("weight", "bias")}
    same_classes = source_names == detector.class_names
    source_row = {name: row for row, name in enumerate(source_names)}
    kept = [name for name in detector.class_names if name in source_row]
    loaded, ignored = {}, []
    for key, value in source.items():
        if key not in target or target[key].shape[1:] != value.shape[1:]:
            ignored.append(key)
        elif key in class_tensors and not same_classes:
            if kept:  # otherwise the whole layer stays at its fresh initialisation
                rows = target[key].clone()
                for row, name in enumerate(detector.class_names):
                    if name in source_row:
                        rows[row] = value[source_row[name]]
                loaded[key] = rows
        elif target[key].shape == value.shape:
            loaded[key] = value
        else:
            ignored.append(key)
    detector.load_state_dict(loaded, strict=False)
    summary = {
        "loaded": list(loaded),
        "not_in_checkpoint": [key for key in target if key not in loaded],
        "ignored": ignored,
        "kept": detector.class_names if same_classes else kept,
        "reinitialised": [] if same_classes else [name for name in detector.class_names if name not in source_row],
    }
    log.info(
        f"model.init_from={path}: {len(loaded)} of {len(target)} tensors loaded; classes kept from the checkpoint "
        f"{summary['kept']}, re-initialised with the prior bias {summary['reinitialised']}; left at their "
        f"initialisation {summary['not_in_checkpoint']}; checkpoint tensors ignored {ignored}"
    )
    return summary
