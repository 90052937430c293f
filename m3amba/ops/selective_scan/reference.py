"""Reference selective scan: the definition, one time step at a time.

This backend ("reference") is deliberately simple and slow.  It is the
specification that every other backend is tested against:

.. code-block:: text

    dt_t   = softplus(delta_t + delta_bias)      # bias / softplus optional
    h_0    = 0
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t    = sum_n C_t[n] * h_t[n] + D * u_t
    y      = y * silu(z)                          # if z is given

It computes in float64 if any input is float64, else in float32.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ._common import expand_groups, finish_output, prepare_inputs

__all__ = ["selective_scan_ref"]


def _time_major(x: Tensor) -> Tuple[Tensor, ...]:
    """Split ``(..., L)`` into ``L`` contiguous tensors of shape ``(...)``."""
    return x.movedim(-1, 0).contiguous().unbind(0)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Sequential selective scan (backend ``"reference"``).

    Arguments and return value are those of
    :func:`m3amba.ops.selective_scan.selective_scan_fn`.
    """
    p = prepare_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length, dstate = p.dims.batch, p.dims.dim, p.dims.length, p.dims.dstate
    Bc = expand_groups(p.B, dim)  # (batch, Dm, N, L)
    Cc = expand_groups(p.C, dim)
    # Split into per-step tensors once, time-major and contiguous: indexing per
    # step would make every backward step allocate a zero tensor of the full
    # input size, and strided (batch, Dm, N) slices are ~20x slower to read.
    dts = _time_major(p.dt.unsqueeze(2))  # L x (batch, Dm, 1)
    us = _time_major(p.u.unsqueeze(2))  # L x (batch, Dm, 1)
    Bs, Cs = _time_major(Bc), _time_major(Cc)  # L x (batch, Dm, N)
    h = torch.zeros(batch, dim, dstate, dtype=p.dtype, device=p.u.device)
    ys = []
    for t in range(length):
        decay = torch.exp(dts[t] * p.A)  # (batch, Dm, N)
        h = decay * h + dts[t] * Bs[t] * us[t]
        ys.append((Cs[t] * h).sum(dim=-1))
    y = finish_output(torch.stack(ys, dim=-1), p)
    return (y, h) if return_last_state else y
