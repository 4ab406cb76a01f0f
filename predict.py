"""Detect objects: ``python predict.py ckpt_path=FILE input=IMAGE_DIR_VIDEO_OR_CAMERA output=DIR [score_threshold=0.3]``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from keypointdet.runs.predict import run

    run(cfg)


if __name__ == "__main__":
    main()
