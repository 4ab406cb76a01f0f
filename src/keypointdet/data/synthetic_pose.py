"""Embedded pose dataset: articulated figures in COCO person-keypoints format.

The images are rendered by :mod:`keypointdet.data.pose_scenes` (figures from :mod:`keypointdet.data.figures`).

Layout written by :func:`generate_pose_dataset`::

    root/images/train_000000.png ...  root/images/val_000000.png ...
    root/train.json   root/val.json

The JSON files are written last and atomically, so their presence means the dataset is complete. One category,
``{"id": 1, "name": "figure", "supercategory": "figure", "keypoints": KEYPOINT_NAMES, "skeleton": SKELETON}``;
each annotation has ``bbox`` (x, y, w, h), ``area``, ``iscrowd`` 0, ``keypoints`` ``[x1, y1, v1, ...]`` (13
joints) and ``num_keypoints`` (joints with v > 0).

Coordinates are continuous with pixel i spanning [i, i + 1) (the shapes dataset's boxes): a joint at (x, y)
lies in pixel (floor(x), floor(y)); written rounded down to 1/100 pixel. Visibility as COCO: 2 visible, 1 hidden
behind a figure or an occluding rectangle drawn in front, 0 outside the image (then x = y = 0).

``python -m keypointdet.data.synthetic_pose out=DIR [num_train=N num_val=N seed=S ...]``
(``conf/synthetic_pose.yaml``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from keypointdet.data.figures import FLIP_PAIRS, KEYPOINT_NAMES, SKELETON
from keypointdet.data.pose_scenes import DrawnItem, PoseSceneConfig, render_pose_scene
from keypointdet.data.synthetic import SPLITS, generation_record, generator_settings, write_coco_dataset
from keypointdet.runs import hydra_main

__all__ = ["FLIP_PAIRS", "KEYPOINT_NAMES", "SIGMAS", "SKELETON", "generate_pose_dataset", "summarize"]

# raised whenever the same settings would draw other images (recorded in the annotation files). 2: every figure
# faces the viewer, limbs shaded by depth (1 mirrored half of them and shaded the left limbs darker)
GENERATOR_VERSION = 2

# OKS sigmas of the joints, COCO's for the body joints (shoulders .079, elbows .072, wrists .062, hips .107,
# knees .087, ankles .089). The head: our choice of .079, COCO having no head-centre joint (its face joints
# are .025 - .035, far too strict for the centre of a disc).
SIGMAS: tuple[float, ...] = (0.079, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
CATEGORY = {
    "id": 1, "name": "figure", "supercategory": "figure", "keypoints": list(KEYPOINT_NAMES), "skeleton": SKELETON
}  # fmt: skip
# the standard logger, not keypointdet.log's rank-zero one: generation runs in one process (a DataModule's
# prepare_data or this module's command), and importing Lightning would make the command take seconds more
_LOG = logging.getLogger(__name__)


def _annotation(figure: DrawnItem) -> dict[str, Any]:
    """A figure's COCO annotation, without its ids."""
    keypoints = figure.keypoints.copy()
    keypoints[:, :2] = np.floor(keypoints[:, :2] * 100) / 100  # down, so that a joint stays in its pixel
    return {
        "category_id": CATEGORY["id"],
        "bbox": list(figure.bbox),
        "area": figure.area,
        "iscrowd": 0,
        "num_keypoints": int(np.count_nonzero(keypoints[:, 2])),
        "keypoints": [value for x, y, v in keypoints.tolist() for value in (x, y, int(v))],
    }


class _FigureRenderer:
    """Renders an image of figures and its annotations from a generator, counting the figures not drawn."""

    def __init__(self, config: PoseSceneConfig) -> None:
        self.config = config
        self.skipped = 0

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
        scene = render_pose_scene(rng, self.config)
        self.skipped += scene.skipped_figures
        return scene.image, [_annotation(figure) for figure in scene.figures]


def generate_pose_dataset(
    root: str | Path,
    num_train: int = 3000,
    num_val: int = 250,
    seed: int = 0,
    image_size: int = 128,
    figures_per_image: tuple[int, int] = (1, 4),
    figure_height: tuple[float, float] = (56.0, 110.0),
    min_visible_joints: int = 3,
    min_box: float = 8.0,
    max_covered: float = 0.5,
    truncation_probability: float = 0.3,
    occluder_probability: float = 0.3,
) -> None:
    """Write the pose dataset under ``root`` (``root/images/``, ``root/train.json``, ``root/val.json``) and log
    how many figures could not be placed under the rules below (none is drawn unannotated).

    Args:
        root: Output folder.
        num_train: Number of training images.
        num_val: Number of validation images.
        seed: Seed; the same seed gives byte-identical files (with the same numpy and OpenCV builds).
        image_size: Width and height of the (square) images.
        figures_per_image: (min, max) of the figures drawn per image, uniformly (fewer if placements fail).
        figure_height: (min, max) nominal standing height of a figure (ankles to head top) in pixels.
        min_visible_joints: Every figure keeps at least this many joints visible (v=2).
        min_box: Smallest side of a figure's box (inside the image), in pixels.
        max_covered: Largest fraction of a figure's pixels that later figures and occluders may hide.
        truncation_probability: Chance that a figure may cross the image border (by up to half its size).
        occluder_probability: Chance that an image has an occluding rectangle, at a random depth.
    """
    record = generation_record(generate_pose_dataset, locals())
    low, high = figures_per_image
    if not (1 <= low <= high and 0 < figure_height[0] <= figure_height[1] <= image_size):
        raise ValueError(f"need 1 <= figures_per_image {figures_per_image} and 0 < figure_height {figure_height} "
                         f"<= image_size {image_size}, each (min, max) with min <= max")  # fmt: skip
    if not (1 <= min_visible_joints <= len(KEYPOINT_NAMES) and 0 < max_covered < 1):
        raise ValueError(f"need 1 <= min_visible_joints <= {len(KEYPOINT_NAMES)} and 0 < max_covered < 1")
    if not (0 <= truncation_probability <= 1 and 0 <= occluder_probability <= 1):
        raise ValueError("truncation_probability and occluder_probability are probabilities, in [0, 1]")
    config = PoseSceneConfig(
        image_size, figures_per_image, figure_height, min_visible_joints, min_box, max_covered,
        truncation_probability, occluder_probability,
    )  # fmt: skip
    render = _FigureRenderer(config)
    sizes = {"train": num_train, "val": num_val}
    write_coco_dataset(Path(root), sizes, seed, render, [CATEGORY], "images/{split}_{index:06d}.png", record)
    _LOG.info(f"{render.skipped} figures could not be placed (occlusion, truncation, box size) and were not drawn")


def summarize(path: str | Path) -> str:
    """A one-line summary of a split's annotation file: images, figures, joints per visibility flag."""
    data = json.loads(Path(path).read_text())
    flags = np.array([a["keypoints"][2::3] for a in data["annotations"]]).reshape(-1)
    n_images, n_figures = len(data["images"]), len(data["annotations"])
    counts = ", ".join(f"v={v}: {np.count_nonzero(flags == v)}" for v in (2, 1, 0))
    return f"{path}: {n_images} images, {n_figures} figures ({n_figures / max(n_images, 1):.1f}/image); joints {counts}"


@hydra_main("synthetic_pose")
def main(cfg: DictConfig) -> None:
    """Generate the dataset into ``cfg.out`` and print one summary line per split."""
    pairs = ("figures_per_image", "figure_height")
    settings = generator_settings(cfg, "keypointdet.data.synthetic_pose", pairs)
    generate_pose_dataset(cfg.out, **settings)
    for split in SPLITS:
        print(summarize(Path(cfg.out) / f"{split}.json"))


if __name__ == "__main__":
    main()
