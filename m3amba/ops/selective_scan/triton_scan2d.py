"""Triton 2-D cross-scan: the ``"triton"`` backend's path for :func:`.scan2d.selective_scan_2d`.

SS2D scans a channels-last map in four orders. Instead of four reordered copies of the map
(``(B, 4, Di, L)``), the kernels read the map itself through a ``(4, L)`` table of token positions
(:class:`._layout.SeqLayout` with ``perm``):

* forward: each direction writes its outputs at its tokens, into a ``(B, 4, L, Di)`` buffer
  whose sum over directions is the merged map (a contiguous reduction that ``torch.compile``
  fuses into the LayerNorm after it);
* backward: every direction reads the merged map's gradient directly (no per-direction copy),
  and the four directions' ``du`` (``(B, 4, L, Di)``) are summed the same way.

``delta`` comes in per direction and token-major, ``(B, 4, L, Di)``: the low-rank Δ projection is
a per-token map, so it is computed before any reordering. ``B`` and ``C`` (``N`` rows per
direction, small) stay in scan order. The forward kernel is :mod:`.triton_scan`'s, the backward
the lane kernel of :mod:`.triton_bwd_lane`, both addressing memory through the layout.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from ._layout import SeqLayout
from .triton_bwd_lane import LANE_BWD_DEFAULTS, bwd_lane, lane_bwd_supported
from .triton_scan import CHUNK_DEFAULT, FWD_DEFAULTS, HAS_TRITON, _alloc, _fwd_impl

__all__ = ["scan2d_triton_supported", "selective_scan_2d_triton"]


def scan2d_triton_supported(feats: Tensor, directions: int) -> bool:
    """Whether the fused kernels serve a 2-D scan of ``feats`` (``(B, H, W, Di)``)."""
    di = feats.shape[-1]
    return (
        HAS_TRITON
        and feats.is_cuda
        and feats.dtype != torch.float64
        and lane_bwd_supported(directions * di, directions, directions, False, CHUNK_DEFAULT)
    )


def _seq_major(x: Tensor, length: int, di: int) -> Tensor:
    # (B, ..., Di) map as (B, L, Di) with unit channel stride and step stride Di (copied only if needed)
    x = x.reshape(x.shape[0], length, di)
    return x if x.stride(2) == 1 and x.stride(1) == di else x.contiguous()


def _layout(u: Tensor, dts: Tensor, dy: Optional[Tensor], perm: Tensor) -> SeqLayout:
    di = u.shape[-1]
    sy = (dy.stride(0), 0, 1) if dy is not None else (0, 0, 1)
    return SeqLayout(di, (u.stride(0), 0, 1), (dts.stride(0), dts.stride(1), 1), sy, di, perm)


@torch.library.custom_op("m3amba::selective_scan_2d_fwd", mutates_args=())
def scan2d_fwd_op(
    feats: Tensor, dts: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, D: Optional[Tensor],
    delta_bias: Optional[Tensor], perm: Tensor, delta_softplus: bool, chunk: int,
) -> Tuple[Tensor, Tensor]:
    """Forward kernel over ``feats`` ``(B, L, Di)``: ``(y per direction (B, 4, L, Di), saved chunk states)``."""
    length, di = feats.shape[1], feats.shape[2]
    u = _seq_major(feats, length, di)
    dts = dts.contiguous()
    f = FWD_DEFAULTS
    y4, _h_last, hs = _fwd_impl(u, dts, A, Bs, Cs, D, None, delta_bias, delta_softplus, chunk,
                                f["block_d"], f["num_warps"], f["j"], f["v"], f["maxnreg"],
                                layout=_layout(u, dts, None, perm))
    return y4, hs


@scan2d_fwd_op.register_fake
def _(feats, dts, A, Bs, Cs, D, delta_bias, perm, delta_softplus, chunk):
    batch, length, _ = feats.shape
    nc = -(-length // chunk)
    return (dts.new_empty(dts.shape, dtype=feats.dtype),
            feats.new_empty((batch, nc, A.shape[1], A.shape[0]), dtype=torch.float32))


@torch.library.custom_op("m3amba::selective_scan_2d_bwd", mutates_args=())
def scan2d_bwd_op(
    dy: Tensor, feats: Tensor, dts: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, D: Optional[Tensor],
    delta_bias: Optional[Tensor], perm: Tensor, saved_states: Tensor, delta_softplus: bool, chunk: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward (lane kernel): ``(du per direction (B, 4, L, Di), ddelta, dA, dB, dC, dD, ddelta_bias)``
    from the merged output's gradient ``dy`` ``(B, L, Di)``; empty tensors for absent inputs."""
    batch, length, di = feats.shape
    u = _seq_major(feats, length, di)
    dy = _seq_major(dy, length, di)
    dts = dts.contiguous()
    dh_last = u.new_zeros((batch, A.shape[0], A.shape[1]), dtype=torch.float32)  # no gradient for h_L
    du4, ddl, dA, dB, dC, dD, dbias = bwd_lane(dy, dh_last, u, dts, A, Bs, Cs, D, delta_bias, saved_states,
                                               delta_softplus, chunk, _alloc, LANE_BWD_DEFAULTS["maxnreg"],
                                               layout=_layout(u, dts, dy, perm))
    # a fresh empty tensor each: a custom op's outputs must not alias one another
    return (du4, ddl, dA, dB, dC, dD if dD is not None else u.new_empty(0),
            dbias if dbias is not None else u.new_empty(0))


@scan2d_bwd_op.register_fake
def _(dy, feats, dts, A, Bs, Cs, D, delta_bias, perm, saved_states, delta_softplus, chunk):
    def like(x):
        return feats.new_empty(0) if x is None else torch.empty_like(x, memory_format=torch.contiguous_format)

    return (dts.new_empty(dts.shape, dtype=feats.dtype), like(dts), like(A), like(Bs), like(Cs), like(D),
            like(delta_bias))


class SelectiveScan2dTritonFn(torch.autograd.Function):
    """Autograd of the two custom ops; returns the merged ``(B, L, Di)`` output."""

    @staticmethod
    def forward(ctx: Any, feats, dts, A, Bs, Cs, D, delta_bias, perm, delta_softplus: bool, chunk: int):
        y4, hs = torch.ops.m3amba.selective_scan_2d_fwd(feats, dts, A, Bs, Cs, D, delta_bias, perm,
                                                        delta_softplus, chunk)
        ctx.save_for_backward(feats, dts, A, Bs, Cs, D, delta_bias, perm, hs)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        return y4.sum(1)

    @staticmethod
    def backward(ctx: Any, dy):
        feats, dts, A, Bs, Cs, D, delta_bias, perm, hs = ctx.saved_tensors
        du4, ddl, dA, dB, dC, dD, dbias = torch.ops.m3amba.selective_scan_2d_bwd(
            dy, feats, dts, A, Bs, Cs, D, delta_bias, perm, hs, ctx.delta_softplus, ctx.chunk)
        return (du4.sum(1), ddl, dA, dB, dC, dD if D is not None else None,
                dbias if delta_bias is not None else None, None, None, None)


def selective_scan_2d_triton(feats: Tensor, dts: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, D: Optional[Tensor],
                             delta_bias: Optional[Tensor], perm: Tensor, delta_softplus: bool,
                             chunk: int = CHUNK_DEFAULT) -> Tensor:
    """Merged four-direction scan of ``feats`` ``(B, H, W, Di)``; ``dts`` ``(B, 4, L, Di)`` token-major,
    ``perm`` the ``(4, L)`` int32 token of every direction's steps; returns ``(B, H, W, Di)``."""
    batch, height, width, di = feats.shape
    y = SelectiveScan2dTritonFn.apply(feats.reshape(batch, height * width, di), dts, A, Bs, Cs, D, delta_bias,
                                      perm, bool(delta_softplus), int(chunk))
    return y.reshape(batch, height, width, di)
