"""corner_pool against a naive definition, and the CornerPooling module."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import keypointdet.models.corner_pool as corner_pool_module
from keypointdet.models.corner_pool import CornerPooling, corner_pool

DIRECTIONS = ("top", "left", "bottom", "right")
# H != W, a single row, a single column, a single pixel, and a wide one.
SHAPES = [(2, 3, 7, 5), (1, 2, 1, 6), (1, 2, 6, 1), (2, 1, 1, 1), (1, 2, 4, 17)]


def naive_corner_pool(x: Tensor, direction: str) -> Tensor:
    """The definition as a loop over ``k``: ``x[k]`` enters the max of every output whose range holds ``k``."""
    _, _, height, width = x.shape
    vertical = direction in ("top", "bottom")
    size = height if vertical else width
    position = torch.arange(size).view(-1, 1) if vertical else torch.arange(size)  # i (rows) or j (columns)
    out = torch.full_like(x, float("-inf"))
    for k in range(size):
        x_k = x[:, :, k : k + 1, :] if vertical else x[:, :, :, k : k + 1]
        # top/left: out[i] = max over k >= i, so x[k] reaches i <= k; bottom/right the other way.
        covered = position <= k if direction in ("top", "left") else position >= k
        out = torch.where(covered, torch.maximum(out, x_k), out)
    return out


def distinct_values(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
    """A random tensor without ties, so the argmax, hence the gradient, is unique."""
    numel = torch.Size(shape).numel()
    return (torch.randperm(numel, dtype=torch.float64) - numel / 2).div(4).view(shape).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_matches_naive_definition(shape: tuple[int, int, int, int], direction: str) -> None:
    x = torch.randn(shape)
    torch.testing.assert_close(corner_pool(x, direction), naive_corner_pool(x, direction), rtol=0, atol=0)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gradient_matches_naive_definition(direction: str) -> None:
    for shape in SHAPES:
        x = distinct_values(shape).requires_grad_()
        grad_out = torch.randn(shape, dtype=torch.float64)
        (expected,) = torch.autograd.grad(naive_corner_pool(x, direction), x, grad_out)
        (got,) = torch.autograd.grad(corner_pool(x, direction), x, grad_out)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gradcheck(direction: str) -> None:
    x = distinct_values((2, 2, 5, 4)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: corner_pool(t, direction), (x,))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_any_memory_layout(direction: str) -> None:
    """channels-last, sliced and transposed inputs, and an expanded incoming gradient."""
    base = distinct_values((2, 3, 9, 8)).requires_grad_()
    for x in (base.contiguous(memory_format=torch.channels_last), base[:, :, 1::2, :7], base.transpose(2, 3)):
        (expected,) = torch.autograd.grad(naive_corner_pool(x, direction).sum(), base)
        out = corner_pool(x, direction)
        torch.testing.assert_close(out, naive_corner_pool(x, direction), rtol=0, atol=0)
        (got,) = torch.autograd.grad(out.sum(), base)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("direction", ["left", "right"])
def test_rows_in_several_chunks(direction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit-stride path in chunks of 4 rows (the last one short), with a short last block."""
    monkeypatch.setattr(corner_pool_module, "_CHUNK_BYTES", 4 * 37 * 8)
    x = distinct_values((1, 2, 5, 37)).requires_grad_()
    grad_out = torch.randn(x.shape, dtype=torch.float64)
    out = corner_pool(x, direction)
    torch.testing.assert_close(out, naive_corner_pool(x, direction), rtol=0, atol=0)
    (expected,) = torch.autograd.grad(naive_corner_pool(x, direction), x, grad_out)
    (got,) = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_half_precision(dtype: torch.dtype, direction: str) -> None:
    # 7 * 5 * 6 = 210 distinct multiples of 1/4 are exact in both dtypes.
    x = distinct_values((2, 3, 7, 5), dtype).requires_grad_()
    out = corner_pool(x, direction)
    assert out.dtype == dtype
    torch.testing.assert_close(out, naive_corner_pool(x, direction), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (expected,) = torch.autograd.grad(naive_corner_pool(x, direction).sum(), x)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("direction", ["right", "bottom"])
def test_ties_credit_the_farthest_element(direction: str) -> None:
    """[1, 3, 3, 2] pools to [1, 3, 3, 3]: the first 3, reached first by the scan, takes all three."""
    values = torch.tensor([1.0, 3.0, 3.0, 2.0])
    x = values.view(1, 1, 1, 4) if direction == "right" else values.view(1, 1, 4, 1)
    x.requires_grad_()
    corner_pool(x, direction).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 3.0, 0.0, 0.0]


def test_input_is_not_modified() -> None:
    # H == 1 makes the transposed working copy look contiguous: it must still be a copy.
    x = torch.randn(1, 2, 1, 6)
    before = x.clone()
    corner_pool(x, "left")
    assert torch.equal(x, before)


def test_empty_input() -> None:
    x = torch.randn(0, 2, 3, 4, requires_grad=True)
    out = corner_pool(x, "top")
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="direction"):
        corner_pool(torch.zeros(1, 1, 2, 2), "up")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        corner_pool(torch.zeros(1, 2, 2), "top")
    with pytest.raises(ValueError, match="direction"):
        CornerPooling(4, ("top", "diagonal"))


@pytest.mark.parametrize("directions", [("top", "left"), ("bottom", "right")])
def test_corner_pooling_module(directions: tuple[str, str]) -> None:
    module = CornerPooling(8, directions, pool_channels=4)
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.parameters())


def test_corner_pooling_under_autocast() -> None:
    module = CornerPooling(8, ("top", "left"), pool_channels=4)
    x = torch.randn(1, 8, 6, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    out.float().sum().backward()
    assert all(p.grad is not None for p in module.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_cuda_matches_cpu(direction: str) -> None:
    x = distinct_values((2, 3, 7, 5)).float()
    grad_out = torch.randn(x.shape)
    outputs, grads = [], []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        out = corner_pool(xd, direction)
        outputs.append(out.cpu())
        grads.append(torch.autograd.grad(out, xd, grad_out.to(device))[0].cpu())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("direction", ["top", "left", "bottom", "right"])
def test_traced_corner_pool_equals_eager_at_other_sizes(direction: str) -> None:
    # torch.jit.trace records the export path (a fixed number of doubling steps), traced at one size
    traced = torch.jit.trace(lambda x: corner_pool(x, direction), torch.randn(1, 2, 5, 7), check_trace=False)
    for shape in [(2, 3, 1, 9), (1, 2, 33, 40), (2, 1, 70, 3)]:
        x = torch.randint(-4, 5, shape).float()  # ties everywhere
        torch.testing.assert_close(traced(x), corner_pool(x, direction), rtol=0, atol=0)
