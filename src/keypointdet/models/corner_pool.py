"""Corner pooling (CornerNet, Law & Deng 2018) in pure PyTorch: exact, no compiled extension.

``corner_pool`` is a running maximum along one spatial axis, as an ``autograd.Function`` whose
backward is also a scan: it carries the incoming gradient back to the element each maximum
came from. Which scan runs depends on the memory layout of the pooled axis:

- a strided axis (H of an NCHW tensor; H and W of a channels-last one): a sequential scan,
  one ``torch.maximum`` per row on whole, mostly contiguous slices, like the official C++
  layer;
- the unit-stride axis (W of an NCHW tensor): there a slice would hold one element per row
  (some 25x slower per op), so a blocked doubling scan runs on cache-sized chunks of rows.

Both backwards need only the output, where ``torch.cummax`` keeps an int64 index per element.
Under ``torch.export`` or ``torch.jit.trace`` (ONNX and TorchScript export) neither runs: their loops depend on the map size,
which an exported graph leaves free; a doubling scan with a fixed number of steps runs instead
(``_doubling_scan``: the same values, for maps of up to ``EXPORTED_MAX_LENGTH`` cells along the axis).
At CornerNet's sizes on CPU they beat ``flip + cummax + flip`` and an autograd-traced
sequential scan (``benchmarks/corner_pool.py``); ``right``, where cummax needs no flip, is the
closest race. On small maps (well under a million elements) the per-op overhead of these
Python loops dominates and cummax is faster.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from keypointdet.models.layers import conv_bn, conv_bn_relu

# direction -> (pooled dim of [B, C, H, W], whether the max runs over k >= i rather than k <= i)
_DIRECTIONS: dict[str, tuple[int, bool]] = {
    "top": (2, True),
    "left": (3, True),
    "bottom": (2, False),
    "right": (3, False),
}

# Longest pooled axis an exported graph handles exactly: 2^10 output cells, a 4096-pixel input at stride 4.
EXPORTED_MAX_LENGTH = 1 << 10

# Rows per chunk of the blocked scan: about 2 MiB of input, so that the ~5 passes of the
# forward and ~11 of the backward hit cache rather than DRAM (0.5 to 4 MiB measured on CPU).
_CHUNK_BYTES = 2 << 20


def _scan_order(length: int, reverse: bool) -> range:
    """Indices in the order the running maximum visits them (the first one is its own max)."""
    return range(length - 1, -1, -1) if reverse else range(length)


def _scan_slices(x: Tensor, dim: int, reverse: bool) -> Tensor:
    """Running maximum of ``x`` along ``dim``: one ``torch.maximum`` per slice."""
    order = _scan_order(x.shape[dim], reverse)
    y = torch.empty_like(x)
    # unbind makes all slice views in one call: a Python select per step costs as much as the op.
    xs, ys = x.unbind(dim), y.unbind(dim)
    ys[order[0]].copy_(xs[order[0]])
    for prev, i in itertools.pairwise(order):
        torch.maximum(xs[i], ys[prev], out=ys[i])
    return y


def _scan_slices_backward(grad_y: Tensor, y: Tensor, dim: int, reverse: bool) -> Tensor:
    """Gradient of ``_scan_slices``, from its output ``y`` alone.

    Walks the scan backwards with a carry ``c``: the gradient owed to slice ``i`` so far. Where
    ``y[i] == y[prev]`` the maximum was inherited, so the carry moves on to ``prev``; elsewhere
    ``x[i]`` was the maximum and takes it. Ties therefore credit the element the scan reached
    first (the farthest one), as the official layer does. Masks are 0/1 in ``y``'s dtype and
    applied with ``addcmul``: exact, and several times faster than ``torch.where``.
    """
    order = _scan_order(y.shape[dim], reverse)
    grad_x = torch.empty_like(y)
    gxs, gys, ys = grad_x.unbind(dim), grad_y.unbind(dim), y.unbind(dim)
    carry = gys[order[-1]].clone()
    inherited = torch.empty_like(carry)
    for i, prev in zip(reversed(order[1:]), reversed(order[:-1])):
        torch.eq(ys[i], ys[prev], out=inherited)
        # grad_x[i] = c * (1 - inherited), written as c - c * inherited to stay exact.
        torch.addcmul(carry, carry, inherited, value=-1, out=gxs[i])
        torch.addcmul(gys[prev], carry, inherited, out=carry)
    gxs[order[0]].copy_(carry)
    return grad_x


def _blocking(length: int) -> tuple[int, int]:
    """``(doubling steps a, block size 2^a)`` with ``2^a ~ sqrt(length)``: balances the ``a``
    full passes of the windowed doubling against the ``length / 2^a`` block steps."""
    steps = ((length - 1).bit_length() + 1) // 2
    return steps, 1 << steps


def _rows_per_chunk(rows: Tensor) -> int:
    """Rows per cache-sized chunk on CPU; everything at once on other devices."""
    if rows.device.type != "cpu":
        return max(1, rows.shape[0])
    return max(1, _CHUNK_BYTES // (rows.shape[1] * rows.element_size()))


def _span(t: Tensor, start: int, length: int, reverse: bool) -> Tensor:
    """``length`` columns of ``t [N, L]`` from ``start``, counted in scan order."""
    return t.narrow(1, t.shape[1] - start - length if reverse else start, length)


def _scan_rows(x: Tensor, reverse: bool) -> Tensor:
    """Running maximum along the rows of ``x [N, L]``, ``L >= 2``, with whole-chunk ops only.

    ``a`` doubling steps (``w = max(w, w shifted by 2^k)``) give each element the max of the
    ``2^a`` elements ending at it in scan order; then one op per block of ``2^a`` columns
    folds in the running max of the block before (``y = max(w, y shifted by 2^a)``).
    """
    length = x.shape[1]
    steps, block = _blocking(length)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = _rows_per_chunk(x)
    work = x.new_empty((min(rows, x.shape[0]), length))
    for r in range(0, x.shape[0], rows):
        cur, out = x[r : r + rows], y[r : r + rows]
        for k in range(steps):
            shift, head = 1 << k, length - (1 << k)
            # Alternate between the scratch chunk and y so that the last step lands in y.
            nxt = out if (steps - 1 - k) % 2 == 0 else work[: out.shape[0]]
            torch.maximum(
                _span(cur, shift, head, reverse), _span(cur, 0, head, reverse), out=_span(nxt, shift, head, reverse)
            )
            _span(nxt, 0, shift, reverse).copy_(_span(cur, 0, shift, reverse))
            cur = nxt
        for start in range(block, length, block):
            n = min(block, length - start)
            out_block = _span(out, start, n, reverse)
            torch.maximum(out_block, _span(out, start - block, n, reverse), out=out_block)
    return y


def _scan_rows_backward(grad_y: Tensor, y: Tensor, reverse: bool) -> Tensor:
    """Gradient of ``_scan_rows`` from its output ``y [N, L]``; same tie rule as the slices.

    In scan order the gradient reaching ``o`` flows on to ``o - 1`` while ``y`` stays equal, so
    ``s[o] = sum of g[j] over j >= o with y[j] == y[o]`` and ``grad_x[o] = s[o]`` where ``y``
    rose at ``o`` (0 elsewhere). ``y`` never decreases along the scan, so "the flow reaches
    ``o + w`` from ``o``" is just ``y[o + w] == y[o]``: the segmented sum doubles like the
    forward, ``v[o] += (y[o + w] == y[o]) * v[o + w]``, then steps by whole blocks.
    """
    length = y.shape[1]
    steps, block = _blocking(length)
    grad_x = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    rows = _rows_per_chunk(y)
    # flows[0] keeps the shift-1 flow, which also says where y rose; flows[1] the wider ones.
    flows = y.new_empty((2, min(rows, y.shape[0]), length))
    work = torch.empty_like(flows[0])
    for r in range(0, y.shape[0], rows):
        y_c, v, gx_c = y[r : r + rows], grad_y[r : r + rows], grad_x[r : r + rows]
        n = y_c.shape[0]
        for k in range(steps):
            shift, head = 1 << k, length - (1 << k)
            # Alternate between grad_x and the scratch chunk so that the last step lands in scratch.
            nxt = work[:n] if (steps - 1 - k) % 2 == 0 else gx_c
            flow_head = _span(flows[min(k, 1), :n], 0, head, reverse)
            torch.eq(_span(y_c, shift, head, reverse), _span(y_c, 0, head, reverse), out=flow_head)
            v_head = _span(v, 0, head, reverse)
            torch.addcmul(v_head, flow_head, _span(v, shift, head, reverse), out=_span(nxt, 0, head, reverse))
            _span(nxt, head, shift, reverse).copy_(_span(v, head, shift, reverse))  # nothing flows in
            v = nxt
        for start in range(block * ((length - 1) // block - 1), -1, -block):
            n_cols = min(block, length - start - block)
            flow_block, v_block = _span(flows[1, :n], start, n_cols, reverse), _span(v, start, n_cols, reverse)
            torch.eq(_span(y_c, start + block, n_cols, reverse), _span(y_c, start, n_cols, reverse), out=flow_block)
            torch.addcmul(v_block, flow_block, _span(v, start + block, n_cols, reverse), out=v_block)
        # grad_x[o] = s[o] - s[o] * (y[o] == y[o - 1]); the scan's first element keeps all of s.
        rest = length - 1
        v_rest, inherited = _span(v, 1, rest, reverse), _span(flows[0, :n], 0, rest, reverse)
        torch.addcmul(v_rest, v_rest, inherited, value=-1, out=_span(gx_c, 1, rest, reverse))
        _span(gx_c, 0, 1, reverse).copy_(_span(v, 0, 1, reverse))
    return grad_x


def _doubling_scan(x: Tensor, dim: int, reverse: bool) -> Tensor:
    """Running maximum of ``x`` along ``dim`` by ``log2(EXPORTED_MAX_LENGTH)`` doublings, whatever the length.

    Step ``k`` takes the maximum with ``x`` shifted by ``2^k`` in scan order (``-inf`` shifted in), so
    after it every element holds the maximum of the ``2^(k+1)`` elements ending at it. No loop depends
    on the size: the graph an export records is exact for any length up to ``EXPORTED_MAX_LENGTH``.
    """
    length = x.shape[dim]
    moved = x.movedim(dim, -1).contiguous()
    for step in range(EXPORTED_MAX_LENGTH.bit_length() - 1):
        shift = 1 << step
        if reverse:  # the element `shift` later in the map comes earlier in the scan
            shifted = F.pad(moved, (0, shift), value=float("-inf")).narrow(-1, shift, length)
        else:
            shifted = F.pad(moved, (shift, 0), value=float("-inf")).narrow(-1, 0, length)
        # Both operands contiguous: mixed strides would make the exporter guard on (and fix) the map's size.
        moved = torch.maximum(moved, shifted.contiguous())
    return moved.movedim(-1, dim).contiguous()


class _CornerPool(torch.autograd.Function):
    """Running maximum along ``dim`` of a 4D tensor, differentiable once."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, dim: int, reverse: bool) -> Tensor:
        ctx.dim, ctx.reverse = dim, reverse
        ctx.by_rows = x.stride(dim) == 1
        if ctx.by_rows:
            moved = x.movedim(dim, -1)
            y = _scan_rows(moved.reshape(-1, x.shape[dim]), reverse).view(moved.shape).movedim(-1, dim)
        else:
            y = _scan_slices(x, dim, reverse)
        ctx.save_for_backward(y)  # the backward needs only the output, not the input
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> tuple[Tensor, None, None]:
        (y,) = ctx.saved_tensors
        if not ctx.by_rows:
            return _scan_slices_backward(grad_y, y, ctx.dim, ctx.reverse), None, None
        length = y.shape[ctx.dim]
        moved = y.movedim(ctx.dim, -1)
        grad_rows = grad_y.movedim(ctx.dim, -1).reshape(-1, length)
        grad_x = _scan_rows_backward(grad_rows, moved.reshape(-1, length), ctx.reverse)
        return grad_x.view(moved.shape).movedim(-1, ctx.dim), None, None


def corner_pool(x: Tensor, direction: str) -> Tensor:
    """Corner pooling of ``x [B, C, H, W]`` in one direction; returns ``[B, C, H, W]``.

    - ``top``:    ``out[i, j] = max_{k >= i} x[k, j]`` (everything below, pooled upwards)
    - ``left``:   ``out[i, j] = max_{k >= j} x[i, k]`` (everything to the right)
    - ``bottom``: ``out[i, j] = max_{k <= i} x[k, j]``
    - ``right``:  ``out[i, j] = max_{k <= j} x[i, k]``

    Exact for any float dtype, on any device and under autocast (it only uses ops that keep
    the input dtype). Any strides work; NCHW and channels-last inputs keep their layout. The
    gradient of each output goes to its argmax; among equal values, to the one farthest from
    the output position, as in the official CornerNet layer. NaN propagates like
    ``torch.maximum``.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"corner_pool direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
    if x.dim() != 4:
        raise ValueError(f"corner_pool expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
    dim, reverse = _DIRECTIONS[direction]
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return _doubling_scan(x, dim, reverse)
    if x.shape[dim] == 1 or x.numel() == 0:
        return x.clone()
    return _CornerPool.apply(x, dim, reverse)


class CornerPooling(nn.Module):
    """CornerNet's corner pooling module (Fig. 7 of the paper).

    Two 3x3 conv-BN-ReLU branches (``channels -> pool_channels``) are pooled in one direction
    each and summed; a 3x3 conv-BN (``pool_channels -> channels``) is added to a 1x1 conv-BN
    shortcut of the input, then ReLU and a 3x3 conv-BN-ReLU. Top-left corners use
    ``("top", "left")``, bottom-right corners ``("bottom", "right")``.
    """

    def __init__(self, channels: int, directions: tuple[str, str], pool_channels: int = 128) -> None:
        super().__init__()
        for direction in directions:
            if direction not in _DIRECTIONS:
                raise ValueError(f"CornerPooling direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
        self.directions = tuple(directions)
        self.branch1 = conv_bn_relu(channels, pool_channels)
        self.branch2 = conv_bn_relu(channels, pool_channels)
        self.pooled = conv_bn(pool_channels, channels, 3)
        self.shortcut = conv_bn(channels, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.out = conv_bn_relu(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, channels, H, W] -> [B, channels, H, W]``."""
        pooled = corner_pool(self.branch1(x), self.directions[0]) + corner_pool(self.branch2(x), self.directions[1])
        return self.out(self.relu(self.pooled(pooled) + self.shortcut(x)))
