"""Embedded default dataset: rendered shapes in COCO instances format.

The images are rendered by :mod:`keypointdet.data.shapes`.

Layout written by :func:`generate_dataset`::

    out/train/000000.png ...   out/train.json
    out/val/000000.png ...     out/val.json

The JSON files are written last and atomically, so their presence means the
dataset is complete. Their ``info.generated_by`` records the generator, its version and every setting
(:func:`generation_record`): a DataModule warns when the record of a dataset it finds differs from what it
asks for.

``python -m keypointdet.data.synthetic out=DIR [num_train=N num_val=N seed=S ...]`` (``conf/synthetic.yaml``).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig

from keypointdet.data.shapes import CLASSES, SceneConfig, render_scene
from keypointdet.io import write_text_atomically
from keypointdet.runs import hydra_main

SPLITS: tuple[str, ...] = ("train", "val")
# raised whenever the same settings would draw other images (recorded in the annotation files)
GENERATOR_VERSION = 1
# an image's rendering from its own generator: the RGB uint8 image and its COCO annotations without ids
Render = Callable[[np.random.Generator], tuple[np.ndarray, list[dict[str, Any]]]]


def _write_split(out: Path, split: str, count: int, seed: int, render: Render, image_path: str) -> dict:
    """Render and save a split's images; return its COCO images and annotations."""
    (out / image_path.format(split=split, index=0)).parent.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        # a child seed per (split, image): images are independent of each other and of the split sizes
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
        image, objects = render(rng)
        path = out / image_path.format(split=split, index=index)
        if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"could not write {path}")
        image_id = index + 1
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    return {"images": images, "annotations": annotations}


def generation_record(generator: Callable[..., Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """What an embedded dataset's annotation files record of their making (``info.generated_by``): the generator,
    its module's ``GENERATOR_VERSION`` and every setting of ``arguments`` but the output folder (the generator's
    first parameter), defaults included, as JSON values."""
    signature = inspect.signature(generator)
    output, *parameters = signature.parameters
    bound = signature.bind_partial(**{name: value for name, value in arguments.items() if name in parameters})
    bound.apply_defaults()
    record = {
        "generator": f"{generator.__module__}.{generator.__qualname__}",
        "version": sys.modules[generator.__module__].GENERATOR_VERSION,
        "settings": dict(bound.arguments),
    }
    return json.loads(json.dumps(record))


def recorded_generation(path: Path) -> dict[str, Any] | None:
    """The ``info.generated_by`` record of an annotation file; None when the file is missing, unreadable or was
    written without one (by an earlier version)."""
    try:
        info = json.loads(path.read_text()).get("info")
    except (OSError, ValueError, AttributeError):
        return None
    return info.get("generated_by") if isinstance(info, dict) else None


def write_coco_dataset(
    out: Path, sizes: dict[str, int], seed: int, render: Render, categories: list[dict], image_path: str,
    record: dict[str, Any],
) -> dict[str, Path]:  # fmt: skip
    """Render ``sizes[split]`` images per split of :data:`SPLITS`, save them to ``out / image_path`` (formatted
    with ``split`` and ``index``; the JSON ``file_name`` is the file's name) and write ``out/<split>.json``
    last and atomically, with the generator's ``record`` as ``info.generated_by``; return ``{split: annotation
    JSON path}``."""
    paths = {split: out / f"{split}.json" for split in sizes}
    for path in paths.values():
        path.unlink(missing_ok=True)  # a previous run's index must not vouch for images being rewritten
    splits = {split: _write_split(out, split, count, seed, render, image_path) for split, count in sizes.items()}
    for split, data in splits.items():
        document = {"info": {"generated_by": record}, **data, "categories": categories}
        write_text_atomically(paths[split], json.dumps(document))
    return paths


def _render_shapes(rng: np.random.Generator, config: SceneConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    image, objects = render_scene(rng, config)
    annotations = [
        {"category_id": obj.label + 1, "bbox": list(obj.bbox), "area": obj.area, "iscrowd": 0} for obj in objects
    ]
    return image, annotations


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
    record = generation_record(generate_dataset, locals())
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
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    render = partial(_render_shapes, config=config)
    sizes = {"train": num_train, "val": num_val}
    return write_coco_dataset(Path(out), sizes, seed, render, categories, "{split}/{index:06d}.png", record)


def summarize(path: str | Path) -> str:
    """A one-line summary of a split's annotation file: image and object counts, objects per class."""
    data = json.loads(Path(path).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = Counter(names[a["category_id"]] for a in data["annotations"])
    n_images, n_objects = len(data["images"]), len(data["annotations"])
    classes = ", ".join(f"{name}={per_class[name]}" for name in names.values())
    return f"{path}: {n_images} images, {n_objects} objects ({n_objects / max(n_images, 1):.1f}/image): {classes}"


def generator_settings(cfg: DictConfig, module: str, pairs: tuple[str, ...]) -> dict[str, Any]:
    """A generator's keyword arguments from its command's config: all but the output folder ``out`` (required)
    and Hydra's keys, the (min, max) settings ``pairs`` as tuples."""
    if cfg.get("out") is None:
        raise ValueError(f"give the output folder: python -m {module} out=DIR")
    settings = {key: value for key, value in cfg.items() if key not in ("out", "task_name", "paths")}
    return {key: tuple(value) if key in pairs else value for key, value in settings.items()}


@hydra_main("synthetic")
def main(cfg: DictConfig) -> None:
    """Generate the dataset into ``cfg.out`` and print one summary line per split."""
    settings = generator_settings(cfg, "keypointdet.data.synthetic", pairs=("image_size",))
    for path in generate_dataset(cfg.out, **settings).values():
        print(summarize(path))


if __name__ == "__main__":
    main()
