"""A plain PyTorch CenterNet, the baseline of benchmarks/own_data.py: what a user writes in an afternoon.

    python benchmarks/plain_centernet.py --data data/photo_objects --minutes 20

No Lightning, no Hydra, no keypointdet: torchvision's ResNet-18 (random weights) with the paper's three
deconvolutions to stride 4, heatmap / size / offset heads, the focal and L1 losses of the paper, Adam at a
constant 5e-4, batch 16, images letterboxed to a fixed square (--size, 160) with random flips. Trains until
the time budget is spent, then evaluates on the val split with pycocotools and prints ``mAP=...``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def load(ann_file: Path, img_dir: Path, size: int):
    """Letterboxed images ``[N, 3, size, size]``, per-image boxes (xyxy, input pixels) and labels, scales."""
    data = json.loads(ann_file.read_text())
    category_ids = sorted(cat["id"] for cat in data["categories"])
    images, boxes, labels, scales = [], [], [], []
    for info in data["images"]:
        image = cv2.imread(str(img_dir / info["file_name"]))[..., ::-1]
        scale = size / max(image.shape[:2])
        resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        canvas = np.zeros((size, size, 3), np.float32)
        canvas[: resized.shape[0], : resized.shape[1]] = (resized / 255.0 - MEAN) / STD
        images.append(canvas.transpose(2, 0, 1))
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        boxes.append(np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                               for a in anns], np.float32).reshape(-1, 4) * scale)  # fmt: skip
        labels.append(np.array([category_ids.index(a["category_id"]) for a in anns], np.int64))
        scales.append(scale)
    return torch.tensor(np.stack(images)), boxes, labels, scales, [i["id"] for i in data["images"]], category_ids


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet's radius: the smallest of its three cases."""
    r1 = (height + width + math.sqrt((height + width) ** 2 - 4 * width * height * (1 - min_overlap) / (1 + min_overlap))) / 2
    r2 = (2 * (height + width) + math.sqrt(4 * (height + width) ** 2 - 16 * (1 - min_overlap) * width * height)) / 2
    b3 = -2 * min_overlap * (height + width)
    r3 = (-b3 + math.sqrt(b3**2 - 16 * min_overlap * (min_overlap - 1) * width * height)) / 2
    return min(r1, r2, r3)


def targets(boxes, labels, num_classes: int, out: int, max_objects: int = 64):
    """Heatmap ``[C, out, out]``, index ``[M]``, mask ``[M]``, size and offset ``[M, 2]`` of one image."""
    heatmap = np.zeros((num_classes, out, out), np.float32)
    index, mask = np.zeros(max_objects, np.int64), np.zeros(max_objects, np.float32)
    size, offset = np.zeros((max_objects, 2), np.float32), np.zeros((max_objects, 2), np.float32)
    ys, xs = np.ogrid[:out, :out]
    for k, (box, label) in enumerate(zip(boxes[:max_objects] / 4, labels[:max_objects])):
        width, height = box[2] - box[0], box[3] - box[1]
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        cx, cy = np.clip(centre.astype(np.int64), 0, out - 1)
        sigma = (2 * max(0, int(gaussian_radius(math.ceil(height), math.ceil(width)))) + 1) / 6
        heatmap[label] = np.maximum(heatmap[label], np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)))
        index[k], mask[k], size[k], offset[k] = cy * out + cx, 1, (width, height), centre - (cx, cy)
    return heatmap, index, mask, size, offset


class CenterNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        self.trunk = nn.Sequential(*list(resnet.children())[:-2])
        layers, channels = [], 512
        for out_channels in (256, 128, 64):
            layers += [nn.ConvTranspose2d(channels, out_channels, 4, 2, 1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.ReLU(inplace=True)]  # fmt: skip
            channels = out_channels
        self.neck = nn.Sequential(*layers)
        head = lambda n: nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, n, 1))  # noqa: E731
        self.heatmap, self.size, self.offset = head(num_classes), head(2), head(2)
        self.heatmap[-1].bias.data.fill_(-2.19)

    def forward(self, x):
        features = self.neck(self.trunk(x))
        return self.heatmap(features), self.size(features), self.offset(features)


def focal_loss(logits, target):
    prob = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = torch.log(prob) * (1 - prob) ** 2 * positive
    neg = torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * (1 - positive)
    return -(pos.sum() + neg.sum()) / positive.sum().clamp(min=1)


def gather(maps, index):
    """``maps [B, 2, H, W]`` at ``index [B, M]`` -> ``[B, M, 2]``."""
    flat = maps.flatten(2).transpose(1, 2)
    return flat.gather(1, index.unsqueeze(-1).expand(-1, -1, 2))


def loss(model, images, batch):
    heatmap, size, offset = model(images)
    target_heatmap, index, mask, target_size, target_offset = batch
    objects = mask.sum().clamp(min=1)
    l1 = lambda pred, target: (F.l1_loss(gather(pred, index), target, reduction="none") * mask[..., None]).sum() / objects  # noqa: E731
    return focal_loss(heatmap, target_heatmap) + 0.1 * l1(size, target_size) + l1(offset, target_offset)


@torch.no_grad()
def detect(model, images, k: int = 100):
    """Top-``k`` peaks (3x3 max-pool NMS): boxes xyxy in input pixels, scores, labels."""
    heatmap, size, offset = model(images)
    heat = heatmap.sigmoid()
    heat = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    batch, classes, height, width = heat.shape
    scores, flat = heat.flatten(1).topk(k)
    labels, cells = flat // (height * width), flat % (height * width)
    xs, ys = (cells % width).float(), (cells // width).float()
    wh, off = gather(size, cells), gather(offset, cells)
    cx, cy = xs + off[..., 0], ys + off[..., 1]
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1) * 4
    return boxes, scores, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/photo_objects"))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    start, torch_rng = time.monotonic(), torch.manual_seed(0)
    images, boxes, labels, _, _, category_ids = load(args.data / "train.json", args.data / "images", args.size)
    val_images, _, _, val_scales, val_ids, _ = load(args.data / "val.json", args.data / "images", args.size)
    out = args.size // 4
    encoded = [targets(b, lab, len(category_ids), out) for b, lab in zip(boxes, labels)]
    flipped = [targets(np.stack([args.size - b[:, 2], b[:, 1], args.size - b[:, 0], b[:, 3]], 1) if len(b) else b, lab,
                       len(category_ids), out) for b, lab in zip(boxes, labels)]  # fmt: skip
    model = CenterNet(len(category_ids))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    steps, budget = 0, args.minutes * 60 - 30  # keep 30 s for the evaluation
    while time.monotonic() - start < budget:
        model.train()
        for batch_indices in torch.randperm(len(images), generator=torch_rng).split(16):
            flip = torch.rand(len(batch_indices), generator=torch_rng) < 0.5
            batch_images = torch.where(flip[:, None, None, None], images[batch_indices].flip(-1), images[batch_indices])
            chosen = [(flipped if f else encoded)[i] for i, f in zip(batch_indices.tolist(), flip.tolist())]
            batch = [torch.tensor(np.stack(parts)) for parts in zip(*chosen)]
            optimizer.zero_grad()
            loss(model, batch_images, batch).backward()
            optimizer.step()
            steps += 1
            if time.monotonic() - start >= budget:
                break
    model.eval()
    results = []
    for first in range(0, len(val_images), 32):
        batch_boxes, batch_scores, batch_labels = detect(model, val_images[first : first + 32])
        for i, (b, s, lab) in enumerate(zip(batch_boxes, batch_scores, batch_labels)):
            b = b / val_scales[first + i]
            results += [{"image_id": val_ids[first + i], "category_id": category_ids[int(c)], "score": float(score),
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
                        for (x0, y0, x1, y1), score, c in zip(b.tolist(), s.tolist(), lab.tolist())]  # fmt: skip
    ground_truth = COCO(str(args.data / "val.json"))
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    print(f"steps={steps} seconds={time.monotonic() - start:.0f} mAP={evaluation.stats[0]:.4f} mAP50={evaluation.stats[1]:.4f}")


if __name__ == "__main__":
    main()
