"""Independent checks of ``keypointdet.losses`` against float64 formulas and naive python loops."""

from __future__ import annotations

import math

import pytest
import torch

from keypointdet.losses import focal_loss, gather_at, regression_loss

# --------------------------------------------------------------------------- naive helpers


def log_sigmoid(x: float) -> float:
    """Stable float64 log(sigmoid(x)) for any finite x."""
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def naive_focal(logits: torch.Tensor, target: torch.Tensor, alpha=2.0, beta=4.0, num_positives=None) -> float:
    """-(1/N) [sum_{y==1} (1-p)^a log p + sum_{y<1} (1-y)^b p^a log(1-p)], one element at a time."""
    total, positives = 0.0, 0
    for x, y in zip(logits.double().flatten().tolist(), target.double().flatten().tolist()):
        log_p, log_1mp = log_sigmoid(x), log_sigmoid(-x)
        if y == 1:
            total += math.exp(alpha * log_1mp) * log_p
            positives += 1
        else:
            total += (1 - y) ** beta * math.exp(alpha * log_p) * log_1mp
    n = positives if num_positives is None else float(num_positives)
    return -total if n == 0 else -total / n


def float64_focal(logits: torch.Tensor, target: torch.Tensor, alpha=2.0, beta=4.0) -> torch.Tensor:
    """Straight transcription of the formula in float64 (for autograd reference gradients)."""
    p = torch.sigmoid(logits)
    positive = target == 1
    pos = ((1 - p) ** alpha * torch.log(p))[positive].sum()
    neg = ((1 - target) ** beta * p**alpha * torch.log(1 - p))[~positive].sum()
    return -(pos + neg) / positive.sum().clamp(min=1)


def random_target(generator: torch.Generator, shape, num_ones: int) -> torch.Tensor:
    """Values in [0, 1) with ``num_ones`` exact 1s at random positions."""
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    flat = target.view(-1)
    flat[torch.randperm(flat.numel(), generator=generator)[:num_ones]] = 1.0
    return target


def naive_gather(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    batch, channels, _, width = feature.shape
    out = torch.zeros(batch, index.shape[1], channels, dtype=feature.dtype)
    for b in range(batch):
        for m in range(index.shape[1]):
            y, x = divmod(int(index[b, m]), width)
            for c in range(channels):
                out[b, m, c] = feature[b, c, y, x]
    return out


def naive_regression(prediction, index, mask, target, kind="l1", num_objects=None) -> float:
    width = prediction.shape[-1]
    total = 0.0
    for b in range(index.shape[0]):
        for m in range(index.shape[1]):
            if not bool(mask[b, m]):
                continue
            y, x = divmod(int(index[b, m]), width)
            for d in range(prediction.shape[1]):
                diff = abs(float(prediction[b, d, y, x]) - float(target[b, m, d]))
                total += diff if kind == "l1" else (0.5 * diff * diff if diff < 1 else diff - 0.5)
    n = int(mask.sum()) if num_objects is None else float(num_objects)
    return 0.0 if n == 0 else total / n


def regression_inputs(seed: int, batch=2, dims=2, height=6, width=9, max_objects=7):
    g = torch.Generator().manual_seed(seed)
    prediction = torch.randn(batch, dims, height, width, generator=g) * 2
    index = torch.randint(0, height * width, (batch, max_objects), generator=g)
    mask = torch.rand(batch, max_objects, generator=g) < 0.6
    mask[0, 0] = True
    target = torch.randn(batch, max_objects, dims, generator=g) * 2  # padded slots hold garbage on purpose
    return prediction, index, mask, target


# --------------------------------------------------------------------------- focal_loss


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 4.0), (1.0, 2.0), (0.0, 3.0), (3.0, 0.5)])
def test_focal_loss_matches_naive_float64_formula(alpha: float, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g) * 3
    target = random_target(g, (2, 3, 8, 8), num_ones=11).float()
    loss = focal_loss(logits, target, alpha=alpha, beta=beta)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert float(loss) == pytest.approx(naive_focal(logits, target, alpha, beta), rel=1e-5)


def test_focal_loss_without_positives_is_the_raw_sum() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 6, 6, generator=g)
    target = torch.rand(1, 2, 6, 6, generator=g) * 0.99
    expected = naive_focal(logits, target)  # N == 0 -> raw sum
    assert float(focal_loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    assert float(focal_loss(logits, target, num_positives=0)) == pytest.approx(expected, rel=1e-5)
    assert expected > 0


@pytest.mark.parametrize("num_positives", [3, 7.5, torch.tensor(40.0), torch.tensor(2)])
def test_focal_loss_custom_num_positives_is_the_normaliser(num_positives) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 5, 7, generator=g) * 2
    target = random_target(g, (2, 2, 5, 7), num_ones=5).float()
    expected = naive_focal(logits, target, num_positives=num_positives)
    assert float(focal_loss(logits, target, num_positives=num_positives)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_fractional_num_positives_below_one_is_still_the_normaliser() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 1, 4, 4, generator=g)
    target = random_target(g, (1, 1, 4, 4), num_ones=1).float()
    expected = naive_focal(logits, target, num_positives=0.25)
    assert float(focal_loss(logits, target, num_positives=0.25)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_gradient_matches_float64_autograd() -> None:
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    target = random_target(g, (2, 2, 6, 6), num_ones=6)
    float64_focal(logits, target).backward()
    reference = logits.grad.clone()
    ours = logits.detach().float().requires_grad_()
    focal_loss(ours, target.float()).backward()
    torch.testing.assert_close(ours.grad.double(), reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_focal_loss_and_gradients_finite_at_extreme_logits(dtype: torch.dtype) -> None:
    extremes = torch.tensor([1e4, -1e4, 100.0, -100.0, 0.0])
    # every extreme logit against a positive, a plain negative, and a near-centre negative
    logits = extremes.repeat_interleave(3).reshape(1, 1, 5, 3).to(dtype).requires_grad_()
    target = torch.tensor([1.0, 0.0, 0.5]).repeat(5).reshape(1, 1, 5, 3).to(dtype)
    loss = focal_loss(logits, target)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad).all()
    # and the value is the exact formula of the (dtype-rounded) inputs
    assert float(loss.detach()) == pytest.approx(naive_focal(logits.detach().float(), target.float()), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focal_loss_low_precision_inputs_return_float32_matching_formula(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 3, 6, 6, generator=g) * 3).to(dtype)
    target = random_target(g, (2, 3, 6, 6), num_ones=4).to(dtype)
    loss = focal_loss(logits, target)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(naive_focal(logits.float(), target.float()), rel=1e-4)


# --------------------------------------------------------------------------- gather_at / regression_loss


def test_gather_at_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(6)
    feature = torch.randn(3, 4, 5, 7, generator=g)
    index = torch.randint(0, 35, (3, 6), generator=g)
    index[0, 0], index[1, 0], index[2, :2] = 0, 34, 17  # extremes and a repeated position
    out = gather_at(feature, index)
    assert out.shape == (3, 6, 4)
    torch.testing.assert_close(out, naive_gather(feature, index), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["l1", "smooth_l1"])
@pytest.mark.parametrize("num_objects", [None, 4, 2.5, torch.tensor(9.0)])
def test_regression_loss_matches_naive_loop(kind: str, num_objects) -> None:
    prediction, index, mask, target = regression_inputs(seed=7)
    loss = regression_loss(prediction, index, mask, target, kind=kind, num_objects=num_objects)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    expected = naive_regression(prediction, index, mask, target, kind, num_objects)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_regression_loss_fractional_num_objects_below_one_is_still_the_normaliser() -> None:
    prediction, index, mask, target = regression_inputs(seed=11)
    expected = naive_regression(prediction, index, mask, target, "l1", 0.5)
    assert float(regression_loss(prediction, index, mask, target, num_objects=0.5)) == pytest.approx(expected, rel=1e-5)


def test_regression_loss_smooth_l1_uses_beta_one() -> None:
    # one object, one coordinate, difference 0.5 -> 0.125 (quadratic part); 3.0 -> 2.5 (linear part)
    prediction = torch.zeros(1, 2, 2, 2)
    index = torch.tensor([[3]])
    mask = torch.tensor([[True]])
    target = torch.tensor([[[0.5, -3.0]]])
    loss = regression_loss(prediction, index, mask, target, kind="smooth_l1")
    assert float(loss) == pytest.approx(0.5 * 0.5**2 + (3.0 - 0.5))


def test_regression_loss_is_zero_without_objects_and_keeps_a_gradient_path() -> None:
    prediction, index, _, target = regression_inputs(seed=8)
    prediction.requires_grad_()
    mask = torch.zeros(index.shape, dtype=torch.bool)
    loss = regression_loss(prediction, index, mask, target)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert prediction.grad is not None and float(prediction.grad.abs().sum()) == 0.0


def test_regression_loss_gradient_only_reaches_masked_object_positions() -> None:
    prediction, index, mask, target = regression_inputs(seed=9)
    prediction.requires_grad_()
    regression_loss(prediction, index, mask, target).backward()
    width = prediction.shape[-1]
    touched = torch.zeros(prediction.shape[0], prediction.shape[2], width, dtype=torch.bool)
    for b in range(index.shape[0]):
        for m in range(index.shape[1]):
            if mask[b, m]:
                touched[b, int(index[b, m]) // width, int(index[b, m]) % width] = True
    reached = prediction.grad.abs().sum(1) > 0
    assert torch.equal(reached, touched)


def test_regression_loss_rejects_unknown_kind() -> None:
    prediction, index, mask, target = regression_inputs(seed=10)
    with pytest.raises(ValueError):
        regression_loss(prediction, index, mask, target, kind="l2")
