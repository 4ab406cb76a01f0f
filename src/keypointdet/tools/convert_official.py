"""Official CenterNet / CornerNet model-zoo checkpoints -> state dicts of this repository's detectors.

Pure functions (tensors in, tensors out); the reference data and the rules are described in the
official networks' README (``shared/official/README.md``):

- :func:`read_official` reads both official file formats (CenterNet ``{'epoch', 'state_dict'[, 'optimizer']}``,
  keys bare or ``module.``-prefixed; CornerNet's plain ``module.``-prefixed OrderedDict);
- :func:`convert_state_dict` renames by role (:mod:`keypointdet.tools.official_keys`), folds the DCN
  biases into the following BatchNorm's running mean, drops DLA's dead tensors, reverses the input
  channels of the first conv (the converted model reads RGB) and refuses any file that does not match;
- :func:`official_config` / :func:`build_detector`: the detector that holds the converted weights;
- :func:`convert_file` (``python -m keypointdet.tools.convert_official arch=ARCH input=FILE output=FILE.ckpt
  [backbone.<key>=...]``, ``conf/convert_official.yaml``) writes an ordinary checkpoint of this repository.

The converted model reads RGB images normalised with :data:`OFFICIAL_MEAN_RGB` / :data:`OFFICIAL_STD_RGB`
(COCO statistics, not ImageNet's): ``converted(x.flip(1)) == official(x)`` for a normalised BGR ``x``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from keypointdet import detectors
from keypointdet.checkpoints import save_detector
from keypointdet.detectors import KeypointDetector
from keypointdet.log import get_logger
from keypointdet.runs import CONFIG_DIR, hydra_main
from keypointdet.tools import official_keys as keys

log = get_logger(__name__)

_RESNET = "keypointdet.models.backbones.resnet.ResNet"
_DLA = "keypointdet.models.backbones.dla.DLA"
_HOURGLASS = "keypointdet.models.backbones.hourglass.Hourglass"
_HOURGLASS_104 = {
    "_target_": _HOURGLASS, "num_stacks": 2, "depth": 5, "dims": [256, 256, 384, 384, 384, 512],
    "modules": [2, 2, 2, 2, 2, 4], "stem_channels": 128, "out_channels": 256, "pretrained": False,
}  # fmt: skip

# arch -> detector, network family (key table), backbone config (Hydra form), detector kwargs, first conv
OFFICIAL_ARCHS: dict[str, dict[str, Any]] = {
    "centernet_resdcn18": {
        "detector": "centernet",
        "family": "resdcn",
        "backbone": {"_target_": _RESNET, "depth": 18, "pretrained": False, "neck_channels": [256, 128, 64],
                     "deformable": True, "skip_connections": False},
        "detector_kwargs": {"num_classes": 80, "head_channels": 64},
        "first_conv": "conv1.weight",
    },
    "centernet_dla34": {
        "detector": "centernet",
        "family": "dla",
        "backbone": {"_target_": _DLA, "variant": "dla34", "pretrained": False, "deformable": True},
        "detector_kwargs": {"num_classes": 80, "head_channels": 256},
        "first_conv": "base.base_layer.0.weight",
    },
    # multi_pose_dla_3x.pth / multi_pose_dla_1x.pth: one class (person), COCO's 17 keypoints (data=coco_keypoints)
    "centernet_pose_dla34": {
        "detector": "centernet_pose",
        "family": "dla",
        "backbone": {"_target_": _DLA, "variant": "dla34", "pretrained": False, "deformable": True},
        "detector_kwargs": {"num_classes": 1, "head_channels": 256, "category_ids": [1], "class_names": ["person"]},
        "first_conv": "base.base_layer.0.weight",
    },
    "centernet_hourglass104": {
        "detector": "centernet",
        "family": "hourglass",
        "backbone": _HOURGLASS_104,
        "detector_kwargs": {"num_classes": 80, "head_channels": 256},  # dims[0], whatever head_conv says
        "first_conv": "pre.0.conv.weight",
    },
    "cornernet_hourglass104": {
        "detector": "cornernet",
        "family": "hourglass",
        "backbone": _HOURGLASS_104,
        "detector_kwargs": {"num_classes": 80, "head_channels": 256, "pool_channels": 128},
        "first_conv": "pre.0.conv.weight",
    },
}  # fmt: skip

# The official evaluation input: CenterNet letterboxes to 512 (--keep_res tests at the native size), CornerNet
# trains on 511 x 511 crops.
INPUT_SIZES = {"centernet": 512, "centernet_pose": 512, "cornernet": 511}

# The official input normalisation (``coco.py`` of both repositories), here in RGB order.
OFFICIAL_MEAN_RGB = [0.47026115, 0.44719302, 0.40789654]
OFFICIAL_STD_RGB = [0.27809835, 0.27408164, 0.28863828]

# COCO 2017 (instances_val2017.json): the 80 category ids, in the official label order, and their names.
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip
COCO_CLASS_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip


class OfficialCheckpointError(ValueError):
    """A file that is not an official checkpoint, or whose tensors do not match the architecture."""


def official_config(arch: str, backbone_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The detector that holds a converted ``arch`` checkpoint, as plain data.

    Returns ``{"arch", "detector": a config for keypointdet.detectors.build_detector (name, backbone with
    _target_, num_classes, COCO category ids and names, head widths), "input": {"input_size", "mean", "std"}}``
    with the official normalisation in RGB order. ``backbone_overrides`` replace backbone config entries (e.g. a
    reduced hourglass: ``depth``, ``dims``, ``modules``, ``stem_channels``, ``out_channels``); the hourglass
    heads' hidden width follows ``dims[0]``.
    """
    if arch not in OFFICIAL_ARCHS:
        raise ValueError(f"unknown official architecture {arch!r}; known: {sorted(OFFICIAL_ARCHS)}")
    spec = copy.deepcopy(OFFICIAL_ARCHS[arch])
    overrides = dict(backbone_overrides or {})
    unknown = sorted(set(overrides) - set(spec["backbone"]) - {"_target_"})
    if unknown:
        raise ValueError(f"{arch}: unknown backbone overrides {unknown}; known: {sorted(spec['backbone'])}")
    spec["backbone"].update(copy.deepcopy(overrides))
    if spec["family"] == "hourglass":
        spec["detector_kwargs"]["head_channels"] = int(spec["backbone"]["dims"][0])
    if spec["detector"] == "centernet_pose":
        spec["detector_kwargs"]["keypoints"] = coco_keypoints()
    detector = {
        "name": spec["detector"],
        "backbone": spec["backbone"],
        "category_ids": list(COCO_CATEGORY_IDS),
        "class_names": list(COCO_CLASS_NAMES),
        **spec["detector_kwargs"],
    }
    record = {"input_size": INPUT_SIZES[spec["detector"]], "mean": list(OFFICIAL_MEAN_RGB), "std": list(OFFICIAL_STD_RGB)}
    return {"arch": arch, "detector": detector, "input": record}


def coco_keypoints() -> dict[str, Any]:
    """COCO's 17 person keypoints (names, flip pairs, OKS sigmas, skeleton), as ``data=coco_keypoints`` gives them."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "coco_keypoints.yaml").keypoints)


def build_detector(config: Mapping[str, Any], device: torch.device | str | None = None) -> KeypointDetector:
    """This repository's detector for an :func:`official_config` (``device="meta"``: shapes only, no memory)."""
    with torch.device(device or "cpu"):
        return detectors.build_detector(config["detector"])


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove DataParallel's ``module.`` as the official ``load_model`` does (keys starting with ``module``
    but not ``module_list`` lose their first 7 characters)."""
    stripped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        bare = key[7:] if key.startswith("module") and not key.startswith("module_list") else key
        if bare in stripped:
            raise OfficialCheckpointError(f"{bare!r} appears both with and without the 'module.' prefix")
        stripped[bare] = value
    return stripped


def read_official(path: str | PathLike[str]) -> dict[str, Tensor]:
    """The official state dict (``module.`` prefixes stripped) in a CenterNet or CornerNet checkpoint file.

    Loads with ``weights_only=True`` (no code runs); ``epoch`` / ``optimizer`` are ignored. Raises
    :class:`OfficialCheckpointError` naming the file when it is not such a checkpoint.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001 - unpickling raises many kinds; all mean "not loadable"
        raise OfficialCheckpointError(
            f"{path}: not loadable as an official checkpoint with torch.load(weights_only=True): {error}"
        ) from error
    state_dict = loaded.get("state_dict") if isinstance(loaded, Mapping) and "state_dict" in loaded else loaded
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise OfficialCheckpointError(
            f"{path}: not an official checkpoint: expected {{'epoch', 'state_dict'}} (CenterNet) or a state dict "
            f"(CornerNet), got {type(loaded).__name__}"
            + (f" with keys {sorted(map(str, loaded))[:10]}" if isinstance(loaded, Mapping) else "")
        )
    bad = sorted(str(key) for key, value in state_dict.items() if not (isinstance(key, str) and torch.is_tensor(value)))
    if bad:
        raise OfficialCheckpointError(f"{path}: not an official checkpoint: non-tensor entries {bad[:10]}")
    return strip_module_prefix(state_dict)


def _listing(title: str, items: list[str], limit: int = 40) -> str:
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n  " + "\n  ".join(items[:limit]) + more


def convert_state_dict(
    arch: str, official_state_dict: Mapping[str, Tensor], backbone_overrides: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """The state dict of this repository's detector (:func:`official_config`) for an official one.

    All of it or nothing: any official key without a role here, any entry of the detector without an
    official source, any shape mismatch raises :class:`OfficialCheckpointError` listing the keys.
    ``num_batches_tracked`` entries are ignored (the converted ones are 0). Keys come out in the order of
    the detector's ``state_dict()``, so ``load_state_dict(strict=True)`` takes them as they are.
    """
    config = official_config(arch, backbone_overrides)
    spec = OFFICIAL_ARCHS[arch]
    detector = build_detector(config, "meta")  # shapes only
    expected = {key: (tuple(value.shape), value.dtype) for key, value in detector.state_dict().items()}
    table = keys.table_for(spec["family"], spec["detector"], config["detector"]["backbone"])
    source = {
        key: value for key, value in strip_module_prefix(official_state_dict).items()
        if not key.endswith("num_batches_tracked")
    }  # fmt: skip
    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our key -> official key
    biases: dict[str, tuple[str, Tensor]] = {}
    unexpected: list[str] = []
    for key, value in source.items():
        target = keys.rename(table, key)
        if target is None or (isinstance(target, str) and target != keys.DROP and target not in expected):
            unexpected.append(key)
        elif isinstance(target, keys.Fold):
            biases[target.running_mean] = (key, value)
        elif target != keys.DROP:
            converted[target], origin[target] = value, key
    if spec["first_conv"] in source:
        first = keys.rename(table, spec["first_conv"])
        converted[first] = converted[first][:, [2, 1, 0]]  # BGR -> RGB input channels
    inverse = keys.inverse(table)
    missing = [
        f"{keys.official_name(inverse, key)} (-> {key})"
        for key in expected
        if key not in converted and not key.endswith("num_batches_tracked")
    ]
    folded = keys.folds(table)  # official DCN bias -> running mean
    missing += [f"{name} (DCN bias)" for name, mean in folded.items() if mean in expected and mean not in biases]
    mismatched = [
        f"{origin[key]}: {tuple(value.shape)} in the file, {expected[key][0]} expected for {key}"
        for key, value in converted.items()
        if tuple(value.shape) != expected[key][0]
    ]
    mismatched += [
        f"{official}: {tuple(bias.shape)} in the file, {expected[mean][0]} expected (folded into {mean})"
        for mean, (official, bias) in biases.items()
        if mean in expected and tuple(bias.shape) != expected[mean][0]
    ]
    if unexpected or missing or mismatched:
        problems = [
            _listing(title, items)
            for title, items in (
                ("unexpected keys (no role in this architecture)", unexpected),
                ("missing keys", missing),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise OfficialCheckpointError(
            f"the state dict does not match the official {arch}"
            + (f" with backbone overrides {dict(backbone_overrides)}" if backbone_overrides else "")
            + "; nothing was converted.\n"
            + "\n".join(problems)
        )
    for mean, (_, bias) in biases.items():
        # eval-mode BN(x + b) == BN with running_mean - b, exactly
        converted[mean] = converted[mean] - bias.to(converted[mean].dtype)
    result = {}
    for key, (shape, dtype) in expected.items():
        result[key] = converted[key] if key in converted else torch.zeros(shape, dtype=dtype)
    return result


def convert_file(
    arch: str, input_path: str | PathLike[str], output: str | PathLike[str], backbone_overrides: Mapping[str, Any] | None = None
) -> KeypointDetector:
    """Convert the official checkpoint ``input_path`` and write it to ``output`` as a checkpoint of this
    repository (``load_detector``, ``eval.py``, ``predict.py``, export and ``model.init_from`` read it)."""
    config = official_config(arch, backbone_overrides)
    state_dict = convert_state_dict(arch, read_official(input_path), backbone_overrides)
    detector = build_detector(config)
    detector.load_state_dict(state_dict, strict=True)
    save_detector(output, detector, config["input"])
    return detector


@hydra_main("convert_official")
def main(cfg: DictConfig) -> None:
    missing = [key for key in ("arch", "input", "output") if cfg.get(key) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: python -m keypointdet.tools.convert_official arch=ARCH "
                         "input=OFFICIAL_FILE output=FILE.ckpt")  # fmt: skip
    overrides = {key: value for key, value in (cfg.get("backbone") or {}).items() if value is not None}
    detector = convert_file(cfg.arch, cfg.input, cfg.output, overrides)
    parameters = sum(parameter.numel() for parameter in detector.parameters())
    print(f"{cfg.arch}: {cfg.input} converted ({parameters / 1e6:.1f}M parameters) and written to {cfg.output}")


if __name__ == "__main__":
    main()
