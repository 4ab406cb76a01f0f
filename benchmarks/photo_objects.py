"""A small real-image detection dataset in COCO format, made offline from scikit-image's bundled photos.

    python benchmarks/photo_objects.py --out data/photo_objects [--num-train 300 --num-val 100 --seed 0]

Unlike the embedded shapes: backgrounds are crops of real photographs and textures (the astronaut, coffee,
the cat, the rocket, the Hubble deep field, a histology slide, a motorcycle, bricks, grass, gravel, the
moon, a camera man, a page of text), and the objects are real image content pasted with exact boxes:

| id | name  | source |
|----|-------|--------|
| 2  | coin  | the 24 coins of ``coins.png``, each cut out along its own outline |
| 5  | face  | the 200 faces of Labeled Faces in the Wild (``lfw_subset.npy``), as 25 px square patches |
| 11 | horse | the horse silhouette of ``horse.png``, filled with a crop of another photograph |
| 17 | cat   | the cat's head of ``chelsea.png``, as a rectangle |

Images are about 160 px (long side 144-176, various aspect ratios), with 1-6 objects of 12-64 px, placed
with limited overlap, at random brightness. The category ids are not contiguous. Deterministic for a seed
(numpy's ``default_rng``); nothing is downloaded. Writes ``train.json``, ``val.json`` and ``images/`` (both
splits, as in the README's ``data.train_img_dir=/data/mine/images``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from scipy import ndimage

CATEGORIES = [{"id": 2, "name": "coin"}, {"id": 5, "name": "face"}, {"id": 11, "name": "horse"}, {"id": 17, "name": "cat"}]
BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
               "brick", "grass", "gravel", "moon", "camera", "page")  # fmt: skip
SHAPES = ((160, 120), (120, 160), (160, 160), (176, 132), (144, 144), (128, 170), (170, 113))  # (width, height)


def rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a grey, RGB or float image."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def coin_patches() -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image [h, w, 3], mask [h, w])`` of every single coin of ``coins.png`` (Otsu threshold, holes filled)."""
    coins = skimage.data.coins()
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(coins > 110, iterations=2))
    labels, _ = ndimage.label(mask)
    patches = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        own = labels[region] == index
        if 900 < own.sum() < 3200:  # single coins (not specks, not touching pairs)
            patches.append((rgb(coins[region]), own))
    return patches


def face_patches() -> list[tuple[np.ndarray, np.ndarray]]:
    faces = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")
    return [(rgb(face), np.ones(face.shape, bool)) for face in faces]


def horse_patch(rng: np.random.Generator, photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The horse silhouette (tight crop) filled with a random crop of a photograph."""
    mask = ~skimage.data.horse()
    rows, cols = np.nonzero(mask)
    mask = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return random_crop(rng, photos[rng.integers(len(photos))], mask.shape), mask


def cat_patch() -> tuple[np.ndarray, np.ndarray]:
    head = skimage.data.chelsea()[30:250, 140:330]
    return head, np.ones(head.shape[:2], bool)


def random_crop(rng: np.random.Generator, photo: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A random region of ``photo`` (at least a third of its short side) resized to ``shape`` (h, w)."""
    side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2]) + 1))
    y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
    return cv2.resize(photo[y : y + side, x : x + side], (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy ``box`` with ``boxes [N, 4]``."""
    top_left, bottom_right = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def render(rng: np.random.Generator, photos: list[np.ndarray], sources: dict) -> tuple[np.ndarray, list]:
    """One image and its ``(category id, [x, y, w, h])`` objects."""
    width, height = SHAPES[rng.integers(len(SHAPES))]
    image = random_crop(rng, photos[rng.integers(len(photos))], (height, width)).astype(np.float32)
    boxes: list[np.ndarray] = []
    objects = []
    for _ in range(int(rng.integers(1, 7))):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]["id"]
        patch, mask = sources[category](rng)
        long_side = int(rng.integers(12, 65))
        scale = long_side / max(mask.shape)
        size = (max(4, round(mask.shape[1] * scale)), max(4, round(mask.shape[0] * scale)))  # (w, h)
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA).astype(np.float32) * rng.uniform(0.7, 1.3)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if size[0] >= width or size[1] >= height:
            continue
        x, y = int(rng.integers(0, width - size[0] + 1)), int(rng.integers(0, height - size[1] + 1))
        rows, cols = np.nonzero(mask)
        box = np.array([x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1], dtype=np.float64)
        if boxes and iou(box, np.stack(boxes)).max() > 0.2:
            continue
        region = image[y : y + size[1], x : x + size[0]]
        region[mask] = patch[mask]
        boxes.append(box)
        objects.append((category, [float(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])]))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def generate(out: Path, num_train: int, num_val: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    photos = [rgb(getattr(skimage.data, name)()) for name in BACKGROUNDS]
    coins, faces, cat = coin_patches(), face_patches(), cat_patch()
    sources = {
        2: lambda r: coins[r.integers(len(coins))],
        5: lambda r: faces[r.integers(len(faces))],
        11: lambda r: horse_patch(r, photos),
        17: lambda r: cat,
    }
    annotation_id = 1
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split, count, first_id in (("train", num_train, 1000), ("val", num_val, 5000)):
        images, annotations = [], []
        for image_id in range(first_id, first_id + count):
            image, objects = render(rng, photos, sources)
            file_name = f"{image_id:06d}.jpg"
            cv2.imwrite(str(out / "images" / file_name), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
            for category, bbox in objects:
                annotations.append({"id": annotation_id, "image_id": image_id, "category_id": category, "bbox": bbox,
                                    "area": bbox[2] * bbox[3], "iscrowd": 0})  # fmt: skip
                annotation_id += 1
        data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (out / f"{split}.json").write_text(json.dumps(data))
        print(f"{split}: {len(images)} images, {len(annotations)} objects -> {out / f'{split}.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("PROJECT_ROOT", ".")) / "data" / "photo_objects")
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.out, args.num_train, args.num_val, args.seed)


if __name__ == "__main__":
    main()
