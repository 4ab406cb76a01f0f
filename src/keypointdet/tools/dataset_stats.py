"""What decides the training targets of a dataset, from its annotations alone (no image is read).

``python -m keypointdet.tools.dataset_stats data=coco data.root=/data/coco2017 [model=cornernet] [...]``
composes ``conf/dataset_stats.yaml`` (``conf/train.yaml`` with its own task name) with the given overrides, as
``train.py`` does, and prints,
for the train and val splits, at the scale the network sees them (the long side resized to
``data.input_size``, as in evaluation; training crops vary around it):

- objects per image against ``model.targets.max_objects`` (objects beyond it are not encoded);
- centre collisions at the output stride: objects of one class whose centres fall in the same output cell,
  so only one of them gets a peak (the CenterNet paper's statistic), and for CornerNet the same for the
  top-left and the bottom-right corners;
- box sizes in input pixels and the gaussian radii (in output cells) they get with the model's
  ``min_overlap`` and ``radius_variant``;
- the learning check of the training split (:mod:`keypointdet.diagnosis`): image scale, objects smaller than
  the stride, centre collisions, classes with few images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from keypointdet.boxes import letterbox_size
from keypointdet.data.coco import CocoDetection
from keypointdet.data.encode import gaussian_radius
from keypointdet.detectors import CornerNet
from keypointdet.diagnosis import data_findings, paragraph
from keypointdet.runs import hydra_main

QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)


def _collisions(labels: np.ndarray, points: np.ndarray, stride: int) -> int:
    """Objects whose point ``[N, 2]`` (input pixels) shares its output cell with an earlier one of its class."""
    cells = np.floor(points / stride).astype(np.int64)
    return len(labels) - len(set(zip(labels.tolist(), cells[:, 0].tolist(), cells[:, 1].tolist())))


def dataset_statistics(
    dataset: CocoDetection,
    input_size: int,
    stride: int = 4,
    max_objects: int = 128,
    min_overlap: float = 0.7,
    radius_variant: str = "corrected",
) -> dict[str, Any]:
    """Target statistics of ``dataset``'s (checked, non-crowd) boxes at the evaluation scale.

    Returns ``num_images``, ``num_objects``, ``objects_per_image [num_images]``, ``images_over_max``,
    ``objects_over_max`` (not encoded), ``centre_collisions``, ``tl_collisions``, ``br_collisions``,
    ``box_width`` / ``box_height`` ``[num_objects]`` (input pixels) and ``radius [num_objects]`` (whole
    output cells, as the encoders draw them).
    """
    counts, widths, heights, radii = [], [], [], []
    collisions = {"centre": 0, "tl": 0, "br": 0}
    for image_id in dataset.image_ids:
        info = dataset.coco.imgs[image_id]
        boxes, labels, _ = dataset.annotations(image_id)
        input_height, input_width = letterbox_size(info["height"], info["width"], input_size)
        boxes = boxes * np.array([input_width / info["width"], input_height / info["height"]] * 2)
        counts.append(len(boxes))
        points = {"centre": (boxes[:, :2] + boxes[:, 2:]) / 2, "tl": boxes[:, :2], "br": boxes[:, 2:]}
        for name, at in points.items():
            collisions[name] += _collisions(labels, at, stride)
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        widths.append(width)
        heights.append(height)
        radius = gaussian_radius(np.ceil(height / stride), np.ceil(width / stride), min_overlap, radius_variant)
        radii.append(np.maximum(0, np.atleast_1d(radius).astype(np.int64)))
    counts_array = np.array(counts, dtype=np.int64)
    return {
        "num_images": len(counts),
        "num_objects": int(counts_array.sum()),
        "objects_per_image": counts_array,
        "max_objects": max_objects,
        "images_over_max": int((counts_array > max_objects).sum()),
        "objects_over_max": int(np.maximum(counts_array - max_objects, 0).sum()),
        "centre_collisions": collisions["centre"],
        "tl_collisions": collisions["tl"],
        "br_collisions": collisions["br"],
        "box_width": np.concatenate([np.zeros(0), *widths]),
        "box_height": np.concatenate([np.zeros(0), *heights]),
        "radius": np.concatenate([np.zeros(0, np.int64), *radii]),
    }


def _quantiles(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    return " / ".join(f"{q:.1f}" for q in np.quantile(values, QUANTILES))


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / max(total, 1):.2f}%)"


def format_statistics(stats: dict[str, Any], corners: bool) -> str:
    """Plain-text report of :func:`dataset_statistics` (corner collisions when ``corners``)."""
    per_image = stats["objects_per_image"]
    total = stats["num_objects"]
    radius_values, radius_counts = np.unique(stats["radius"], return_counts=True)
    mean = per_image.mean() if len(per_image) else 0.0
    median = np.median(per_image) if len(per_image) else 0.0
    lines = [
        f"images                      {stats['num_images']} ({int((per_image == 0).sum())} without objects)",
        f"objects                     {total}",
        f"objects per image           mean {mean:.2f}, median {median:.0f}, max {per_image.max(initial=0)}",
        f"over max_objects ({stats['max_objects']})      {stats['images_over_max']} images, "
        + f"{stats['objects_over_max']} objects not encoded",
        f"centre collisions           {_share(stats['centre_collisions'], total)} objects share their centre's "
        + "output cell with an object of their class",
    ]
    if corners:
        lines += [
            f"top-left corner collisions  {_share(stats['tl_collisions'], total)}",
            f"bottom-right collisions     {_share(stats['br_collisions'], total)}",
        ]
    lines += [
        f"box width (input px)        {_quantiles(stats['box_width'])}   (min / 5% / median / 95% / max)",
        f"box height (input px)       {_quantiles(stats['box_height'])}",
        f"gaussian radius (cells)     {_quantiles(stats['radius'])}",
        "radius histogram            "
        + ", ".join(f"{value}: {count}" for value, count in zip(radius_values.tolist(), radius_counts.tolist())),
    ]
    return "\n".join(lines)


def report(cfg: DictConfig) -> str:
    """The statistics of both splits of ``cfg.data`` for the targets and stride of the detector of ``cfg``."""
    from keypointdet.runs.train import build_detector  # here: runs.train uses this module's statistics

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    detector = build_detector(cfg.model, cfg.backbone, datamodule.categories())
    datamodule.configure_targets(None, detector.stride, detector.size_divisor)
    settings = detector.encoder.settings()
    datasets = {split: datamodule.make_dataset(split, None, None) for split in ("train", "val")}
    input_size = datamodule.choose_input_size(datasets["train"])
    sections = [
        f"model {type(detector).__name__}: stride {detector.stride}, input {input_size} (long side), "
        + ", ".join(f"{key} {value}" for key, value in settings.items())
    ]
    corners = isinstance(detector, CornerNet)
    for split, dataset in datasets.items():
        stats = dataset_statistics(dataset, input_size, detector.stride, **settings)
        sections.append(f"\n[{split}] {dataset.source}\n{format_statistics(stats, corners)}")
        if split == "train":
            findings = data_findings(dataset, input_size, detector.stride, stats)
    sections.append("\n" + paragraph(findings))
    return "\n".join(sections)


@hydra_main("dataset_stats")
def main(cfg: DictConfig) -> None:
    print(report(cfg))


if __name__ == "__main__":
    main()
