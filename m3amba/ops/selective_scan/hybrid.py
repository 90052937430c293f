"""Backend ``"triton_mamba"``: the Triton forward kernel, then mamba-ssm's backward kernel.

mamba-ssm's backward reads back only the states its forward saved for chunks before the current
one, and its chunks are 2048 steps long. At L ≤ 2048 it therefore needs nothing from that
forward: any forward computing the same y can come first. The pairing takes the faster kernel
on each side. On an H100 at M3amba-base's shape (bf16, batch 64, Dm 3072, L 1024, no gate) the
forward takes 2.49 ms with Triton and 3.22 ms with mamba-ssm, and the backward 13.9 ms with
mamba-ssm (see docs/benchmarks.md).

Calls the pairing cannot serve go to mamba-ssm whole: a gate ``z``, whose backward would need the
pre-gate output that only mamba-ssm's forward returns; ``return_last_state``; and L > 2048.
float64 inputs go to the ``"torch"`` backend's exact chunked scan.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ._common import validate_inputs
from .chunked import selective_scan_chunked
from .mamba_cuda import _bwd as _mamba_bwd
from .mamba_cuda import _CHUNK as _MAMBA_CHUNK
from .mamba_cuda import kernel_layout, mamba_available, selective_scan_mamba
from .triton_scan import FWD_DEFAULTS, triton_supported

__all__ = ["selective_scan_triton_mamba", "triton_mamba_supported"]


def triton_mamba_supported(device: torch.device) -> bool:
    """Whether both kernels can run on ``device``."""
    return triton_supported(device) and mamba_available(torch.device(device))


class _TritonForwardMambaBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, D, delta_bias, delta_softplus: bool):
        length = u.shape[-1]
        # one saved-state chunk for the whole sequence: mamba-ssm's backward needs none of them
        chunk = -(-length // 16) * 16
        f = FWD_DEFAULTS
        y, _, _ = torch.ops.m3amba.selective_scan_fwd(
            u, delta, A, B, C, D, None, delta_bias, delta_softplus, chunk,
            f["block_d"] or 0, f["num_warps"], f["j"], f["v"], f["maxnreg"],
        )
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return y

    @staticmethod
    def backward(ctx: Any, dy):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, _ = _mamba_bwd(
            u, delta, A, B, C, D, None, delta_bias, dy.contiguous(), None, None, ctx.delta_softplus)
        return (du, ddelta, dA, dB, dC, dD if D is not None else None,
                dbias if delta_bias is not None else None, None)


def selective_scan_triton_mamba(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                                delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                                return_last_state: bool = False):
    """Selective scan: Triton forward, mamba-ssm backward (same signature as ``selective_scan_fn``)."""
    validate_inputs(u, delta, A, B, C, D, z, delta_bias)
    if any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z, delta_bias)):
        # neither kernel computes in float64: the exact chunked scan does, as for the "triton" backend
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if z is not None or return_last_state or u.shape[-1] > _MAMBA_CHUNK:
        return selective_scan_mamba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    u, delta, A, B, C, D, _, delta_bias = kernel_layout(u, delta, A, B, C, D, None, delta_bias)
    return _TritonForwardMambaBackward.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
