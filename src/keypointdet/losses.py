"""Loss functions of raw head outputs, shared by CenterNet and CornerNet.

Every loss computes in float32 whatever the input dtype (mixed precision), takes logits, and
accepts an explicit normaliser so that a distributed run can divide by the count summed over all
devices instead of the local one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    num_positives: Tensor | float | None = None,
) -> Tensor:
    """Penalty-reduced pixel-wise focal loss of CornerNet / CenterNet.

    ``-1/N sum (1-p)^alpha log(p)`` at positives (target == 1) plus
    ``-1/N sum (1-y)^beta p^alpha log(1-p)`` elsewhere, with ``p = sigmoid(logits)``.
    The logs come from ``logsigmoid`` so the loss is finite for every finite logit.

    Args:
        logits: ``[B, C, H, W]`` raw heatmap.
        target: ``[B, C, H, W]`` gaussian heatmap in [0, 1], exactly 1 at object keypoints.
        num_positives: normaliser ``N``; by default the number of positives in ``target``.
            When it is 0 the raw sum is returned.

    Returns:
        Scalar loss (float32).
    """
    logits, target = logits.float(), target.float()
    positive = target.eq(1)
    # p^alpha as exp(alpha * log p): finite gradients even where p rounds to 0 or 1.
    log_prob, log_complement = F.logsigmoid(logits), F.logsigmoid(-logits)
    positive_loss = torch.exp(alpha * log_complement) * log_prob
    negative_loss = (1 - target).pow(beta) * torch.exp(alpha * log_prob) * log_complement
    loss = -torch.where(positive, positive_loss, negative_loss).sum()
    if num_positives is None:
        num_positives = positive.sum()
    return _normalised(loss, num_positives)


def mean_count_over_devices(count: Tensor) -> Tensor:
    """A loss normaliser that does not depend on how the batch is split over devices.

    DDP averages gradients over the ``world_size`` ranks, so dividing each rank's sum by
    ``total / world_size`` gives exactly the gradient of one process on the whole batch.
    """
    count = count.detach().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        count /= dist.get_world_size()
    return count


def _normalised(loss: Tensor, count: Tensor | float) -> Tensor:
    """``loss / count``, or ``loss`` itself when the count is 0 (a device-averaged count may be fractional)."""
    count = torch.as_tensor(count, dtype=loss.dtype, device=loss.device)
    return torch.where(count > 0, loss / count.clamp(min=torch.finfo(loss.dtype).tiny), loss)


def gather_at(feature: Tensor, index: Tensor) -> Tensor:
    """Values of ``feature [B, C, H, W]`` at flat positions ``index [B, M]`` (``y * W + x``) -> ``[B, M, C]``."""
    batch, channels = feature.shape[:2]
    flat = feature.reshape(batch, channels, -1)
    return flat.gather(2, index.unsqueeze(1).expand(-1, channels, -1)).transpose(1, 2)


def regression_loss(
    prediction: Tensor,
    index: Tensor,
    mask: Tensor,
    target: Tensor,
    kind: Literal["l1", "smooth_l1"] = "l1",
    num_objects: Tensor | float | None = None,
) -> Tensor:
    """L1 (CenterNet size / offset) or smooth-L1 (CornerNet offset) loss at the object positions.

    Args:
        prediction: ``[B, D, H, W]`` raw regression map.
        index: ``[B, M]`` int64 flat positions, padded.
        mask: ``[B, M]`` bool, True for real objects; or ``[B, M, D]``, True for each value that has a target
            (e.g. the labelled joints' coordinates).
        target: ``[B, M, D]`` regression targets.
        num_objects: normaliser; by default ``mask.sum()`` (of a ``[B, M]`` mask). The loss is summed over the
            ``D`` coordinates and divided by the number of objects (the papers' ``1/N sum |.|``).

    Returns:
        Scalar loss (float32); 0 (with a gradient path) when there are no objects.
    """
    predicted = gather_at(prediction, index).float()
    if kind == "l1":
        per_value = (predicted - target.float()).abs()
    elif kind == "smooth_l1":
        per_value = F.smooth_l1_loss(predicted, target.float(), reduction="none")
    else:
        raise ValueError(f"unknown regression loss {kind!r}; use 'l1' or 'smooth_l1'")
    # Select rather than multiply by the mask: a non-finite value in a padded slot must not leak in.
    value_mask = mask if mask.dim() == per_value.dim() else mask.unsqueeze(-1)
    loss = torch.where(value_mask, per_value, 0.0).sum()
    if num_objects is None:
        num_objects = mask.sum()
    return _normalised(loss, num_objects)


def ae_loss(
    tl_embedding: Tensor, br_embedding: Tensor, mask: Tensor, num_images: Tensor | float | None = None
) -> tuple[Tensor, Tensor]:
    """CornerNet's associative-embedding pull and push losses of the corners' 1-D embeddings.

    Per image with ``N`` objects and ``e_k = (e_tk + e_bk) / 2``:
    ``pull = 1/N sum_k (e_tk - e_k)^2 + (e_bk - e_k)^2`` groups the two corners of an object,
    ``push = 1/(N(N-1)) sum_{j != k} max(0, 1 - |e_k - e_j|)`` separates objects (0 when N <= 1;
    the diagonal is excluded, not cancelled with a 1/N term as in the official code, which is
    undefined for N = 1).

    Args:
        tl_embedding, br_embedding: ``[B, M]`` embeddings gathered at the corners' indices.
        mask: ``[B, M]`` bool, True for real objects.
        num_images: normaliser; by default the number of images with at least one object.
            When it is 0 the raw sums are returned.

    Returns:
        ``(pull, push)`` scalars (float32), averaged over the images that have objects.
    """
    # Select rather than multiply by the mask: a non-finite value in a padded slot must not leak in.
    tl = torch.where(mask, tl_embedding.float(), 0.0)
    br = torch.where(mask, br_embedding.float(), 0.0)
    count = mask.sum(dim=1).float()
    mean = (tl + br) / 2
    pull = ((tl - mean).pow(2) + (br - mean).pow(2)).sum(dim=1) / count.clamp(min=1)

    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    pairs = mask.unsqueeze(2) & mask.unsqueeze(1) & ~eye
    margin = F.relu(1 - (mean.unsqueeze(2) - mean.unsqueeze(1)).abs())
    push = torch.where(pairs, margin, 0.0).sum(dim=(1, 2)) / (count * (count - 1)).clamp(min=1)
    if num_images is None:
        num_images = count.gt(0).sum()
    return _normalised(pull.sum(), num_images), _normalised(push.sum(), num_images)
