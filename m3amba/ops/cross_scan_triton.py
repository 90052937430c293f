"""Triton cross-scan and cross-merge between a channels-last map and the scan layout.

SS2D's features are channels-last, (B, H, W, C), while the selective scan reads and writes
(B, 4, C, L) sequences with time contiguous. Between the two sits a transpose as well as the
four reorderings. Written with torch ops, that transpose ends up inside whatever inductor fuses
it with: the depthwise conv's output, or the LayerNorm that follows the merge. Such kernels read
one layout across the other, and the LayerNorm's backward pays for it most.

Each kernel here moves one (BLOCK_C, BLOCK_H, BLOCK_W) tile between the layouts and uses a
16 × 16 spatial tile. Each direction's time steps are then runs of 16 consecutive elements: rows
for the row-major orders and columns for the column-major ones. Triton converts between the
load and store layouts on chip.

* :func:`cross_scan_cl`: (B, H, W, C) map (any strides) → (B, 4, C, L), contiguous;
* :func:`cross_merge_cl`: (B, 4, C, L) → (B, H, W, C), contiguous. It sums the four
  directions in fp32 and rounds once.

Each is the other's adjoint. They are registered as ``torch.library`` custom ops, with fake
implementations and autograd formulas, so ``torch.compile`` keeps them as opaque nodes. The torch
versions in :mod:`m3amba.ops.cross_scan` compute the same maps and are the reference that
``tests/test_cross_scan_triton.py`` compares against.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["HAS_TRITON", "cross_scan_cl", "cross_merge_cl", "launch_scan_cl", "launch_merge_cl"]

try:  # Triton is optional: without it the torch versions are used
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

_BLOCK_HW = 16  # spatial tile edge: 16 bf16 time steps = one 32-byte sector per run
_BLOCK_C = 32
_NUM_WARPS = 4

if HAS_TRITON:

    # Index maps. A tile covers pixels h0 + i, w0 + j (i < BH, j < BW). In the reversed orders, time
    # runs backwards along the tile's rows (direction 2) or columns (direction 3). Those tiles are
    # flipped in registers (tl.flip), so that every access goes to ascending addresses, which Triton
    # can vectorise and coalesce; descending ones would be scalar.

    @triton.jit
    def _tile_coords(H, W, BH: tl.constexpr, BW: tl.constexpr):
        n_wt = tl.cdiv(W, BW)
        h0 = (tl.program_id(0) // n_wt) * BH
        w0 = (tl.program_id(0) % n_wt) * BW
        i = tl.arange(0, BH)[None, :, None]
        j = tl.arange(0, BW)[None, None, :]
        return h0, w0, i, j

    @triton.jit
    def _scan_cl_kernel(x_ptr, out_ptr, C, H, W, sxb, sxh, sxw, sxc,
                        BC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        # grid: (spatial tiles, channel blocks, batch)
        h0, w0, i, j = _tile_coords(H, W, BH, BW)
        c = tl.program_id(1) * BC + tl.arange(0, BC)[:, None, None]
        b = tl.program_id(2).to(tl.int64)
        h, w = h0 + i, w0 + j
        mc = c < C
        mask = mc & (h < H) & (w < W)
        tile = tl.load(x_ptr + b * sxb + h * sxh + w * sxw + c * sxc, mask=mask)
        L = H * W
        CL = C * L
        base = out_ptr + b * 4 * CL + c.to(tl.int64) * L
        tl.store(base + (h * W + w), tile, mask=mask)  # row-major
        tl.store(base + CL + (w * H + h), tile, mask=mask)  # column-major
        # reversed row-major: local column j holds pixel w0 + BW - 1 - j
        wr = w0 + BW - 1 - j
        tl.store(base + 2 * CL + (L - 1 - h * W - wr), tl.flip(tile, 2), mask=mc & (h < H) & (wr < W))
        # reversed column-major: local row i holds pixel h0 + BH - 1 - i
        hr = h0 + BH - 1 - i
        tl.store(base + 3 * CL + (L - 1 - w * H - hr), tl.flip(tile, 1), mask=mc & (hr < H) & (w < W))

    @triton.jit
    def _merge_cl_kernel(ys_ptr, out_ptr, C, H, W, syb, syk, syc,
                         BC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        # ys: (B, 4, C, L) with unit stride along L; out: contiguous (B, H, W, C)
        h0, w0, i, j = _tile_coords(H, W, BH, BW)
        c = tl.program_id(1) * BC + tl.arange(0, BC)[:, None, None]
        b = tl.program_id(2).to(tl.int64)
        h, w = h0 + i, w0 + j
        mc = c < C
        mask = mc & (h < H) & (w < W)
        L = H * W
        base = ys_ptr + b * syb + c.to(tl.int64) * syc
        acc = tl.load(base + (h * W + w), mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(base + syk + (w * H + h), mask=mask, other=0.0).to(tl.float32)
        wr = w0 + BW - 1 - j
        rev_rows = tl.load(base + 2 * syk + (L - 1 - h * W - wr), mask=mc & (h < H) & (wr < W), other=0.0)
        acc += tl.flip(rev_rows.to(tl.float32), 2)
        hr = h0 + BH - 1 - i
        rev_cols = tl.load(base + 3 * syk + (L - 1 - w * H - hr), mask=mc & (hr < H) & (w < W), other=0.0)
        acc += tl.flip(rev_cols.to(tl.float32), 1)
        out = out_ptr + b * H * W * C + (h * W + w) * C + c
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _grid(b: int, c: int, h: int, w: int):
    return (triton.cdiv(h, _BLOCK_HW) * triton.cdiv(w, _BLOCK_HW), triton.cdiv(c, _BLOCK_C), b)


def launch_scan_cl(x: Tensor) -> Tensor:
    """Kernel launch behind :func:`cross_scan_cl` (no autograd); x is (B, H, W, C), any strides."""
    b, h, w, c = x.shape
    out = x.new_empty(b, 4, c, h * w)
    if out.numel():
        _scan_cl_kernel[_grid(b, c, h, w)](x, out, c, h, w, *x.stride(), BC=_BLOCK_C, BH=_BLOCK_HW,
                                           BW=_BLOCK_HW, num_warps=_NUM_WARPS)
    return out


def launch_merge_cl(ys: Tensor, height: int, width: int) -> Tensor:
    """Kernel launch behind :func:`cross_merge_cl` (no autograd); ys is (B, 4, C, H*W)."""
    if ys.stride(-1) != 1:
        ys = ys.contiguous()
    b, _, c, _ = ys.shape
    out = ys.new_empty(b, height, width, c)
    if out.numel():
        _merge_cl_kernel[_grid(b, c, height, width)](ys, out, c, height, width, ys.stride(0), ys.stride(1),
                                                     ys.stride(2), BC=_BLOCK_C, BH=_BLOCK_HW, BW=_BLOCK_HW,
                                                     num_warps=_NUM_WARPS)
    return out


@torch.library.custom_op("m3amba::cross_scan_cl", mutates_args=())
def _scan_op(x: Tensor) -> Tensor:
    return launch_scan_cl(x)


@_scan_op.register_fake
def _(x):
    b, h, w, c = x.shape
    return x.new_empty(b, 4, c, h * w)


@torch.library.custom_op("m3amba::cross_merge_cl", mutates_args=())
def _merge_op(ys: Tensor, height: int, width: int) -> Tensor:
    return launch_merge_cl(ys, height, width)


@_merge_op.register_fake
def _(ys, height, width):
    return ys.new_empty(ys.shape[0], height, width, ys.shape[2])


def _scan_setup(ctx, inputs, output):
    ctx.hw = inputs[0].shape[1:3]


def _scan_backward(ctx, grad):
    return _merge_op(grad, *ctx.hw)


def _merge_backward(ctx, grad):
    return _scan_op(grad), None, None


_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)
_merge_op.register_autograd(_merge_backward, setup_context=lambda ctx, inputs, output: None)


def cross_scan_cl(x: Tensor) -> Tensor:
    """(B, H, W, C) channels-last map → its four scan orders (B, 4, C, H*W), by the Triton kernel."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan_cl expects a (B, H, W, C) tensor, got shape {tuple(x.shape)}")
    return _scan_op(x)


def cross_merge_cl(ys: Tensor, height: int, width: int) -> Tensor:
    """Four per-direction sequences (B, 4, C, H*W) → their sum as a (B, H, W, C) map, by the Triton kernel."""
    if ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[-1] != height * width:
        raise ValueError(
            f"cross_merge_cl expects (B, 4, C, {height}*{width}) sequences, got shape {tuple(ys.shape)}"
        )
    return _merge_op(ys, height, width)
