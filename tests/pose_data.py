"""Tiny hand-made COCO keypoint datasets for the pose tests (figures of ``J`` joints on noise images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import write_image

# a 5-joint keypoint set (data.keypoints) and its skeleton
NAMES = ["head", "left_hand", "right_hand", "left_foot", "right_foot"]
KEYPOINTS = {
    "names": NAMES,
    "flip_pairs": [[1, 2], [3, 4]],
    "sigmas": [0.08, 0.06, 0.06, 0.09, 0.09],
    "skeleton": [[1, 2], [1, 3], [1, 4], [1, 5]],
}


def figure(rng: np.random.Generator, left: float, top: float, num_joints: int) -> tuple[list[float], list[float]]:
    """A box ``[x, y, w, h]`` at ``(left, top)`` and its joints on a grid of 8 px cells inside it (no two joints of
    the figure share a 4 px cell), each visible, occluded or unlabelled at random (at least one labelled)."""
    width, height = 8.0 * 3 + rng.uniform(4, 8), 8.0 * ((num_joints + 2) // 3) + rng.uniform(4, 8)
    slots = rng.permutation(3 * ((num_joints + 2) // 3))[:num_joints]
    keypoints = []
    for joint, slot in enumerate(slots):
        x = left + 2 + 8 * (slot % 3) + rng.uniform(0.5, 5.5)
        y = top + 2 + 8 * (slot // 3) + rng.uniform(0.5, 5.5)
        visibility = 2 if joint == 0 else int(rng.choice([0, 1, 2]))
        keypoints += [x, y, visibility] if visibility else [0.0, 0.0, 0]
    return [left, top, width, height], keypoints


def write_keypoint_dataset(
    ann_file: Path, img_dir: Path, num_images: int, names: list[str] = NAMES, seed: int = 0, size: int = 128
) -> Path:
    """``num_images`` images of ``size x size`` with 1 to 3 figures each (in separate columns) and their COCO file."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        file_name = f"{image_id:04d}.png"
        write_image(img_dir / file_name, size, size, seed=image_id)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        lowest_top = size - 8 * (len(names) + 2) // 3 - 20  # the figure's rows and margins fit below it
        for column in rng.permutation(3)[: rng.integers(1, 4)]:
            box, keypoints = figure(rng, 4 + column * size / 3, rng.uniform(2, lowest_top), len(names))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box,
                "area": box[2] * box[3], "iscrowd": 0, "keypoints": keypoints,
                "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
            })  # fmt: skip
    category = {"id": 1, "name": "figure", "keypoints": names, "skeleton": [[1, j] for j in range(2, len(names) + 1)]}
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [category]}))
    return ann_file


def with_keypoints(instances_file: Path, out: Path, num_joints: int, seed: int = 0) -> Path:
    """A COCO instances file turned into a keypoint file of one category (id 1, ``person``) with ``num_joints``
    joints, visible, drawn at random inside each object's box (the same images: a stand-in keypoint dataset)."""
    rng = np.random.default_rng(seed)
    data = json.loads(instances_file.read_text())
    for ann in data["annotations"]:
        x, y, width, height = ann["bbox"]
        points = rng.uniform([x, y], [x + width, y + height], size=(num_joints, 2))
        keypoints = [value for x, y in points.tolist() for value in (x, y, 2)]
        ann.update(category_id=1, keypoints=keypoints, num_keypoints=num_joints)
    names = [f"joint_{j}" for j in range(num_joints)]
    data["categories"] = [{"id": 1, "name": "person", "keypoints": names, "skeleton": [[1, 2]]}]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out
