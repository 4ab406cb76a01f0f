"""Embedded default dataset: rendered shapes in COCO instances format.

The images are rendered by :mod:`keypointdet.data.shapes`.

Layout written by :func:`generate_dataset`::

    out/train/000000.png ...   out/train.json
    out/val/000000.png ...     out/val.json

The JSON files are written last and atomically, so their presence means the
dataset is complete.

``python -m keypointdet.data.synthetic out=DIR [num_train=N num_val=N seed=S ...]`` (``conf/synthetic.yaml``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from omegaconf import DictConfig

from keypointdet.data.shapes import CLASSES, SceneConfig, render_scene
from keypointdet.io import write_text_atomically
from keypointdet.runs import hydra_main

SPLITS: tuple[str, ...] = ("train", "val")


def _write_split(out: Path, split: str, count: int, seed: int, config: SceneConfig) -> dict:
    """Render and save a split's images; return its COCO dict."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        # a child seed per (split, image): images are independent of each other and of the split sizes
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
        image, objects = render_scene(rng, config)
        file_name = f"{index:06d}.png"
        if not cv2.imwrite(str(folder / file_name), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"could not write {folder / file_name}")
        image_id = index + 1
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": list(obj.bbox),
                    "area": obj.area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def generate_dataset(
    out: str | Path,
    num_train: int = 2000,
    num_val: int = 250,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 160),
    min_object: int = 6,
    max_object_fraction: float = 0.5,
    max_objects: int = 15,
    max_covered: float = 0.35,
) -> dict[str, Path]:
    """Write the shapes dataset under ``out`` and return ``{split: annotation JSON path}``.

    Args:
        out: Output folder; images go to ``out/<split>/``, annotations to ``out/<split>.json``.
        num_train: Number of training images.
        num_val: Number of validation images.
        seed: Seed; the same seed gives byte-identical files (with the same numpy and OpenCV builds).
        image_size: (min, max) of image width and of image height, each drawn independently.
        min_object: Smallest longest side of an object, in pixels.
        max_object_fraction: Largest longest side of an object, as a fraction of the image's short side.
        max_objects: Objects per image are drawn uniformly from 1..max_objects (fewer if placements fail).
        max_covered: Largest fraction of an object that later objects may hide.
    """
    low, high = image_size
    if not 0 < low <= high:
        raise ValueError(f"image_size must be (min, max) with 0 < min <= max, got {image_size}")
    if not 0 < max_object_fraction <= 1 - 2 / low:
        raise ValueError(f"max_object_fraction={max_object_fraction} leaves no 1-pixel margin in a {low} px image")
    if not 1 <= min_object <= max_object_fraction * low:
        raise ValueError(f"min_object={min_object} does not fit max_object_fraction={max_object_fraction} of {low} px")
    if max_objects < 1 or not 0 < max_covered < 1:
        raise ValueError("need max_objects >= 1 and 0 < max_covered < 1")
    config = SceneConfig(image_size, min_object, max_object_fraction, max_objects, max_covered)
    out = Path(out)
    paths = {split: out / f"{split}.json" for split in SPLITS}
    for path in paths.values():
        path.unlink(missing_ok=True)  # a previous run's index must not vouch for images being rewritten
    datasets = {split: _write_split(out, split, n, seed, config) for split, n in zip(SPLITS, (num_train, num_val))}
    for split, data in datasets.items():
        write_text_atomically(paths[split], json.dumps(data))
    return paths


def summarize(path: str | Path) -> str:
    """A one-line summary of a split's annotation file: image and object counts, objects per class."""
    data = json.loads(Path(path).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = Counter(names[a["category_id"]] for a in data["annotations"])
    n_images, n_objects = len(data["images"]), len(data["annotations"])
    classes = ", ".join(f"{name}={per_class[name]}" for name in names.values())
    return f"{path}: {n_images} images, {n_objects} objects ({n_objects / max(n_images, 1):.1f}/image): {classes}"


@hydra_main("synthetic")
def main(cfg: DictConfig) -> None:
    """Generate the dataset into ``cfg.out`` and print one summary line per split."""
    if cfg.get("out") is None:
        raise ValueError("give the output folder: python -m keypointdet.data.synthetic out=DIR")
    settings = {key: value for key, value in cfg.items() if key not in ("out", "task_name", "paths")}
    settings["image_size"] = tuple(settings["image_size"])
    for path in generate_dataset(cfg.out, **settings).values():
        print(summarize(path))


if __name__ == "__main__":
    main()
