"""COCO evaluation of a checkpoint: ``python eval.py ckpt_path=FILE [data=coco data.root=DIR] [key=value ...]``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from keypointdet.runs.evaluate import evaluate

    return evaluate(cfg).get("val/mAP")


if __name__ == "__main__":
    main()
