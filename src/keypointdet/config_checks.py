"""Configuration values that cannot work, refused with one line before any data is read or process started."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from hydra.utils import get_class
from omegaconf import DictConfig

from keypointdet.data.encode import RadiusVariant
from keypointdet.detectors.base import BACKBONE_PACKAGE

RADIUS_VARIANTS = get_args(RadiusVariant)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_tta(tta: DictConfig | None) -> None:
    """``model.tta.scales``: a non-empty list of positive scales."""
    scales = list((tta or {}).get("scales") or [1.0])
    _require(all(scale > 0 for scale in scales), f"model.tta.scales={scales}: every scale must be > 0")


def check_ckpt_path(cfg: DictConfig) -> None:
    """``ckpt_path``, when given, names an existing file."""
    path = cfg.get("ckpt_path")
    _require(path is None or Path(path).is_file(), f"ckpt_path={path}: no such file")


def check_backbone(backbone: DictConfig) -> None:
    """``backbone._target_``: a backbone class of this package. Both detectors take any of them (one feature map
    per stack at the backbone's stride); :func:`keypointdet.detectors.build_backbone` builds nothing else."""
    target = backbone.get("_target_")
    _require(
        isinstance(target, str) and target.startswith(BACKBONE_PACKAGE),
        f"backbone._target_={target}: not a keypointdet backbone (a class in {BACKBONE_PACKAGE}*, conf/backbone/)",
    )


def backbone_size_divisor(backbone: DictConfig) -> int:
    """The size divisor of the backbone class of ``backbone._target_`` (read from the class, nothing built)."""
    return int(getattr(get_class(backbone._target_), "size_divisor", 1))


def check_input_size(input_size: int | str, divisor: int) -> None:
    """``input_size`` is ``"auto"`` or a multiple of the backbone's size ``divisor``."""
    if input_size != "auto" and input_size % divisor:
        nearest = round(input_size / divisor) * divisor or divisor
        raise ConfigError(
            f"data.input_size={input_size}: must be a multiple of the backbone's size divisor {divisor} (e.g. {nearest})"
        )


def check_training_config(cfg: DictConfig) -> None:
    """Every check of the README's "Refused at start-up" table for ``train.py`` (and the tools composing its config)."""
    model, data = cfg.model, cfg.data
    loss, targets = model.get("loss", {}), model.get("targets", {})
    for name in ("alpha", "beta"):
        value = loss.get(name)
        _require(value is None or value >= 0, f"model.loss.{name}={value}: the focal-loss exponent must be >= 0")
    min_overlap = targets.get("min_overlap")
    _require(
        min_overlap is None or 0 < min_overlap < 1, f"model.targets.min_overlap={min_overlap}: must be in (0, 1)"
    )
    variant = targets.get("radius_variant")
    _require(
        variant is None or variant in RADIUS_VARIANTS,
        f"model.targets.radius_variant={variant}: must be one of {', '.join(RADIUS_VARIANTS)}",
    )
    max_objects = targets.get("max_objects")
    _require(max_objects is None or max_objects >= 1, f"model.targets.max_objects={max_objects}: must be >= 1")
    _require(model.get("k") is None or model.k >= 1, f"model.k={model.get('k')}: must be >= 1")
    check_tta(model.get("tta"))
    check_backbone(cfg.backbone)
    check_input_size(data.input_size, backbone_size_divisor(cfg.backbone))
    for name in ("batch_size", "val_batch_size"):
        value = data.get(name)
        _require(value is None or value >= 1, f"data.{name}={value}: must be >= 1 (it is per device)")
    check_ckpt_path(cfg)
