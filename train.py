"""Train a keypoint detector: ``python train.py [model=cornernet] [data=coco data.root=DIR] [key=value ...]``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from keypointdet.runs.train import train

    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
