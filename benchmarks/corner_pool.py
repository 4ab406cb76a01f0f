"""Forward + backward time of corner pooling, the repo's ``corner_pool`` against the known approaches.

    PYTHONPATH=src python benchmarks/corner_pool.py [--batch 2 --channels 128 --height 128 --width 128 --threads 1]

Implementations, each timed for all four directions:

- ``corner_pool``: the repo's (``keypointdet.models.corner_pool``).
- ``sequential scan``: a Python loop of ``torch.maximum`` over the rows or columns, as in the
  official CornerNet C++ layer, differentiated by autograd.
- ``flip + cummax + flip``: ``torch.cummax`` and its built-in backward; ``bottom``/``right``
  need no flips, so they run ``cummax`` alone.
- ``floor``: one tensor copy per pass (``x.clone()`` forward, gradient clone backward), the
  least any out-of-place op that reads its input and writes a full output can cost.

All implementations are checked to agree before timing. Each repeat runs every implementation
once per direction, interleaved, so machine noise spreads evenly; the table gives the median and
the ratio to the floor (pooled over directions). ``--no-trim`` stops glibc from returning freed
memory to the OS: page faults on re-allocated 16-32 MiB buffers otherwise add several ms to any
implementation, depending on what ran before it.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from keypointdet.models.corner_pool import corner_pool

DIRECTIONS = ("top", "left", "bottom", "right")
# direction -> (dim of [B, C, H, W], whether the max runs over k >= i)
AXES = {"top": (2, True), "left": (3, True), "bottom": (2, False), "right": (3, False)}


def sequential_scan(x: Tensor, direction: str) -> Tensor:
    """Running maximum as a Python loop of ``torch.maximum`` over ``[B, C, W]`` or ``[B, C, H]`` slices."""
    dim, reverse = AXES[direction]
    slices = list(x.unbind(dim))
    order = range(len(slices) - 1, -1, -1) if reverse else range(len(slices))
    for prev, i in itertools.pairwise(order):
        slices[i] = torch.maximum(slices[i], slices[prev])
    return torch.stack(slices, dim)


def flip_cummax(x: Tensor, direction: str) -> Tensor:
    """``torch.cummax`` along the pooled axis, on the flipped tensor where the max runs over k >= i."""
    dim, reverse = AXES[direction]
    if reverse:
        return x.flip(dim).cummax(dim).values.flip(dim)
    return x.cummax(dim).values


class _Copy(torch.autograd.Function):
    """``x.clone()`` forward, ``grad.clone()`` backward: one full copy per pass."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad.clone()


def floor(x: Tensor, direction: str) -> Tensor:
    """The cost floor: a copy forward and a copy backward (``direction`` is ignored)."""
    return _Copy.apply(x)


IMPLEMENTATIONS: dict[str, Callable[[Tensor, str], Tensor]] = {
    "corner_pool (repo)": corner_pool,
    "sequential scan": sequential_scan,
    "flip + cummax + flip": flip_cummax,
    "floor (1 copy per pass)": floor,
}


def check_agreement(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> None:
    """Forward values must be identical in the benchmark dtype; gradients must match in float64.

    Gradients are compared on tie-free inputs: on ties each implementation may credit a different
    (equally valid) argmax.
    """
    x = torch.randn(shape, dtype=dtype, device=device)
    for direction in DIRECTIONS:
        ref = flip_cummax(x, direction)
        for name, fn in IMPLEMENTATIONS.items():
            if fn is not floor and not torch.equal(fn(x, direction), ref):
                raise AssertionError(f"{name} disagrees with cummax on the {direction} forward")
    _, _, height, width = shape
    x64 = torch.randperm(height * width, device=device).to(torch.float64).view(1, 1, height, width)
    x64 = x64.expand(2, 2, height, width).clone().requires_grad_()
    grad = torch.randn_like(x64)
    for direction in DIRECTIONS:
        (ref,) = torch.autograd.grad(flip_cummax(x64, direction), x64, grad)
        for name, fn in IMPLEMENTATIONS.items():
            (got,) = torch.autograd.grad(fn(x64, direction), x64, grad)
            if fn is not floor and not torch.allclose(got, ref):
                raise AssertionError(f"{name} disagrees with cummax on the {direction} gradient")


def time_once(fn: Callable[[Tensor, str], Tensor], x: Tensor, grad: Tensor, direction: str) -> float:
    """Seconds for one forward and one backward pass."""
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    torch.autograd.grad(fn(x, direction), x, grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per implementation and direction")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported")
    parser.add_argument(
        "--no-trim",
        action="store_true",
        help="glibc: keep freed memory in the process, so that re-allocating a big buffer does not page-fault "
        "(otherwise often several ms per 16 MiB buffer on a VM, and a large part of the noise)",
    )
    args = parser.parse_args()
    if args.no_trim:
        libc = ctypes.CDLL("libc.so.6")
        # M_TRIM_THRESHOLD (-1): never give the heap top back; M_MMAP_THRESHOLD (-3): big buffers from the heap.
        if not (libc.mallopt(-1, 2**31 - 1) and libc.mallopt(-3, 2**30)):
            raise RuntimeError("mallopt failed")
    load_before = os.getloadavg()[0]  # other processes on the machine skew every number

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shape = (args.batch, args.channels, args.height, args.width)
    check_agreement(shape, dtype, device)

    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    for _ in range(args.warmup):
        for fn in IMPLEMENTATIONS.values():
            for direction in DIRECTIONS:
                time_once(fn, x, grad, direction)
    times: dict[tuple[str, str], list[float]] = {(n, d): [] for n in IMPLEMENTATIONS for d in DIRECTIONS}
    for _ in range(args.repeats):
        for name, fn in IMPLEMENTATIONS.items():
            for direction in DIRECTIONS:
                times[name, direction].append(time_once(fn, x, grad, direction))
    median_ms = {key: 1e3 * statistics.median(values) for key, values in times.items()}
    # The floor does not depend on the direction: pool its runs for a steadier reference.
    floor_ms = 1e3 * statistics.median(t for d in DIRECTIONS for t in times["floor (1 copy per pass)", d])

    print(
        f"corner pooling, forward + backward, [B, C, H, W] = {list(shape)}, {args.dtype}, {device}, "
        f"{args.threads} thread(s), median of {args.repeats}: ms (ratio to the floor, {floor_ms:.2f} ms); "
        f"1-min load average before the run: {load_before:.2f}{', no trim' if args.no_trim else ''}\n"
    )
    print("| implementation | " + " | ".join(DIRECTIONS) + " |")
    print("|---|" + "---:|" * len(DIRECTIONS))
    for name in IMPLEMENTATIONS:
        cells = [f"{median_ms[name, d]:.2f} ({median_ms[name, d] / floor_ms:.1f}x)" for d in DIRECTIONS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
