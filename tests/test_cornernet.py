"""CornerNet checked piece by piece against naive python implementations (targets, associative-embedding
loss, soft-NMS, pairing), end to end against an oracle (ground truth fed back as predictions must give
AP 1), and as a training run composed from the real configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keypointdet.data.encode import CornerNetEncoder, encode_cornernet, gaussian_radius
from keypointdet.decode import cornernet_decode, peak_nms, soft_nms, topk_peaks
from keypointdet.detectors import CornerNet
from keypointdet.losses import ae_loss
from keypointdet.models.heads import CornerHead, heatmap_bias
from keypointdet.runs.train import train

# --------------------------------------------------------------------------- naive helpers


def naive_encode(boxes, labels, num_classes, output_size, max_objects, min_overlap, variant):
    """Corner targets one pixel at a time: a truncated-radius gaussian (sigma = diameter / 6) per corner."""
    height, width = output_size
    out = {f"{c}_heatmap": np.zeros((num_classes, height, width)) for c in ("tl", "br")}
    out.update({f"{c}_index": np.zeros(max_objects, np.int64) for c in ("tl", "br")})
    out.update({f"{c}_offset": np.zeros((max_objects, 2)) for c in ("tl", "br")})
    out["mask"] = np.zeros(max_objects, bool)
    for m, ((x1, y1, x2, y2), label) in enumerate(list(zip(boxes, labels))[:max_objects]):
        radius = int(gaussian_radius(math.ceil(y2 - y1), math.ceil(x2 - x1), min_overlap, variant))
        sigma = (2 * radius + 1) / 6
        out["mask"][m] = True
        for corner, (px, py) in (("tl", (x1, y1)), ("br", (x2, y2))):
            cx = min(max(math.floor(px), 0), width - 1)
            cy = min(max(math.floor(py), 0), height - 1)
            out[f"{corner}_index"][m] = cy * width + cx
            out[f"{corner}_offset"][m] = (px - cx, py - cy)
            heatmap = out[f"{corner}_heatmap"][label]
            for y in range(max(0, cy - radius), min(height, cy + radius + 1)):
                for x in range(max(0, cx - radius), min(width, cx + radius + 1)):
                    value = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
                    heatmap[y, x] = max(heatmap[y, x], value)
    out["num_dropped"] = max(0, len(boxes) - max_objects)
    return out


def naive_ae(tl, br, mask, num_images=None):
    """Pull and push one image and one pair at a time (autograd-able scalars)."""
    pull_total, push_total, images = tl.new_zeros(()), tl.new_zeros(()), 0
    for b in range(tl.shape[0]):
        objects = [m for m in range(tl.shape[1]) if mask[b, m]]
        n = len(objects)
        if n == 0:
            continue
        images += 1
        mean = {k: (tl[b, k] + br[b, k]) / 2 for k in objects}
        pull_total = pull_total + sum((tl[b, k] - mean[k]) ** 2 + (br[b, k] - mean[k]) ** 2 for k in objects) / n
        if n > 1:
            margins = [torch.clamp(1 - (mean[k] - mean[j]).abs(), min=0) for k in objects for j in objects if j != k]
            push_total = push_total + sum(margins) / (n * (n - 1))
    norm = images if num_images is None else num_images
    return (pull_total / norm, push_total / norm) if norm > 0 else (pull_total, push_total)


def naive_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def naive_soft_nms_image(boxes, scores, labels, sigma, method, iou_threshold, score_threshold, max_dets):
    """Greedy soft-NMS of one image over python lists, run to the end, then the best ``max_dets``."""
    alive = {i: s for i, s in enumerate(scores) if s >= score_threshold}
    picked = []
    while alive:
        best = max(alive, key=lambda i: (alive[i], -i))
        picked.append((boxes[best], alive.pop(best), labels[best] if labels is not None else 0))
        for j in list(alive):
            if labels is not None and labels[j] != labels[best]:
                continue
            iou = naive_iou(boxes[best], boxes[j])
            if method == "gaussian":
                alive[j] *= math.exp(-(iou**2) / sigma)
            elif iou > iou_threshold:
                alive[j] *= 1 - iou
            if alive[j] < score_threshold:
                del alive[j]
    picked = sorted(picked, key=lambda p: -p[1])[:max_dets]
    return picked + [([0.0] * 4, 0.0, 0)] * (max_dets - len(picked))


def naive_soft_nms(
    boxes, scores, labels, sigma=0.5, method="gaussian", iou_threshold=0.3, score_threshold=0.001, max_dets=100
):
    """``naive_soft_nms_image`` over a batch of tensors -> (boxes, scores, labels) tensors."""
    out = []
    for b in range(scores.shape[0]):
        image_labels = None if labels is None else labels[b].tolist()
        options = (sigma, method, iou_threshold, score_threshold, max_dets)
        out.append(naive_soft_nms_image(boxes[b].tolist(), scores[b].tolist(), image_labels, *options))
    return (
        torch.tensor([[p[0] for p in image] for image in out], dtype=torch.float64),
        torch.tensor([[p[1] for p in image] for image in out], dtype=torch.float64),
        torch.tensor([[p[2] for p in image] for image in out]),
    )


def clustered_boxes(generator: torch.Generator, batch: int, num: int, size: float = 30.0) -> torch.Tensor:
    """xyxy boxes ``[B, D, 4]`` jittered around a few centres, so that many overlap."""
    centres = torch.rand(batch, 4, 2, generator=generator, dtype=torch.float64) * size
    pick = torch.randint(4, (batch, num), generator=generator)
    xy = centres.gather(1, pick.unsqueeze(-1).expand(-1, -1, 2))
    xy = xy + torch.randn(batch, num, 2, generator=generator, dtype=torch.float64) * 2
    wh = 3 + torch.rand(batch, num, 2, generator=generator, dtype=torch.float64) * 8
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("min_overlap", "variant", "max_objects"), [(0.3, "corrected", 16), (0.7, "centernet", 16), (0.3, "corrected", 5)]
)
def test_encode_cornernet_matches_naive(min_overlap, variant, max_objects):
    rng = np.random.default_rng(3)
    height, width, num_classes = 23, 29, 3
    xy = rng.uniform(-1.5, [width - 2, height - 2], size=(9, 2))
    wh = rng.uniform(0.4, 14, size=(9, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1)
    boxes[0] = [0.0, 0.0, width, height]  # corners on the map's far edges: cells clamp, offsets reach 1
    labels = rng.integers(0, num_classes, size=9)
    got = encode_cornernet(boxes, labels, num_classes, (height, width), max_objects, min_overlap, variant)
    expected = naive_encode(boxes, labels, num_classes, (height, width), max_objects, min_overlap, variant)

    assert set(got) == set(expected)
    for name in ("tl_heatmap", "br_heatmap"):
        assert got[name].dtype == torch.float32 and got[name].shape == (num_classes, height, width)
        np.testing.assert_allclose(got[name].numpy(), expected[name], atol=1e-6)
    for name in ("tl_index", "br_index"):
        assert got[name].dtype == torch.int64
        np.testing.assert_array_equal(got[name].numpy(), expected[name])
    for name in ("tl_offset", "br_offset"):
        np.testing.assert_allclose(got[name].numpy(), expected[name], atol=1e-6)
    assert got["mask"].dtype == torch.bool
    np.testing.assert_array_equal(got["mask"].numpy(), expected["mask"])
    assert int(got["num_dropped"]) == expected["num_dropped"]
    encoder = CornerNetEncoder(num_classes, max_objects, min_overlap, variant)
    assert encoder(boxes, labels, (height, width)).keys() == got.keys()


# --------------------------------------------------------------------------- associative embedding loss


def ae_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    tl = (torch.rand(5, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    br = (torch.rand(5, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.rand(5, 6, generator=g) < 0.6
    mask[0], mask[1] = False, False  # images with 0 and 1 objects, objects in any slots
    mask[1, 4] = True
    mask[2] = True
    return tl, br, mask


@pytest.mark.parametrize("num_images", [None, 2.5, 0.0])
def test_ae_loss_matches_naive_values_and_gradients(num_images):
    tl, br, mask = ae_inputs(0)
    pull, push = ae_loss(tl, br, mask, num_images)
    assert pull.dtype == push.dtype == torch.float32
    (grad_tl, grad_br) = torch.autograd.grad(pull + 0.7 * push, (tl, br))
    naive_pull, naive_push = naive_ae(tl, br, mask, num_images)
    (naive_grad_tl, naive_grad_br) = torch.autograd.grad(naive_pull + 0.7 * naive_push, (tl, br))
    assert pull.item() == pytest.approx(naive_pull.item(), rel=1e-5)
    assert push.item() == pytest.approx(naive_push.item(), rel=1e-5)
    torch.testing.assert_close(grad_tl, naive_grad_tl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_br, naive_grad_br, rtol=1e-5, atol=1e-6)


def test_ae_loss_is_finite_on_padding_ties_and_empty_batches():
    tl, br, mask = ae_inputs(1)
    with torch.no_grad():
        tl[~mask], br[~mask] = float("nan"), float("inf")  # garbage in padded slots must not leak
        tl[2], br[2] = 1.0, 1.0  # identical embeddings: |e_k - e_j| = 0 everywhere in image 2
    pull, push = ae_loss(tl, br, mask)
    grads = torch.autograd.grad(pull + push, (tl, br))
    assert torch.isfinite(pull) and torch.isfinite(push)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all((g[~mask] == 0).all() for g in grads)

    empty = torch.zeros(3, 4, dtype=torch.bool)
    pull, push = ae_loss(tl[:3, :4], br[:3, :4], empty)
    assert pull.item() == 0.0 and push.item() == 0.0
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(pull + push, (tl, br)))


# --------------------------------------------------------------------------- soft-NMS


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("with_labels", [True, False], ids=["per_class", "agnostic"])
@pytest.mark.parametrize(("num", "max_dets"), [(60, 25), (12, 16)], ids=["truncated", "padded"])
def test_soft_nms_matches_naive_greedy(method, with_labels, num, max_dets):
    g = torch.Generator().manual_seed(num + max_dets)
    boxes = clustered_boxes(g, 3, num)
    scores = torch.rand(3, num, generator=g, dtype=torch.float64) * 0.999 + 0.0005
    scores[2, : num // 2] = 0.0  # candidates already below the threshold
    labels = torch.randint(3, (3, num), generator=g) if with_labels else None
    kwargs = {"sigma": 0.4, "method": method, "iou_threshold": 0.25, "score_threshold": 0.01, "max_dets": max_dets}
    got_boxes, got_scores, got_labels = soft_nms(boxes, scores, labels, **kwargs)
    expected_boxes, expected_scores, expected_labels = naive_soft_nms(boxes, scores, labels, **kwargs)
    assert got_boxes.shape == (3, max_dets, 4) and got_scores.shape == (3, max_dets)
    torch.testing.assert_close(got_scores, expected_scores, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_boxes, expected_boxes, rtol=1e-9, atol=1e-12)
    if with_labels:
        torch.testing.assert_close(got_labels, expected_labels)
    else:
        assert got_labels is None


# --------------------------------------------------------------------------- pairing and decoding


def hand_built_maps(corners: dict[str, list[tuple[int, int, int, float, float, tuple[float, float]]]], size=16):
    """Raw outputs with the given corners ``(class, x, y, logit, embedding, offset)``; background logits are
    -30 and background embeddings far apart (-50 / +50), so no background corner ever pairs."""
    out = {}
    for corner, background in (("tl", -50.0), ("br", 50.0)):
        heatmap = torch.full((1, 2, size, size), -30.0)
        embedding = torch.full((1, 1, size, size), background)
        offset = torch.zeros(1, 2, size, size)
        for label, x, y, score_logit, tag, (dx, dy) in corners[corner]:
            heatmap[0, label, y, x] = score_logit
            embedding[0, 0, y, x] = tag
            offset[0, :, y, x] = torch.tensor([dx, dy])
        out.update({f"{corner}_heatmap": heatmap, f"{corner}_embedding": embedding, f"{corner}_offset": offset})
    return out


def decode_maps(maps, **kwargs):
    names = ("tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding", "tl_offset", "br_offset")
    return cornernet_decode(*(maps[name] for name in names), **kwargs)


def test_pairing_rejects_class_embedding_and_geometry_mismatches():
    tl = [(0, 2, 3, 3.0, 1.0, (0.25, 0.5))]
    br = [
        (0, 10, 12, 2.0, 1.2, (0.5, 0.5)),  # valid: same class, |1.0 - 1.2| <= 0.5, below right
        (1, 11, 13, 2.5, 1.0, (0.0, 0.0)),  # other class
        (0, 12, 14, 2.4, 1.8, (0.0, 0.0)),  # embeddings 0.8 apart
        (0, 1, 13, 2.3, 1.0, (0.9, 0.0)),  # left of the top-left corner
        (0, 9, 1, 2.2, 1.0, (0.0, 0.9)),  # above it
        (0, 2, 9, 2.1, 1.0, (0.1, 0.0)),  # same column, but its offset puts it left of x1 = 2.25
    ]
    boxes, scores, labels = decode_maps(hand_built_maps({"tl": tl, "br": br}), k=len(br), max_dets=10)
    assert boxes.shape == (1, 10, 4) and scores.shape == labels.shape == (1, 10)
    expected_score = (torch.sigmoid(torch.tensor(3.0)) + torch.sigmoid(torch.tensor(2.0))) / 2
    assert float(scores[0, 0]) == pytest.approx(float(expected_score), rel=1e-6)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([2.25, 3.5, 10.5, 12.5]))
    assert int(labels[0, 0]) == 0
    assert (scores[0, 1:] == 0).all() and (boxes[0, 1:] == 0).all()


def test_pairing_threshold_and_soft_nms_of_two_candidates():
    tl = [(1, 2, 2, 3.0, 0.0, (0.0, 0.0)), (1, 3, 5, 1.0, 0.45, (0.0, 0.0))]
    br = [(1, 12, 12, 3.0, 0.3, (0.0, 0.0))]
    # Both pairs are valid at ae_threshold 0.5 (|0 - 0.3|, |0.45 - 0.3|); at 0.2 only the second one.
    _, scores, labels = decode_maps(hand_built_maps({"tl": tl, "br": br}), k=2, max_dets=4)
    high, low = torch.sigmoid(torch.tensor(3.0)), torch.sigmoid(torch.tensor(1.0))
    iou = naive_iou([2, 2, 12, 12], [3, 5, 12, 12])
    decayed = (high + low) / 2 * math.exp(-(iou**2) / 0.5)  # per-class gaussian soft-NMS, sigma 0.5
    torch.testing.assert_close(scores[0], torch.tensor([high, decayed, 0.0, 0.0]))
    assert labels[0, :2].tolist() == [1, 1]
    _, scores, _ = decode_maps(hand_built_maps({"tl": tl, "br": br}), k=2, max_dets=4, ae_threshold=0.2)
    torch.testing.assert_close(scores[0, :2], torch.tensor([(high + low) / 2, 0.0]))


def naive_cornernet_decode(maps, k, ae_threshold, num_dets, sigma, method, max_dets, iou_threshold):
    """K x K pairing with python loops over the (independently tested) top-k peaks, then naive soft-NMS."""
    corners = {}
    for corner in ("tl", "br"):
        peaks = topk_peaks(peak_nms(torch.sigmoid(maps[f"{corner}_heatmap"])), k)
        corners[corner] = []
        for b in range(peaks.scores.shape[0]):
            per_image = []
            for score, label, y, x in zip(peaks.scores[b], peaks.labels[b], peaks.ys[b], peaks.xs[b]):
                dx, dy = maps[f"{corner}_offset"][b, :, y, x].tolist()
                tag = float(maps[f"{corner}_embedding"][b, 0, y, x])
                per_image.append((float(score), int(label), float(x) + dx, float(y) + dy, tag))
            corners[corner].append(per_image)
    batch_boxes, batch_scores, batch_labels = [], [], []
    for b in range(len(corners["tl"])):
        pairs = []
        for s1, c1, x1, y1, e1 in corners["tl"][b]:
            for s2, c2, x2, y2, e2 in corners["br"][b]:
                if c1 == c2 and abs(e1 - e2) <= ae_threshold and x2 >= x1 and y2 >= y1:
                    pairs.append(((s1 + s2) / 2, [x1, y1, x2, y2], c1))
        pairs = sorted(pairs, key=lambda p: -p[0])[:num_dets]
        batch_scores.append([p[0] for p in pairs] + [0.0] * (num_dets - len(pairs)))
        batch_boxes.append([p[1] for p in pairs] + [[0.0] * 4] * (num_dets - len(pairs)))
        batch_labels.append([p[2] for p in pairs] + [0] * (num_dets - len(pairs)))
    boxes = torch.tensor(batch_boxes, dtype=torch.float64)
    scores = torch.tensor(batch_scores, dtype=torch.float64)
    labels = torch.tensor(batch_labels)
    return naive_soft_nms(boxes, scores, labels, sigma, method, iou_threshold=iou_threshold, max_dets=max_dets)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_cornernet_decode_matches_naive_pairing_on_random_maps(method):
    g = torch.Generator().manual_seed(5)
    batch, classes, size = 2, 2, 12
    maps = {}
    for corner in ("tl", "br"):
        n = batch * classes * size * size
        # Distinct logits (a scaled permutation): no ties among peaks or pair scores.
        logits = torch.randperm(n, generator=g).float() / n * 8 - 4
        maps[f"{corner}_heatmap"] = logits.reshape(batch, classes, size, size)
        maps[f"{corner}_embedding"] = torch.rand(batch, 1, size, size, generator=g)
        maps[f"{corner}_offset"] = torch.rand(batch, 2, size, size, generator=g)
    kwargs = {"k": 20, "ae_threshold": 0.5, "num_dets": 25, "soft_nms_method": method, "max_dets": 15,
              "soft_nms_iou_threshold": 0.4}  # fmt: skip
    boxes, scores, labels = decode_maps(maps, **kwargs)
    expected_boxes, expected_scores, expected_labels = naive_cornernet_decode(
        maps, kwargs["k"], kwargs["ae_threshold"], kwargs["num_dets"], 0.5, method, kwargs["max_dets"], 0.4
    )
    assert (expected_scores[:, -1] > 0).all()  # enough valid pairs: the num_dets and max_dets cuts both matter
    torch.testing.assert_close(scores.double(), expected_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(boxes.double(), expected_boxes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(labels, expected_labels)


# --------------------------------------------------------------------------- head


def test_corner_head_outputs_and_init():
    head = CornerHead(in_channels=8, num_classes=3, hidden_channels=6, pool_channels=4)
    outputs = head(torch.randn(2, 8, 7, 9))
    channels = {"heatmap": 3, "embedding": 1, "offset": 2}
    assert list(outputs)[:2] == ["tl_heatmap", "br_heatmap"]
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        f"{corner}_{kind}": (2, n, 7, 9) for corner in ("tl", "br") for kind, n in channels.items()
    }
    for corner in ("tl", "br"):
        assert torch.allclose(head.heatmaps[corner][-1].bias, torch.tensor(heatmap_bias()))
    assert head.pools["tl"].directions == ("top", "left") and head.pools["br"].directions == ("bottom", "right")




# --------------------------------------------------------------------------- training from the real configs


@pytest.mark.parametrize("model", ["cornernet", "centernet"])
def test_fast_dev_run_on_small_hourglass(compose_train, model):
    overrides = (f"model={model}", "backbone=hourglass_small", "trainer.fast_dev_run=true", "evaluate_best=false")
    cfg = compose_train(*overrides)
    metrics = train(cfg)
    assert 0.0 <= metrics["val/mAP"] <= 1.0


def test_the_detector_soft_nms_iou_threshold_reaches_the_merge():
    """Linear soft-NMS (official ``linear_soft_nms``): a pair overlapping the best one at IoU 0.45 decays only
    when the threshold is below 0.45; the setting survives the detector's config (checkpoints)."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 4.5]]])
    candidates = (boxes, torch.tensor([[0.9, 0.8]]), torch.tensor([[0, 0]]))
    backbone = {"_target_": "keypointdet.models.backbones.resnet.ResNet", "depth": 18, "neck_channels": [8, 8, 8]}
    for threshold, expected in ((0.5, 0.8), (0.4, 0.8 * (1 - 0.45))):
        detector = CornerNet(backbone, 1, pool_channels=4, soft_nms_method="linear", soft_nms_iou_threshold=threshold)
        assert detector.config()["soft_nms_iou_threshold"] == threshold
        _, scores, _ = detector.merge([candidates])
        assert scores[0, :2].tolist() == pytest.approx([0.9, expected])


# --------------------------------------------------------------------------- the official pull / push reduction


def official_ae_loss(tag0: torch.Tensor, tag1: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official CornerNet ``_ae_loss`` (kp_utils.py) of a batch ``[B, M]``: per image, pull =
    sum_k ((tl_k - e_k)^2 + (br_k - e_k)^2) / (N + 1e-4), push = sum over every pair (j, k), the diagonal
    included, of (relu(1 - |e_j - e_k|) - 1 / (N + 1e-4)) / ((N - 1) N + 1e-4); both summed over the batch."""
    num = mask.sum(dim=1, keepdim=True).double()
    mean = (tag0 + tag1) / 2
    pull = ((tag0 - mean).pow(2) / (num + 1e-4))[mask].sum() + ((tag1 - mean).pow(2) / (num + 1e-4))[mask].sum()
    pairs = mask.unsqueeze(1) & mask.unsqueeze(2)
    num = num.unsqueeze(2)
    dist = torch.relu(1 - (mean.unsqueeze(1) - mean.unsqueeze(2)).abs())
    dist = (dist - 1 / (num + 1e-4)) / ((num - 1) * num + 1e-4)
    return pull, dist[pairs].sum()


def corner_batch(counts: list[int], generator: torch.Generator) -> tuple[dict, dict]:
    """Random CornerNet outputs on a 6 x 7 map and targets with ``counts[b]`` objects in image ``b``."""
    batch, classes, height, width, slots = len(counts), 2, 6, 7, 8
    outputs = {f"{c}_{kind}": torch.randn(batch, n, height, width, generator=generator, dtype=torch.float64)
               for c in ("tl", "br") for kind, n in (("heatmap", classes), ("embedding", 1), ("offset", 2))}  # fmt: skip
    mask = torch.arange(slots).expand(batch, slots) < torch.tensor(counts)[:, None]
    targets = {"mask": mask}
    for corner in ("tl", "br"):
        index = torch.stack([torch.randperm(height * width, generator=generator)[:slots] for _ in counts])
        heatmap = torch.rand(batch, classes, height * width, generator=generator) * 0.9
        heatmap.scatter_(2, index[:, None].expand(-1, classes, -1), 1.0)
        targets[f"{corner}_index"] = index
        targets[f"{corner}_heatmap"] = heatmap.reshape(batch, classes, height, width)
        targets[f"{corner}_offset"] = torch.rand(batch, slots, 2, generator=generator)
    return outputs, targets


def gathered_embeddings(outputs: dict, targets: dict) -> list[torch.Tensor]:
    """The embeddings at the corners, gathered with a plain loop."""
    tags = []
    for corner in ("tl", "br"):
        flat = outputs[f"{corner}_embedding"].flatten(2)[:, 0]
        tags.append(torch.stack([flat[b, targets[f"{corner}_index"][b]] for b in range(flat.shape[0])]))
    return tags


def test_recipe_pull_push_equal_the_official_sum_over_the_images_of_a_device():
    """5 images on one device: with ae_sum_images=5 the loss is the official one (the AE loss summed over the
    device's images); the paper normalisation is 5x smaller (its mean over images)."""
    outputs, targets = corner_batch([2, 3, 4, 2, 5], torch.Generator().manual_seed(0))
    backbone = {"_target_": "keypointdet.models.backbones.resnet.ResNet", "depth": 18, "neck_channels": [8, 8, 8]}
    recipe = CornerNet(backbone, 2, pool_channels=4, loss={"ae_sum_images": 5})
    paper = CornerNet(backbone, 2, pool_channels=4)
    terms, paper_terms = recipe.stack_loss(outputs, targets), paper.stack_loss(outputs, targets)
    pull, push = official_ae_loss(*gathered_embeddings(outputs, targets), targets["mask"])
    # the official epsilons (1e-4 next to N and N(N-1)) are the only difference
    assert terms["pull"].item() == pytest.approx(pull.item(), rel=1e-4)
    assert terms["push"].item() == pytest.approx(push.item(), rel=1e-4)
    official_total = terms["heatmap"] + 0.1 * pull + 0.1 * push + terms["offset"]
    assert terms["loss"].item() == pytest.approx(official_total.item(), rel=1e-4)
    assert terms["pull"].item() == pytest.approx(5 * paper_terms["pull"].item(), rel=1e-6)
    assert terms["push"].item() == pytest.approx(5 * paper_terms["push"].item(), rel=1e-6)


def test_recipe_pull_push_gradients_equal_the_official_ones_with_empty_and_single_object_images():
    """The official push of a one-object image is a constant (about 1, no gradient), ours is 0: the gradients
    agree; an image without objects adds nothing to either but counts as one of the device's images."""
    outputs, targets = corner_batch([0, 1, 3, 2, 4], torch.Generator().manual_seed(1))
    for corner in ("tl", "br"):
        outputs[f"{corner}_embedding"].requires_grad_()
    embeddings = [outputs["tl_embedding"], outputs["br_embedding"]]
    backbone = {"_target_": "keypointdet.models.backbones.resnet.ResNet", "depth": 18, "neck_channels": [8, 8, 8]}
    recipe = CornerNet(backbone, 2, pool_channels=4, loss={"ae_sum_images": 5})
    terms = recipe.stack_loss(outputs, targets)
    ours = torch.autograd.grad(terms["pull"] + terms["push"], embeddings)
    pull, push = official_ae_loss(*gathered_embeddings(outputs, targets), targets["mask"])
    official = torch.autograd.grad(pull + push, embeddings)
    for mine, theirs in zip(ours, official):
        torch.testing.assert_close(mine.double(), theirs, rtol=1e-3, atol=1e-6)
    single_object_push = official_ae_loss(*(tag[1:2] for tag in gathered_embeddings(outputs, targets)),
                                          targets["mask"][1:2])[1]  # fmt: skip
    assert single_object_push.item() == pytest.approx(1.0, abs=1e-3)
