"""Training data pipeline per image at 512x512, one worker (one thread): each step, the whole sample with
targets for both detectors, and the same work done by a plain OpenCV pipeline (the official CenterNet one:
one ``cv2.warpAffine`` and float numpy colour operations).

Images: the embedded dataset rendered at COCO-like sizes (480-640 px a side, 1-15 objects) and stored as
JPEG, so that decoding costs what it costs on COCO.

    python benchmarks/data_pipeline.py [--images 40] [--input-size 512]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from timing import median_seconds

from keypointdet.data.coco import CocoDetection, read_image
from keypointdet.data.encode import CenterNetEncoder, CornerNetEncoder
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.transforms import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_SCALES,
    TrainTransform,
    crop_border,
)

NUM_CLASSES = 80  # COCO's: the heatmaps the encoders fill are this deep


def jpeg_dataset(root: Path, num_images: int) -> Path:
    """The embedded dataset at 480-640 px, re-encoded as JPEG (quality 90); returns the annotation file."""
    paths = generate_dataset(root, num_train=num_images, num_val=1, seed=0, image_size=(480, 640))
    data = json.loads(paths["train"].read_text())
    for image in data["images"]:
        png = root / "train" / image["file_name"]
        jpeg = png.with_suffix(".jpg")
        cv2.imwrite(str(jpeg), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        image["file_name"] = jpeg.name
    ann_file = root / "train_jpeg.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


class OfficialStylePipeline:
    """The official CenterNet training transform, in plain OpenCV / numpy: crop parameters as in
    :class:`RandomScaleCrop`, flip by slicing, one affine warp, then float32 colour jitter (brightness,
    contrast, saturation in random order), PCA lighting and normalisation; boxes by the same affine map."""

    def __init__(self, input_size: int, seed: int = 0) -> None:
        self.input_size = input_size
        self.set_random_seed(seed)
        self.eigenvalues = np.array(IMAGENET_EIGENVALUES, np.float32)
        self.eigenvectors = np.array(IMAGENET_EIGENVECTORS, np.float32)
        self.mean = np.array(IMAGENET_MEAN, np.float32)
        self.std = np.array(IMAGENET_STD, np.float32)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.py_random = random.Random(seed)

    def warp(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        side = max(height, width) * self.py_random.choice(PAPER_SCALES)
        centre_x = self.py_random.randrange(crop_border(128, width), width - crop_border(128, width))
        centre_y = self.py_random.randrange(crop_border(128, height), height - crop_border(128, height))
        if self.py_random.random() < 0.5:
            image = image[:, ::-1]
            centre_x = width - centre_x - 1
            boxes = boxes.copy()
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        zoom = self.input_size / side
        matrix = np.array(
            [[zoom, 0, self.input_size / 2 - zoom * centre_x], [0, zoom, self.input_size / 2 - zoom * centre_y]]
        )
        warped = cv2.warpAffine(image, matrix, (self.input_size, self.input_size), flags=cv2.INTER_LINEAR)
        boxes = (boxes.reshape(-1, 2, 2) * zoom + matrix[:, 2]).reshape(-1, 4).clip(0, self.input_size)
        return warped, boxes

    def colour(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` -> float32 0-1 with brightness / contrast / saturation (random order) and lighting."""
        image = image.astype(np.float32) / 255
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        gray_mean = float(gray.mean())
        order = ["brightness", "contrast", "saturation"]
        self.py_random.shuffle(order)
        for operation in order:
            alpha = 1 + self.rng.uniform(-0.4, 0.4)
            image *= alpha
            if operation == "contrast":
                image += (1 - alpha) * gray_mean
            elif operation == "saturation":
                image += (1 - alpha) * gray[:, :, None]
        image += self.eigenvectors @ (self.eigenvalues * self.rng.normal(0, 0.1, size=3).astype(np.float32))
        return image

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((image - self.mean) / self.std).transpose(2, 0, 1).copy())

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict:
        warped, boxes = self.warp(image, boxes)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"image": self.normalise(self.colour(warped)), "boxes": boxes[keep], "labels": labels[keep]}


def per_step_ms(dataset: CocoDetection, input_size: int, repeats: int) -> dict[str, float]:
    """Median ms per image of each step, on each image's output of the previous step."""
    transform = TrainTransform(input_size)
    steps = dict(zip(("crop + resize", "flip", "colour jitter", "PCA lighting (fixed)"), transform.pipeline.transforms))
    steps["normalise + tensor"] = A.Compose([A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()])
    steps["FancyPCA (albumentations)"] = A.FancyPCA(alpha=0.1, p=1.0)
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, filter_invalid_bboxes=True)
    pipelines = {
        name: step
        if isinstance(step, A.Compose)
        else A.Compose([step], bbox_params=bbox_params if isinstance(step, A.DualTransform) else None, seed=0)
        for name, step in steps.items()
    }
    official = OfficialStylePipeline(input_size)
    encoders = {"targets CenterNet": CenterNetEncoder(NUM_CLASSES), "targets CornerNet": CornerNetEncoder(NUM_CLASSES)}
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], object]) -> object:
        out = fn()
        times.setdefault(name, []).append(median_seconds(fn, repeats, warmup=0))
        return out

    def time_image(image_id: int) -> None:
        path = dataset.image_path(image_id)
        image = timed("read (JPEG decode + RGB)", lambda: read_image(path))
        boxes, labels, _ = dataset.annotations(image_id)
        sample = {"image": image, "bboxes": boxes, "labels": labels}
        for name in ("crop + resize", "flip", "colour jitter", "PCA lighting (fixed)"):
            sample = timed(name, lambda name=name, sample=sample: pipelines[name](**sample))
        timed("FancyPCA (albumentations)", lambda: pipelines["FancyPCA (albumentations)"](**sample))
        timed("normalise + tensor", lambda: pipelines["normalise + tensor"](image=sample["image"]))
        out_boxes = np.asarray(sample["bboxes"], dtype=np.float64).reshape(-1, 4) / 4
        out_labels = np.asarray(sample["labels"], dtype=np.int64)
        output_size = (input_size // 4, input_size // 4)
        for name, encoder in encoders.items():
            timed(name, lambda encoder=encoder: encoder(out_boxes, out_labels, output_size))
        warped, _ = timed("baseline: flip + warpAffine", lambda: official.warp(image, boxes))
        coloured = timed("baseline: float colour + lighting", lambda: official.colour(warped))
        timed("baseline: normalise + tensor", lambda: official.normalise(coloured))

    for image_id in dataset.image_ids:
        time_image(image_id)
    return {name: 1000 * float(np.median(values)) for name, values in times.items()}


def whole_sample_ms(dataset: CocoDetection, repeats: int) -> float:
    """Median ms of ``dataset[(index, seed)]``: read, augment, normalise and encode one image."""
    per_image = [median_seconds(lambda i=i: dataset[(i, i)], repeats, warmup=1) for i in range(len(dataset))]
    return 1000 * float(np.median(per_image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one data-loading worker = one thread
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = jpeg_dataset(Path(tmp), args.images)
        image_dir = Path(tmp) / "train"
        plain = CocoDetection(ann_file, image_dir, TrainTransform(args.input_size))
        steps = per_step_ms(plain, args.input_size, args.repeats)
        totals = {}
        for name, encoder_class in (("CenterNet", CenterNetEncoder), ("CornerNet", CornerNetEncoder)):
            encoder = encoder_class(NUM_CLASSES)
            ours = CocoDetection(ann_file, image_dir, TrainTransform(args.input_size), encoder)
            baseline = CocoDetection(ann_file, image_dir, OfficialStylePipeline(args.input_size), encoder)
            totals[name] = (whole_sample_ms(ours, args.repeats), whole_sample_ms(baseline, args.repeats))

    print(
        f"{args.images} images, 480-640 px JPEG -> {args.input_size}x{args.input_size}, 1 thread, median ms per image\n"
    )
    print("| step | ms |\n|---|---|")
    for name, ms in steps.items():
        print(f"| {name} | {ms:.2f} |")
    print("\n| detector | pipeline | ms / image | images / s / worker | targets share |\n|---|---|---|---|---|")
    for name, (ours, baseline) in totals.items():
        targets = steps[f"targets {name}"]
        print(
            f"| {name} | keypointdet (albumentations) | {ours:.2f} | {1000 / ours:.0f} | {100 * targets / ours:.0f}% |"
        )
        print(f"| {name} | OpenCV baseline (official style) | {baseline:.2f} | {1000 / baseline:.0f} | "
              f"{100 * targets / baseline:.0f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
