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


def test_voc07_map50_on_a_hand_computed_case(tmp_path):
    """Pascal VOC2007 11-point AP at IoU 0.5 (voc_eval.py, use_07_metric), computed by hand below."""
    from conftest import write_coco

    def box(x1, y1, x2, y2):
        return [x1, y1, x2 - x1, y2 - y1]

    images = [{"id": i, "file_name": f"{i}.png", "height": 60, "width": 60} for i in (1, 2)]
    truth = [  # (image, category, box, difficult)
        (1, 1, box(0, 0, 10, 10), 0), (1, 1, box(20, 0, 30, 10), 1), (2, 1, box(0, 0, 10, 10), 0),
        (2, 1, box(20, 20, 40, 40), 0), (2, 2, box(0, 20, 10, 30), 0), (1, 3, box(40, 40, 50, 50), 1),
    ]  # fmt: skip
    annotations = [{"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": d}
                   for k, (i, c, b, d) in enumerate(truth, 1)]  # fmt: skip
    coco = load_coco(write_coco(tmp_path / "gt.json", images, annotations))
    found = [  # (image, category, box, score)
        (1, 1, box(0, 0, 10, 10), 0.9),  # hit
        (1, 1, box(20, 0, 30, 10), 0.8),  # on a difficult box: neither hit nor false positive
        (1, 1, box(0, 0, 10, 10), 0.7),  # the same object again: false positive
        (2, 1, box(20, 20, 40, 40), 0.6),  # hit
        (2, 1, box(50, 50, 60, 60), 0.5),  # nothing there: false positive
        (2, 1, box(0, 0, 10, 12), 0.4),  # IoU 100 / 120: hit
        (1, 2, box(0, 0, 5, 5), 0.95),  # false positive
        (2, 2, box(0, 20, 10, 30), 0.3),  # hit
        (1, 3, box(40, 40, 50, 50), 0.2),  # only a difficult box of its class: the class has no positives
    ]
    # class 1 (3 positives): hit, FP, hit, FP, hit -> recall 1/3 1/3 2/3 2/3 1, precision 1 1/2 2/3 1/2 3/5;
    # the best precision at recall >= t is 1 for t = 0 .. 0.3, 2/3 for 0.4 .. 0.6, 3/5 for 0.7 .. 1
    class_1 = (4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11
    # class 2 (1 positive): FP then hit -> recall 0, 1 and precision 0, 1/2: 1/2 at every t
    expected = (class_1 + 0.5) / 2

    metric = CocoMeanAveragePrecision(coco, category_ids=[1, 2, 3], max_detections=8, voc07=True)
    for image_id in (1, 2):
        rows = [row for row in found if row[0] == image_id]
        xyxy = torch.tensor([[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in rows])
        metric.update(torch.tensor([image_id]), xyxy[None], torch.tensor([[row[3] for row in rows]]),
                      torch.tensor([[row[1] - 1 for row in rows]]))  # fmt: skip
    metrics = metric.compute()
    assert metrics["mAP50_voc07"] == pytest.approx(expected, abs=1e-6)
    assert metrics["mAP50_voc07"] != pytest.approx(metrics["mAP50"])  # COCO's 101 points and crowd rule differ
