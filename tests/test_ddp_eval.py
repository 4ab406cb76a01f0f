"""COCO evaluation under DDP: 2 CPU processes (gloo) on an odd-sized validation set give exactly the
1-process metrics and detections, on every rank; plus the gather / de-duplication with a fake 2-rank gather."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from detector_checkpoint import tiny_checkpoint
from omegaconf import OmegaConf

from keypointdet.data.coco import load_coco
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.synthetic_pose import generate_pose_dataset
from keypointdet.metrics import CocoMeanAveragePrecision, evaluate_detections
from keypointdet.runs.evaluate import evaluate

# Run by each DDP rank: Lightning's ddp strategy starts rank 1 by re-running this command.
RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from keypointdet.runs.evaluate import evaluate

    cfg = OmegaConf.load(sys.argv[1])
    metrics = evaluate(cfg)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    os.makedirs(cfg.paths.output_dir, exist_ok=True)  # rank 0 may not have created it yet
    path = os.path.join(cfg.paths.output_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as file:
        json.dump(metrics, file)
    os.replace(path + ".tmp", path)
    if dist.is_initialized():
        dist.barrier()  # both files are written when the launching process (rank 0) exits
    """
)


def eval_config(ckpt_path, data: dict, output_dir, devices: int):
    trainer = {
        "_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "devices": devices,
        "strategy": "ddp" if devices > 1 else "auto", "precision": 32,
        "enable_progress_bar": False, "enable_model_summary": False,
    }
    return OmegaConf.create({
        "ckpt_path": str(ckpt_path), "data": data, "trainer": trainer, "paths": {"output_dir": str(output_dir)},
        "model": {"tta": {"flip": False, "scales": [1.0]}},
    })


def as_tuple(detection: dict) -> tuple:
    return detection["image_id"], detection["category_id"], detection["score"], *detection["bbox"]


def with_constant_sizes(ckpt_path):
    """The checkpoint with its size branch predicting 3 x 3 cells everywhere: untrained sizes are tiny or
    negative, and :func:`partly_matched_ground_truth` needs real boxes."""
    checkpoint = torch.load(ckpt_path, weights_only=True)
    state = checkpoint["state_dict"]
    prefix = "detector.heads.0.size."
    last = max(
        (key for key in state if key.startswith(prefix)), key=lambda key: int(key.removeprefix(prefix).split(".")[0])
    )
    layer = last.rsplit(".", 1)[0]
    state[f"{layer}.weight"].zero_()
    state[f"{layer}.bias"].fill_(3.0)
    torch.save(checkpoint, ckpt_path)
    return ckpt_path


def partly_matched_ground_truth(val_ann, results, path):
    """The validation file with the boxes of every other image replaced by two of the checkpoint's own
    detections there: an untrained network then scores a mAP strictly between 0 and 1."""
    data = json.loads(val_ann.read_text())
    replaced = {image["id"] for image in data["images"][::2]}
    annotations = [ann for ann in data["annotations"] if ann["image_id"] not in replaced]
    for image_id in sorted(replaced):
        mine = [det for det in results if det["image_id"] == image_id ][:2]
        for det in mine:
            x, y, w, h = det["bbox"]
            annotations.append({"id": len(annotations) + 10_000, "image_id": image_id, "category_id": det["category_id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    data["annotations"] = annotations
    path.write_text(json.dumps(data))
    return path


def first_evaluation(dataset, tmp_path, model: str) -> tuple:
    """A one-step tiny ``model`` checkpoint (its sizes constant), its validation data config and its detections."""
    ckpt_path = with_constant_sizes(tiny_checkpoint(dataset, tmp_path, model))
    data = dict(torch.load(ckpt_path, weights_only=True)["datamodule_hyper_parameters"])
    data = {"_target_": "keypointdet.data.datamodule.DetectionDataModule", **data, "val_batch_size": 1}
    evaluate(eval_config(ckpt_path, data, tmp_path / "first", devices=1))
    return ckpt_path, data, json.loads((tmp_path / "first" / "results.json").read_text())


def two_process_metrics(ckpt_path, data: dict, tmp_path) -> list[dict]:
    """The metrics each rank of a 2-process DDP ``eval`` returns (output folder ``tmp_path / "ddp"``)."""
    config = tmp_path / "ddp.yaml"
    OmegaConf.save(eval_config(ckpt_path, data, tmp_path / "ddp", devices=2), config)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(config)], check=False, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture
def one_thread():
    """One intra-op thread, like each of the 2 DDP processes on 2 cores (Lightning gives each
    ``cores / processes``): the same convolution kernels, hence the same floats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_process_ddp_evaluation_equals_one_process(tmp_path, one_thread):
    dataset = tmp_path / "data"
    generate_dataset(dataset, num_train=4, num_val=7, seed=3)  # 7: the distributed sampler pads a duplicate
    ckpt_path, data, first = first_evaluation(dataset, tmp_path, "centernet")
    data["val_ann"] = str(partly_matched_ground_truth(dataset / "val.json", first, tmp_path / "val.json"))

    single = evaluate(eval_config(ckpt_path, data, tmp_path / "single", devices=1))
    assert 0.0 < single["val/mAP"] < 1.0

    # logged on every rank (what ModelCheckpoint monitors), exactly the 1-process values
    assert two_process_metrics(ckpt_path, data, tmp_path) == [single, single]
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text()) == single
    ddp_results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    single_results = json.loads((tmp_path / "single" / "results.json").read_text())
    # the same detections; equal scores may come out in another order (top-k ties)
    assert sorted(map(as_tuple, ddp_results)) == sorted(map(as_tuple, single_results))
    assert len({det["image_id"] for det in ddp_results}) == 7


def record(metric, image_id, detections):
    """One image's COCO results entries (category 1 only) as a row of the metric's inputs."""
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (det["bbox"] for det in detections)]).reshape(1, -1, 4)
    scores = torch.tensor([[det["score"] for det in detections]]).reshape(1, -1)
    labels = torch.tensor([[det["category_id"] - 1 for det in detections]]).reshape(1, -1)
    metric.update(torch.tensor([image_id]), boxes, scores, labels)


def fake_gather(coco, *ranks: CocoMeanAveragePrecision) -> CocoMeanAveragePrecision:
    """What every rank holds after torchmetrics' cat-gather: the ranks' rows concatenated in rank order."""
    gathered = CocoMeanAveragePrecision(coco, [1])
    for rank in ranks:
        for row in zip(rank.image_ids, rank.boxes, rank.scores, rank.labels):
            gathered.update(*row)
    return gathered


def test_fake_two_rank_gather_keeps_each_image_once(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 50, "height": 50} for i in range(1, 6)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}
                   for i in range(1, 6)]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    coco = load_coco(path)

    def hit(image_id, score):
        return [{"image_id": image_id, "category_id": 1, "bbox": [5, 5, 20, 20], "score": score}]

    def miss(image_id, score):
        return [{"image_id": image_id, "category_id": 1, "bbox": [30, 30, 10, 10], "score": score}]

    # 5 images over 2 ranks: the sampler gives rank 1 image 1 again as padding (here with other detections,
    # which must not count twice nor replace the first record).
    rank0, rank1 = CocoMeanAveragePrecision(coco, [1]), CocoMeanAveragePrecision(coco, [1])
    for image_id in (1, 3, 5):
        record(rank0, image_id, hit(image_id, 0.9) if image_id != 5 else miss(image_id, 0.95))
    for image_id in (2, 4):
        record(rank1, image_id, hit(image_id, 0.8))
    record(rank1, 1, miss(1, 0.99))
    expected = evaluate_detections(coco, {1: hit(1, 0.9), 2: hit(2, 0.8), 3: hit(3, 0.9), 4: hit(4, 0.8),
                                          5: miss(5, 0.95)})
    # after the gather, rank 0 and rank 1 both hold rank 0's rows followed by rank 1's
    for evaluator in (fake_gather(coco, rank0, rank1), fake_gather(coco, rank0, rank1)):
        assert evaluator.compute() == expected
        assert sorted(det["image_id"] for det in evaluator.results) == [1, 2, 3, 4, 5]
    assert expected["mAR100"] == pytest.approx(0.8)


def test_two_process_ddp_keypoint_evaluation_equals_one_process(tmp_path, one_thread):
    """The pose model's keypoint AP under DDP: exactly the 1-process metrics on every rank (half the images'
    ground truth replaced by the checkpoint's own skeletons, so that an untrained network scores between 0 and 1)."""
    dataset = tmp_path / "data"
    generate_pose_dataset(dataset, num_train=4, num_val=7, seed=3, image_size=64, figure_height=(30.0, 50.0))
    ckpt_path, data, first = first_evaluation(dataset, tmp_path, "centernet_pose")
    val_ann = partly_matched_ground_truth(dataset / "val.json", first, tmp_path / "val.json")
    ground_truth = json.loads(val_ann.read_text())
    own = {(det["image_id"], *det["bbox"]): det["keypoints"] for det in first}
    for ann in ground_truth["annotations"]:
        if ann["id"] >= 10_000:  # a detection made ground truth: its joints too, each labelled visible
            joints = own[(ann["image_id"], *ann["bbox"])]
            ann["keypoints"] = [value for x, y, _ in zip(*[iter(joints)] * 3) for value in (x, y, 2)]
            ann["num_keypoints"] = len(joints) // 3
    val_ann.write_text(json.dumps(ground_truth))
    data["val_ann"] = str(val_ann)

    single = evaluate(eval_config(ckpt_path, data, tmp_path / "single", devices=1))
    assert 0.0 < single["val/kp_mAP"] < 1.0

    assert two_process_metrics(ckpt_path, data, tmp_path) == [single, single]
