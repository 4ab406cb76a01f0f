"""Perfect predictions for the pipeline tests: ground-truth targets turned into raw head outputs.

The oracles are written independently of the package (a Python loop per object), so that decoding them
(:func:`decoded_results`, the package's own path) tests the decoders, the box mapping and the evaluation,
not a copy of their code.
"""

from __future__ import annotations

import torch

from keypointdet.boxes import BoxMapping
from keypointdet.metrics import coco_results


def decoded_results(detector, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[list[dict]]:
    """Raw outputs of a collated evaluation batch -> COCO results per image (decoded, no TTA, original pixels)."""
    boxes, scores, labels = detector.decode(outputs)
    boxes = BoxMapping.from_batch(batch).to_original(boxes * detector.stride)
    return [
        coco_results(int(image_id), boxes[i], scores[i], labels[i], detector.category_ids)
        for i, image_id in enumerate(batch["image_id"].reshape(-1).tolist())
    ]


def logit(probability: torch.Tensor) -> torch.Tensor:
    probability = probability.clamp(1e-6, 1 - 1e-6)
    return torch.log(probability / (1 - probability))


def scatter_at(index: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Prediction map ``[B, D, H, W]`` holding ``values [B, M, D]`` at the flat positions ``index``."""
    batch, _, channels = values.shape
    out = torch.zeros(batch, channels, shape[0] * shape[1])
    for b in range(batch):
        for m in torch.nonzero(mask[b]).flatten():
            out[b, :, index[b, m]] = values[b, m]
    return out.reshape(batch, channels, *shape)


def centernet_oracle(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CenterNet raw outputs that decode to the batch's ground truth."""
    shape = batch["heatmap"].shape[-2:]
    return {
        "heatmap": logit(batch["heatmap"]),
        "size": scatter_at(batch["index"], batch["mask"], batch["size"], shape),
        "offset": scatter_at(batch["index"], batch["mask"], batch["offset"], shape),
    }


def cornernet_oracle(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CornerNet raw outputs that decode to the batch's ground truth: one embedding per object at both of
    its corners, 2 apart and away from the background's 0."""
    shape = batch["tl_heatmap"].shape[-2:]
    tags = (2.0 * torch.arange(1, batch["mask"].shape[1] + 1)).reshape(1, -1, 1)
    oracle = {}
    for corner in ("tl", "br"):
        index = batch[f"{corner}_index"]
        oracle[f"{corner}_heatmap"] = logit(batch[f"{corner}_heatmap"])
        oracle[f"{corner}_embedding"] = scatter_at(index, batch["mask"], tags, shape)
        oracle[f"{corner}_offset"] = scatter_at(index, batch["mask"], batch[f"{corner}_offset"], shape)
    return oracle


def centernet_pose_oracle(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CenterNet pose raw outputs that decode to the batch's ground truth: CenterNet's, every object's joint
    vectors at its centre, the joint heatmaps, every labelled joint's offset at its cell."""
    shape = batch["heatmap"].shape[-2:]
    return {
        **centernet_oracle(batch),
        "joint_vector": scatter_at(batch["index"], batch["mask"], batch["joint_vector"], shape),
        "joint_heatmap": logit(batch["joint_heatmap"]),
        "joint_offset": scatter_at(batch["joint_index"], batch["joint_mask"], batch["joint_offset"], shape),
    }
