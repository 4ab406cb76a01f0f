"""Test-time augmentation: flip merging against naive implementations, mirror symmetry, multi-scale mapping."""

from __future__ import annotations

import pytest
import torch
from test_decode_maths import distinct_map, naive_peak_nms, naive_topk

from keypointdet.decode import cornernet_pairs, soft_nms
from keypointdet.detectors import CenterNet, CornerNet
from keypointdet.inference import detect_batch
from keypointdet.tta import TestTimeAugmentation, resize_images

RESNET = {"_target_": "keypointdet.models.backbones.resnet.ResNet", "depth": 18, "neck_channels": [32, 32, 32]}
HOURGLASS = {
    "_target_": "keypointdet.models.backbones.hourglass.Hourglass",
    "num_stacks": 1, "depth": 2, "dims": [16, 16, 24], "modules": [1, 1, 1], "stem_channels": 16, "out_channels": 16,
}


def centernet(**kwargs) -> CenterNet:
    torch.manual_seed(0)
    return CenterNet(RESNET, num_classes=3, head_channels=16, **kwargs).eval()


def cornernet(**kwargs) -> CornerNet:
    torch.manual_seed(0)
    return CornerNet(HOURGLASS, num_classes=3, pool_channels=8, **kwargs).eval()


def detect(model, batch, **tta):
    return detect_batch(model, batch, TestTimeAugmentation(**tta))


def batch_of(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A collated validation batch of letterboxed ``images`` that are their own originals (scale 1)."""
    count, _, height, width = images.shape
    return {
        "image": images,
        "image_id": torch.arange(count),
        "original_size": torch.tensor([[height, width]] * count),
        "scale": torch.ones(count, 2),
        "shift": torch.zeros(count, 2),
    }


def test_centernet_flip_averages_probabilities_and_sizes_and_keeps_the_image_offsets():
    g = torch.Generator().manual_seed(1)
    classes, height, width, k = 2, 6, 7, 12
    maps = {
        "heatmap": distinct_map(1, (1, classes, height, width), -5.0, 3.0),
        "size": torch.rand(1, 2, height, width, generator=g) * 6,
        "offset": torch.rand(1, 2, height, width, generator=g),
    }
    mirrored = {
        "heatmap": distinct_map(2, (1, classes, height, width), -5.0, 3.0),
        "size": torch.rand(1, 2, height, width, generator=g) * 6,
        "offset": torch.rand(1, 2, height, width, generator=g),
    }
    boxes, scores, labels = centernet(k=k).flip_candidates(maps, mirrored)[0]

    def averaged(name: str, y: int, x: int, c: int | None = None) -> float:
        """Mean of the image's value at (y, x) and the mirror's at (y, width - 1 - x)."""
        if c is None:
            return (float(maps["size"][0, name, y, x]) + float(mirrored["size"][0, name, y, width - 1 - x])) / 2
        return (float(torch.sigmoid(maps["heatmap"][0, c, y, x]))
                + float(torch.sigmoid(mirrored["heatmap"][0, c, y, width - 1 - x]))) / 2

    naive_scores = torch.tensor(
        [[[[averaged("", y, x, c) for x in range(width)] for y in range(height)] for c in range(classes)]]
    )
    expected = naive_topk(naive_peak_nms(naive_scores, 3), k)[0]
    torch.testing.assert_close(scores[0], torch.tensor([score for score, *_ in expected]), rtol=1e-6, atol=1e-7)
    assert labels[0].tolist() == [label for _, label, _, _ in expected]
    for box, (_, _, y, x) in zip(boxes[0].tolist(), expected):
        w, h = averaged(0, y, x), averaged(1, y, x)
        cx, cy = x + float(maps["offset"][0, 0, y, x]), y + float(maps["offset"][0, 1, y, x])
        assert box == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=1e-5)


def test_cornernet_flip_merges_the_pairs_of_image_and_mirror_with_one_soft_nms():
    model = cornernet(k=10, num_dets=50, max_dets=20)
    g = torch.Generator().manual_seed(3)
    shapes = {"heatmap": 3, "embedding": 1, "offset": 2}
    maps, mirrored = (
        {f"{corner}_{kind}": torch.randn(1, channels, 8, 9, generator=g)
         for corner in ("tl", "br") for kind, channels in shapes.items()}
        for _ in range(2)
    )  # fmt: skip
    names = ("tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding", "tl_offset", "br_offset")
    direct, from_mirror = model.flip_candidates(maps, mirrored)
    for got, want in zip(direct, cornernet_pairs(*(maps[name] for name in names), k=10, num_dets=50)):
        torch.testing.assert_close(got, want)
    boxes, scores, labels = cornernet_pairs(*(mirrored[name] for name in names), k=10, num_dets=50)
    naive = [[9 - x2, y1, 9 - x1, y2] for x1, y1, x2, y2 in boxes[0].tolist()]  # x -> width - x
    torch.testing.assert_close(from_mirror[0][0], torch.tensor(naive))
    torch.testing.assert_close(from_mirror[1], scores)
    assert torch.equal(from_mirror[2], labels)
    # Suppressed once, over both sets together: an already suppressed set would be decayed twice.
    together = [torch.cat([direct[i], from_mirror[i]], dim=1) for i in range(3)]
    merged = model.merge([direct, from_mirror])
    for got, want in zip(merged, soft_nms(*together, sigma=0.5, method="gaussian", max_dets=20)):
        torch.testing.assert_close(got, want)
    # Without TTA the one set is suppressed too: the model's decode.
    for got, want in zip(model.merge([direct]), model.decode(maps)):
        torch.testing.assert_close(got, want)


def test_centernet_flip_of_a_symmetric_image_gives_mirrored_detections():
    model = centernet(k=30)
    # Offsets 0.5 and sizes 2 everywhere: boxes centred on their cells, so the only asymmetry left would be
    # in the flip-averaged heatmap.
    for branch, value in ((model.heads[-1].offset, 0.5), (model.heads[-1].size, 2.0)):
        torch.nn.init.zeros_(branch[-1].weight)
        torch.nn.init.constant_(branch[-1].bias, value)
    half = torch.randn(1, 3, 64, 32, generator=torch.Generator().manual_seed(4))
    image = torch.cat([half, half.flip(-1)], dim=-1)
    detections = detect(model, batch_of(image), flip=True)[0]
    assert len(detections) >= 4

    def key(detection, mirror: bool) -> tuple:
        x, y, w, h = detection["bbox"]
        x = 64 - x - w if mirror else x
        return detection["category_id"], round(detection["score"], 5), round(x, 3), round(y, 3), round(w, 3), round(h, 3)

    # the 30 best may cut a pair at the last score: compare the detections above the lowest score
    lowest = min(detection["score"] for detection in detections)
    above = [detection for detection in detections if detection["score"] > lowest + 1e-6]
    assert sorted(key(d, False) for d in above) == sorted(key(d, True) for d in above)


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.25])
def test_resize_images_pads_to_the_divisor_and_reports_exact_factors(scale):
    images = torch.randn(2, 3, 64, 96)
    resized, factors = resize_images(images, scale, 32)
    height, width = round(64 * scale), round(96 * scale)
    assert resized.shape[-2] % 32 == 0 and resized.shape[-1] % 32 == 0
    assert resized.shape[-2] >= height and resized.shape[-1] >= width
    assert torch.all(resized[..., height:, :] == 0) and torch.all(resized[..., width:] == 0)
    torch.testing.assert_close(factors, torch.tensor([width / 96, height / 64]))


def test_multi_scale_maps_each_scale_back_and_merges_with_soft_nms():
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    batch = batch_of(images)
    model = centernet(k=20)
    sets = []
    for scale in (0.5, 1.5):
        resized, factors = resize_images(images, scale, 32)
        boxes, scores, labels = model.decode(model(resized)[-1])
        sets.append((boxes * model.stride / factors.repeat(2), scores, labels))  # input pixels of the scaled image
    boxes, scores, labels = soft_nms(*(torch.cat(parts, dim=1) for parts in zip(*sets)), max_dets=20)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor(64.0))
    detections = detect(model, batch, scales=(0.5, 1.5))
    for b, image_detections in enumerate(detections):
        kept = scores[b] > 0
        assert [d["score"] for d in image_detections] == pytest.approx(scores[b][kept].tolist())
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in image_detections)]
        torch.testing.assert_close(torch.tensor(xyxy), boxes[b][kept], rtol=1e-5, atol=1e-4)
        assert len(image_detections) <= 20


@pytest.mark.parametrize("build", [centernet, cornernet])
def test_tta_detections_stay_in_the_image_for_both_detectors(build):
    model = build()
    detections = detect(model, batch_of(torch.randn(1, 3, 64, 64)), flip=True, scales=[0.75, 1.0])[0]
    scores = [d["score"] for d in detections]
    assert scores == sorted(scores, reverse=True) and len(scores) <= 100
    for x, y, w, h in (d["bbox"] for d in detections):
        # an untrained size branch can invert a box (negative size): its corners are still clipped to the image
        assert 0 <= min(x, x + w) <= max(x, x + w) <= 64 and 0 <= min(y, y + h) <= max(y, y + h) <= 64


def test_tta_config_is_validated():
    with pytest.raises(ValueError, match="tta.scales"):
        TestTimeAugmentation(scales=())
    with pytest.raises(ValueError, match="tta.scales"):
        TestTimeAugmentation(scales=(1.0, -0.5))


def test_flip_inputs_are_padded_to_the_stride_so_the_map_mirrors_onto_the_image():
    # The hourglass takes any size (size divisor 1): a 61-px-wide image would give a 16-cell map covering
    # 64 px, and its mirror would be shifted by 3 px. Padding to a multiple of the stride keeps it exact.
    model = cornernet()
    widths = []
    forward = model.forward
    model.forward = lambda images: widths.append(images.shape[-1]) or forward(images)
    detect(model, batch_of(torch.randn(1, 3, 40, 61)), flip=True)
    assert model.size_divisor == 1 and widths == [64]
