"""CenterNet's optional NMS (model.nms = null | class | agnostic): greedy NMS of the decoded detections, the same
in PyTorch and in an exported graph, and nothing at all by default."""

from __future__ import annotations

import pytest
import torch
from detector_checkpoint import sharpened, tiny_checkpoint
from test_export import assert_same_detections, main, pytorch_detections, random_images
from torchvision.ops import box_iou

from keypointdet.checkpoints import checkpoint_metadata, load_checkpoint, save_detector
from keypointdet.decode import centernet_decode
from keypointdet.suppression import hard_nms
from keypointdet.detectors import CenterNet
from keypointdet.inference import apply_nms_overrides, load_detector


def naive_nms(boxes, scores, labels, iou_threshold, class_wise):
    """Greedy NMS of one image, written out: best first, drop what overlaps a kept one (of its class)."""
    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: -float(scores[i])):
        if scores[i] <= 0:
            continue
        overlaps = [
            box_iou(boxes[i : i + 1].double(), boxes[j : j + 1].double()).item() > iou_threshold
            and (not class_wise or labels[i] == labels[j])
            for j in kept
        ]
        if not any(overlaps):
            kept.append(i)
    return kept


def random_detections(batch: int, k: int, seed: int, num_classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, k, 2, generator=generator) * 40
    sizes = torch.rand(batch, k, 2, generator=generator) * 20 + 2
    boxes = torch.cat([corners, corners + sizes], dim=-1)
    scores, _ = torch.rand(batch, k, generator=generator).sort(dim=1, descending=True)
    scores[:, -3:] = 0  # padding, as the decoders return it
    labels = torch.randint(num_classes, (batch, k), generator=generator)
    return boxes, scores, labels


@pytest.mark.parametrize("class_wise", [True, False], ids=["class", "agnostic"])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5])
def test_hard_nms_equals_a_naive_greedy_nms(class_wise, iou_threshold):
    boxes, scores, labels = random_detections(batch=3, k=40, seed=int(iou_threshold * 10) + class_wise)
    kept_boxes, kept_scores, kept_labels = hard_nms(boxes, scores, labels, iou_threshold, class_wise)
    assert kept_boxes.shape == boxes.shape and kept_scores.shape == scores.shape and kept_labels.shape == labels.shape
    suppressed = 0
    for image in range(3):
        kept = naive_nms(boxes[image], scores[image], labels[image], iou_threshold, class_wise)
        count = len(kept)
        suppressed += 37 - count
        torch.testing.assert_close(kept_scores[image, :count], scores[image, kept], rtol=0, atol=0)
        torch.testing.assert_close(kept_boxes[image, :count], boxes[image, kept], rtol=0, atol=0)
        torch.testing.assert_close(kept_labels[image, :count], labels[image, kept], rtol=0, atol=0)
        assert kept_scores[image, count:].eq(0).all()
    assert suppressed > 0


def test_class_wise_keeps_overlapping_boxes_of_different_classes():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11]]])
    scores, labels = torch.tensor([[0.9, 0.8, 0.7]]), torch.tensor([[0, 1, 0]])
    assert hard_nms(boxes, scores, labels, 0.5, class_wise=True)[1][0].tolist() == pytest.approx([0.9, 0.8, 0])
    assert hard_nms(boxes, scores, labels, 0.5, class_wise=False)[1][0].tolist() == pytest.approx([0.9, 0, 0])


def tiny_centernet(**settings) -> CenterNet:
    backbone = {"_target_": "keypointdet.models.backbones.resnet.ResNet", "depth": 18, "neck_channels": [16, 16, 16]}
    torch.manual_seed(0)
    return CenterNet(backbone, num_classes=3, head_channels=8, k=20, **settings).eval()


def test_without_nms_the_detections_are_the_decoder_s():
    detector = tiny_centernet()
    assert detector.nms is None and detector.settings()["nms"] is None
    with torch.no_grad():
        outputs = detector(random_images(2, 64, seed=0))[-1]
        expected = centernet_decode(outputs["heatmap"], outputs["size"], outputs["offset"], k=20)
        for result, reference in zip(detector.decode(outputs), expected, strict=True):
            assert torch.equal(result, reference)


def test_nms_setting_is_validated():
    with pytest.raises(ValueError, match="model.nms must be null or one of"):
        tiny_centernet(nms="soft")


@pytest.fixture(scope="module")
def nms_checkpoint(tiny_dataset, tmp_path_factory):
    """A tiny CenterNet checkpoint (sharpened, see detector_checkpoint.py) saved with nms=class, nms_iou=0.2, its
    sizes raised to about 6 output cells so that its boxes overlap."""
    directory = tmp_path_factory.mktemp("nms")
    ckpt_path = sharpened(tiny_checkpoint(tiny_dataset, directory, "centernet"), directory)
    detector = load_detector(ckpt_path)
    with torch.no_grad():
        for head in detector.heads:
            head.size[-1].bias.add_(6)
    detector.nms, detector.nms_iou = "class", 0.2
    record = checkpoint_metadata(load_checkpoint(ckpt_path), ckpt_path)["input"]
    return save_detector(directory / "nms.ckpt", detector, record)


def test_checkpoints_rebuild_the_nms_and_the_torchscript_export_applies_it(nms_checkpoint, tmp_path):
    detector = load_detector(nms_checkpoint)
    assert (detector.nms, detector.nms_iou) == ("class", 0.2)
    output = main([f"ckpt_path={nms_checkpoint}", "format=torchscript", f"output={tmp_path / 'nms.pt'}"])
    scripted = torch.jit.load(str(output))
    suppressed = 0
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for seed, (batch, side) in enumerate([(1, 64), (3, 96)]):
            image = random_images(batch, side, seed)
            expected = pytorch_detections(detector, image)
            assert_same_detections(scripted(image), expected)
            detector.nms = None
            suppressed += int((pytorch_detections(detector, image)[1] > 0).sum() - (expected[1] > 0).sum())
            detector.nms = "class"
    assert suppressed > 0  # the NMS did something


@pytest.mark.slow  # an ONNX export: 30-60 s on 2 shared cores
def test_the_onnx_export_applies_the_nms(nms_checkpoint, tmp_path):
    import onnxruntime

    detector = load_detector(nms_checkpoint)
    output = main([f"ckpt_path={nms_checkpoint}", "format=onnx", f"output={tmp_path / 'nms.onnx'}"])
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for seed, (batch, side) in enumerate([(1, 64), (3, 96)]):
        image = random_images(batch, side, seed)
        assert_same_detections(session.run(None, {"image": image.numpy()}), pytorch_detections(detector, image))


def test_eval_and_predict_overrides_replace_the_checkpoint_s_nms():
    detector = tiny_centernet()
    assert apply_nms_overrides(detector, {"tta": {"flip": False}}).nms is None  # no override: the checkpoint's
    apply_nms_overrides(detector, {"nms": "agnostic", "nms_iou": 0.3})
    assert (detector.nms, detector.nms_iou) == ("agnostic", 0.3)
    apply_nms_overrides(detector, {"nms": None})
    assert (detector.nms, detector.nms_iou) == (None, 0.3)
    with pytest.raises(ValueError, match="model.nms must be null or one of"):
        apply_nms_overrides(detector, {"nms": "soft"})
