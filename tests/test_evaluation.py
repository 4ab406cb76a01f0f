"""COCO evaluation: each image once, misses counted, per-class AP consistent with the overall AP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from keypointdet.data.coco import load_coco
from keypointdet.metrics import CocoMeanAveragePrecision, evaluate_detections

CATEGORY_IDS = [4, 9]


def ground_truth(tmp_path, boxes_per_image):
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(len(boxes_per_image))]
    annotations = []
    for image_index, boxes in enumerate(boxes_per_image):
        for category_id, (x, y, w, h) in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_index + 1, "category_id": category_id,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return load_coco(path)


def perfect(coco, image_id, score=0.9):
    return [{"image_id": image_id, "category_id": a["category_id"], "bbox": a["bbox"], "score": score}
            for a in coco.imgToAnns[image_id]]


def record(metric, image_id, detections):
    """One image's COCO results entries as a row of the metric's inputs (xyxy boxes, scores, labels)."""
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (det["bbox"] for det in detections)],
                         dtype=torch.float64).reshape(1, -1, 4)
    scores = torch.tensor([[det["score"] for det in detections]], dtype=torch.float64).reshape(1, -1)
    labels = torch.tensor([[CATEGORY_IDS.index(det["category_id"]) for det in detections]]).reshape(1, -1)
    metric.update(torch.tensor([image_id]), boxes, scores, labels)


def test_perfect_detections_score_one_and_duplicates_are_ignored(tmp_path):
    coco = ground_truth(tmp_path, [[(4, (10, 10, 30, 30)), (9, (50, 50, 40, 20))], [(9, (0, 0, 60, 60))]])
    evaluator = CocoMeanAveragePrecision(coco, CATEGORY_IDS)
    for image_id in (1, 2):
        record(evaluator, image_id, perfect(coco, image_id))
    record(evaluator, 1, [])  # a distributed sampler's padded duplicate: the first record of an image wins
    metrics = evaluator.compute()
    assert metrics["mAP"] == pytest.approx(1.0)
    assert metrics["AP/a"] == pytest.approx(1.0) and metrics["AP/b"] == pytest.approx(1.0)


def test_image_without_detections_counts_as_misses(tmp_path):
    coco = ground_truth(tmp_path, [[(4, (10, 10, 30, 30))], [(4, (20, 20, 30, 30))]])
    metrics = evaluate_detections(coco, {1: perfect(coco, 1), 2: []})
    assert metrics["mAR100"] == pytest.approx(0.5)


def test_only_seen_images_are_evaluated(tmp_path):
    coco = ground_truth(tmp_path, [[(4, (10, 10, 30, 30))], [(4, (20, 20, 30, 30))]])
    assert evaluate_detections(coco, {1: perfect(coco, 1)})["mAP"] == pytest.approx(1.0)


def test_overall_ap_is_the_mean_of_per_class_ap(tmp_path):
    rng = np.random.default_rng(0)
    boxes = [
        [(int(rng.choice([4, 9])), tuple(float(v) for v in rng.uniform(5, 40, 4))) for _ in range(5)] for _ in range(4)
    ]
    coco = ground_truth(tmp_path, boxes)
    detections = {}
    for image_id in range(1, 5):
        detections[image_id] = [
            {**det, "bbox": [v + rng.normal(0, 2) for v in det["bbox"]], "score": float(rng.uniform())}
            for det in perfect(coco, image_id)
        ]
    metrics = evaluate_detections(coco, detections)
    assert metrics["mAP"] == pytest.approx(np.mean([metrics["AP/a"], metrics["AP/b"]]), abs=1e-9)
