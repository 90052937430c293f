"""The SS2D core: a four-direction selective scan of a channels-last map, merged back onto the map.

:func:`selective_scan_2d` is what SS2D and Cross-SS2D call. Its definition is the composition

    xs  = cross_scan(feats)                                  # four orders, (B, 4, Di, L)
    dts = dt_weight[k] @ dt_low[k], read in direction k's order
    ys  = selective_scan_fn(xs, dts, A, Bs, Cs, D, delta_bias, softplus)
    y   = cross_merge(ys)                                    # back to (B, H, W, Di)

and every backend computes it that way, except ``"triton"`` on CUDA, which runs fused kernels
(:mod:`.triton_scan2d`) that read the map and write the merged output in place of the four
reordered copies. The two paths agree to rounding; the tests compare them.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ..cross_scan import (
    NUM_DIRECTIONS,
    cross_merge_channels_last,
    cross_scan,
    cross_scan_channels_last,
    reorder_directions,
)
from ._dispatch import resolve_backend, selective_scan_fn

__all__ = ["FUSED_ENV_VAR", "cross_scan_positions", "selective_scan_2d"]

#: environment variable: ``0`` turns the fused Triton path off (the composition runs instead)
FUSED_ENV_VAR = "M3AMBA_FUSED_SCAN2D"


def cross_scan_positions(height: int, width: int, device: torch.device) -> Tensor:
    """``(4, H*W)`` int32: the row-major token that each direction of the cross-scan visits at each step.

    ``cross_scan(m)[:, k, :, t] == m.flatten(2)[:, :, cross_scan_positions(H, W)[k, t]]``.
    """
    tokens = torch.arange(height * width, device=device, dtype=torch.int32).view(1, 1, height, width)
    return cross_scan(tokens)[0, :, 0].contiguous()


def _check(feats: Tensor, dt_low: Tensor, dt_weight: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor) -> None:
    if feats.dim() != 4:
        raise ValueError(f"selective_scan_2d: feats must be a (B, H, W, Di) map, got shape {tuple(feats.shape)}")
    b, h, w, di = feats.shape
    k, length = NUM_DIRECTIONS, h * w
    if dt_weight.dim() != 3 or dt_weight.shape[:2] != (k, di):
        raise ValueError(f"selective_scan_2d: dt_weight must be ({k}, {di}, R), got {tuple(dt_weight.shape)}")
    r = dt_weight.shape[2]
    if tuple(dt_low.shape) != (b, k, r, length):
        raise ValueError(f"selective_scan_2d: dt_low must be (B, {k}, R, H*W) = {(b, k, r, length)} in row-major "
                         f"token order, got {tuple(dt_low.shape)}")
    if A.dim() != 2 or A.shape[0] != k * di:
        raise ValueError(f"selective_scan_2d: A must be ({k} * Di, N) = ({k * di}, N), got {tuple(A.shape)}")
    for name, t in (("Bs", Bs), ("Cs", Cs)):
        if tuple(t.shape) != (b, k, A.shape[1], length):
            raise ValueError(f"selective_scan_2d: {name} must be (B, {k}, N, H*W) = {(b, k, A.shape[1], length)} "
                             f"in scan order, got {tuple(t.shape)}")


def _fused_allowed(fused: Optional[bool]) -> bool:
    if fused is not None:
        return bool(fused)
    return os.environ.get(FUSED_ENV_VAR, "1").strip() != "0"


def selective_scan_2d(
    feats: Tensor,
    dt_low: Tensor,
    dt_weight: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = True,
    *,
    backend: Optional[str] = None,
    fused: Optional[bool] = None,
) -> Tensor:
    """Scan a channels-last map in the four cross-scan orders and sum the outputs back onto it.

    Args:
        feats: ``(B, H, W, Di)`` map; the input ``u`` of every direction.
        dt_low: ``(B, 4, R, H*W)`` low-rank Δ inputs of each direction, in row-major token order.
        dt_weight: ``(4, Di, R)`` per-direction Δ up-projections.
        A: ``(4 * Di, N)`` state matrices, direction-major.
        Bs, Cs: ``(B, 4, N, H*W)`` input/output matrices, each direction in its scan order.
        D, delta_bias: optional ``(4 * Di,)`` skip weights and Δ biases.
        delta_softplus: apply softplus to ``Δ + delta_bias``.
        backend: selective-scan backend (see :func:`.resolve_backend`).
        fused: the ``"triton"`` backend's fused kernels: ``None`` where they apply (unless
            ``M3AMBA_FUSED_SCAN2D=0``), ``False`` never (the composition), ``True`` required.

    Returns:
        ``(B, H, W, Di)``, the dtype of ``feats``.
    """
    _check(feats, dt_low, dt_weight, A, Bs, Cs)
    b, h, w, di = feats.shape
    name = resolve_backend(backend, feats.device)
    if name == "triton" and _fused_allowed(fused):
        from .triton_scan2d import scan2d_triton_supported, selective_scan_2d_triton

        if scan2d_triton_supported(feats, NUM_DIRECTIONS):
            # Δ per direction and token: (B, 4, L, R) @ (4, R, Di) -> (B, 4, L, Di)
            dts = torch.matmul(dt_low.transpose(-1, -2), dt_weight.transpose(-1, -2).to(dt_low.dtype))
            return selective_scan_2d_triton(feats, dts, A, Bs, Cs, D, delta_bias,
                                            cross_scan_positions(h, w, feats.device), delta_softplus)
    if fused:
        raise ValueError(f"selective_scan_2d: fused=True needs the 'triton' backend on CUDA with 32 | Di "
                         f"(backend {name!r}, device {feats.device}, Di={di}, dtype {feats.dtype})")
    k, length = NUM_DIRECTIONS, h * w
    xs = cross_scan_channels_last(feats)
    dts = torch.matmul(dt_weight.to(dt_low.dtype), reorder_directions(dt_low, h, w))  # (B, 4, Di, L)
    ys = selective_scan_fn(xs.reshape(b, k * di, length), dts.reshape(b, k * di, length), A,
                           Bs.contiguous(), Cs.contiguous(), D, delta_bias=delta_bias,
                           delta_softplus=delta_softplus, backend=name)
    return cross_merge_channels_last(ys.reshape(b, k, di, length), h, w)
