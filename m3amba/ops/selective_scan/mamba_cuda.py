"""Backend ``"mamba"``: mamba-ssm's compiled CUDA selective scan (``selective_scan_cuda``).

Installed with the ``[cuda]`` extra (mamba-ssm) or built on its own from mamba-ssm's
``csrc/selective_scan`` (see ``benchmarks/build_mamba_scan.py``). Only the compiled extension
is imported, never ``mamba_ssm`` itself: mamba-ssm 2.3 raises at import time when its other
compiled parts or optional dependencies are missing, and such a broken install must not take
this package down. When the extension cannot be loaded, the backend reports itself unsupported
and a warning says once why.

The kernel is wrapped in ``torch.library`` custom ops with fake implementations, so
``torch.compile`` traces through it without a graph break.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["selective_scan_mamba", "mamba_available", "mamba_unavailable_reason", "kernel_layout"]

_module = None
_reason: Optional[str] = None
_warned = False
_CHUNK = 2048  # mamba-ssm's kernel stores one state per 2048-step chunk


def _load():
    global _module, _reason
    if _module is None and _reason is None:
        try:
            import selective_scan_cuda  # the compiled extension alone
            _module = selective_scan_cuda
        except Exception as exc:  # ImportError, or an undefined symbol of a mismatched build
            _reason = f"{type(exc).__name__}: {exc}"
    return _module


def mamba_unavailable_reason() -> Optional[str]:
    """Why mamba-ssm's kernel cannot be used (None when it can)."""
    _load()
    return _reason


def mamba_available(device: torch.device) -> bool:
    """Whether the ``mamba`` backend can run on ``device`` (warns once when CUDA lacks it)."""
    global _warned
    if device.type != "cuda":
        return False
    if _load() is not None:
        return True
    if not _warned:
        _warned = True
        warnings.warn(
            f"mamba-ssm's selective_scan_cuda is not used ({_reason}); install `m3amba[cuda]` for it. "
            "Falling back to the next selective-scan backend.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def _empty(ref: Tensor) -> Tensor:
    return ref.new_empty(0)


@torch.library.custom_op("m3amba::mamba_scan_fwd", mutates_args=())
def _fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
         z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tuple[Tensor, Tensor, Tensor]:
    out, states, *rest = _load().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    # with a gate the kernel returns y before (out) and after (rest[0]) it; the backward of the
    # gate needs the pre-gate y, so both are returned
    if z is None:
        return out, _empty(u), states
    return rest[0], out, states


@_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    b, d, length = u.shape
    chunks = max(1, math.ceil(length / _CHUNK))
    states = u.new_empty((b, d, chunks, 2 * A.shape[1]), dtype=torch.float32)
    return torch.empty_like(u), (torch.empty_like(u) if z is not None else _empty(u)), states


@torch.library.custom_op("m3amba::mamba_scan_bwd", mutates_args=())
def _bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
         delta_bias: Optional[Tensor], dout: Tensor, states: Optional[Tensor], out_pre: Optional[Tensor],
         delta_softplus: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    du, ddelta, dA, dB, dC, dD, dbias, *rest = _load().bwd(
        u, delta, A, B, C, D, z, delta_bias, dout, states, out_pre, None, delta_softplus, False)
    dz = rest[0] if z is not None else _empty(u)
    return (du, ddelta, dA, dB, dC, dD if D is not None else _empty(u),
            dbias if delta_bias is not None else _empty(u), dz)


@_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, dout, states, out_pre, delta_softplus):
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(D) if D is not None else _empty(u),
            torch.empty_like(delta_bias) if delta_bias is not None else _empty(u),
            torch.empty_like(z) if z is not None else _empty(u))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2], output[1] if z is not None else None)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dout, _dout_pre, _dstates):
    u, delta, A, B, C, D, z, delta_bias, states, out_pre = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dbias, dz = _bwd(
        u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), states, out_pre, ctx.delta_softplus)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def kernel_layout(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  z: Optional[Tensor], delta_bias: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """The inputs as mamba-ssm's kernels take them: contiguous; u, delta, z and grouped (4-D) B, C
    in u's dtype; A, D and delta_bias in float32."""
    dtype = u.dtype
    B = (B.unsqueeze(1) if B.dim() == 3 else B).to(dtype).contiguous()
    C = (C.unsqueeze(1) if C.dim() == 3 else C).to(dtype).contiguous()
    return (
        u.contiguous(), delta.to(dtype).contiguous(), A.float().contiguous(), B, C,
        D.float().contiguous() if D is not None else None,
        z.to(dtype).contiguous() if z is not None else None,
        delta_bias.float().contiguous() if delta_bias is not None else None,
    )


def selective_scan_mamba(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                         z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                         delta_softplus: bool = False, return_last_state: bool = False):
    """Selective scan through mamba-ssm's CUDA kernel (same signature as ``selective_scan_fn``).

    B and C are cast to u's dtype and A, D and delta_bias to float32, as the kernel requires.
    """
    if _load() is None:
        raise RuntimeError(f"the 'mamba' selective-scan backend is unavailable: {_reason}")
    y, _, states = _fwd(*kernel_layout(u, delta, A, B, C, D, z, delta_bias), bool(delta_softplus))
    if return_last_state:
        return y, states[:, :, -1, 1::2]
    return y
