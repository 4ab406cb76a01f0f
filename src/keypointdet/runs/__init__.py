"""The runs behind the entry points (``train.py``, ``eval.py``, ``predict.py`` and the ``python -m`` tools),
all configured by Hydra from the repository's ``conf/``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

REPOSITORY = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPOSITORY / "conf"


def hydra_main(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` on ``conf/<config_name>.yaml`` from any working directory (``python -m ...``), with
    ``PROJECT_ROOT`` (the root of ``paths.*``) defaulting to the repository."""
    os.environ.setdefault("PROJECT_ROOT", str(REPOSITORY))
    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
