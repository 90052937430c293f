"""Triton selective scan (backend ``"triton"``): fused forward and backward kernels.

Layout of the work
------------------
One program handles one batch element and a block of ``BLOCK_D`` channels of
one group of ``B``/``C`` (so ``BLOCK_D`` must divide ``Dm / G``; it is chosen
automatically).  The state ``h`` of a program is a ``(BLOCK_D, N)`` fp32
register tile; it never leaves registers except at chunk boundaries.

Time is processed in tiles of ``V`` steps (``J`` of them per loop iteration).
``u``, ``delta``, ``z`` and ``y`` are moved as ``(BLOCK_D, V)`` tiles, which
Triton loads with 16-byte vector accesses along ``L`` (the contiguous axis);
the state tile shares the layout of the time tiles (nothing else anchors it:
``A`` and the saved states are read/written per ``n`` as 1-D vectors), so
stepping through the ``V`` columns (``tl.static_range`` plus compile-time
masks) needs at most a few shuffles and no shared memory.

* forward (default ``V = 8``): two lanes per channel, each with 4 time steps
  of the tile and ``N / 2`` states, i.e. the read-out ``sum_n C h`` costs one
  shuffle and every thread loads only its half of ``B_t``/``C_t``;
* backward (``V = 4``, two tiles joined along an in-thread axis): one lane owns
  a channel and the 8 steps of a sub-chunk, so recurrences need no
  communication at all.

``B_t``/``C_t`` are read per step as ``N`` contiguous values from a transposed
``(batch, G, L, N)`` copy (tiny compared with ``u``).

Forward: sequential over ``L``; ``exp(dt A)`` through ``exp2``; ``D`` skip and
``silu(z)`` gate fused; the state entering every chunk of ``CHUNK`` steps is
saved (fp32, ``(batch, L / CHUNK, N, Dm)``) for the backward pass.

Backward (the "tile" kernel; gate-free calls with 32 | Dm / G take the faster
"lane" kernel of :mod:`.triton_bwd_lane` instead, same phases, see there):
chunks from last to first.  Phase 1 re-runs the forward over the
chunk to get the state at the start of each sub-chunk of ``TB`` steps (a small
program-private scratch buffer that stays in L2).  Phase 2 walks the
sub-chunks backwards; for each state index ``n`` it recomputes ``h_t`` over
the sub-chunk, runs the adjoint recurrence
``dh_t = C_t dy'_t + exp(dt_{t+1} A) dh_{t+1}`` and accumulates ``du``,
``ddelta`` (through softplus and bias), ``dA``, ``dD``, ``dz`` and the bias
gradient per channel.  ``dB``/``dC`` are sums over the channels of a group:
each program reduces over its own channels and writes one partial per
``(batch, channel block, n, t)``; torch sums the partials of a group
afterwards.  Partials instead of ``tl.atomic_add``: deterministic results,
no fp32-atomic contention on the same ``(n, t)`` from the ``Dm / G /
BLOCK_D`` blocks of a group, and the extra traffic is small (``N / BLOCK_D``
of the size of ``u``).

Memory layout: both kernels address ``u``, ``delta``, ``y``/``dy`` and the gradients through a
:class:`._layout.SeqLayout` (strides, and optionally a table of where each step is stored). The
plain layout is contiguous ``(batch, Dm, L)``; :mod:`.triton_scan2d` reads the four directions of the
2-D cross-scan straight from one channels-last map, gathering each step as a vector of one value a
channel (:func:`.triton_bwd_lane.ld8_tokens`).

Custom ops ``m3amba::selective_scan_fwd`` / ``m3amba::selective_scan_bwd``
(with fake implementations) wrap the kernels, so ``torch.compile`` treats
them as opaque nodes without graph breaks; :class:`SelectiveScanTritonFn`
ties them together for autograd.

Limitations: float64 inputs are delegated to the ``"torch"`` backend; 3-D
(ungrouped) ``B``/``C`` are handled as ``G = 1``; if ``Dm / G`` is not a
multiple of 32 the channel blocks get small (correct, but slower).
"""

import os
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from ._common import validate_inputs
from ._layout import SeqLayout, plain_layout
from .triton_bwd_lane import LANE_BWD_DEFAULTS, bwd_lane, lane_bwd_supported

__all__ = [
    "HAS_TRITON",
    "SelectiveScanTritonFn",
    "selective_scan_triton",
    "triton_supported",
    "FWD_DEFAULTS",
    "BWD_DEFAULTS",
    "BWD_DEFAULTS_16BIT",
]

try:  # Triton is optional: without it the module imports and the backend is unsupported.
    import triton
    import triton.language as tl

    from .triton_bwd_lane import ld8_tokens, st8_tokens

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Default launch parameters (benchmarks may override them per call), tuned on an
#: H100 at batch 64, Dm 3072, G 4, L 1024, N 16 (fp32).
#: block_d: channels per program (None: 32 * num_warps; always reduced to a power
#: of two dividing Dm / G); v: steps per vector access; j: v-step sub-tiles per
#: loop iteration (backward: must be 2); maxnreg: register cap per thread (0: none);
#: CHUNK_DEFAULT: steps between the states saved for the backward pass.
FWD_DEFAULTS = dict(block_d=None, num_warps=4, j=2, v=8, maxnreg=0)
BWD_DEFAULTS = dict(block_d=64, num_warps=1, j=2, v=4, maxnreg=168)
#: backward defaults for 2-byte inputs (bf16/fp16), from ``benchmarks/scan_tune.py`` on an H100 at the
#: shape above: one channel a lane and no register cap, 21.6 ms against 26.1 ms with BWD_DEFAULTS
BWD_DEFAULTS_16BIT = dict(BWD_DEFAULTS, block_d=32, maxnreg=0)
CHUNK_DEFAULT = 64
#: backward kernel choice (custom-op argument): the lane kernel where it applies, else the tile kernel;
#: the tile kernel of this module; the lane kernel of :mod:`.triton_bwd_lane` (an error where it does not apply)
BWD_AUTO, BWD_TILE, BWD_LANE = 0, 1, 2
_BWD_KERNELS = {"auto": BWD_AUTO, "tile": BWD_TILE, "lane": BWD_LANE}

#: Tests set this to fill every output buffer with NaN before the kernels run,
#: so that elements a kernel fails to write are caught.
POISON_OUTPUTS = False

_LOG2E = 1.4426950408889634
_V = 4  # time steps per vector access (16 bytes of fp32)


def triton_supported(device: torch.device) -> bool:
    """Whether the Triton backend can run on ``device``."""
    return HAS_TRITON and torch.device(device).type == "cuda"


# ----------------------------------------------------------------------------- kernels

if HAS_TRITON:

    @triton.jit
    def _softplus(x):
        # max(x, 0) + log1p(exp(-|x|)), log1p computed accurately for tiny arguments
        e = tl.exp(-tl.abs(x))
        w = 1.0 + e
        lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
        return tl.maximum(x, 0.0) + lp

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _col(x, sel):
        # column `sel` (a compile-time one-hot mask over the in-thread time axes)
        # of a (BLOCK_D, V, J) or (BLOCK_D, V) tile -> (BLOCK_D,); adding -0.0
        # (not +0.0) lets the compiler fold the masked-out terms away
        y = tl.where(sel, x, -0.0)
        if len(x.shape) == 3:
            y = tl.sum(y, axis=2)
        return tl.sum(y, axis=1)

    @triton.jit
    def _gather_state(ptr, offs_d, offs_n, N, stride_n, stride_d, NP: tl.constexpr):
        """(BD, NP) fp32 state assembled from NP per-n (BD,) loads.

        Per-n 1-D accesses (instead of one 2-D access) keep the state in the
        layout of the time tiles: every thread holds all N states of its channel.
        """
        st = tl.zeros((offs_d.shape[0], NP), dtype=tl.float32)
        for n in tl.static_range(NP):
            v = tl.load(ptr + n * stride_n + offs_d * stride_d, mask=(offs_d * 0 + n) < N, other=0.0)
            st = tl.where(offs_n[None, :] == n, v.to(tl.float32)[:, None], st)
        return st

    @triton.jit
    def _scatter_state(ptr, st, offs_d, offs_n, N, stride_n, stride_d, NP: tl.constexpr):
        """Store a (BD, NP) state with NP per-n (BD,) stores (see :func:`_gather_state`)."""
        for n in tl.static_range(NP):
            v = tl.sum(tl.where(offs_n[None, :] == n, st, -0.0), axis=1)
            tl.store(ptr + n * stride_n + offs_d * stride_d, v, mask=(offs_d * 0 + n) < N)

    @triton.jit
    def _ld(ptr, off2, k2, t0, L, J: tl.constexpr, V: tl.constexpr):
        """(BD, V, J) fp32 tile of steps t0 + v + V * j (0 outside the sequence).

        Loaded as J separate (BD, V) tiles (V contiguous values per thread, one
        16-byte access for fp32) joined along a new in-thread axis, so that the
        whole time extent of a channel stays inside one thread.
        """
        a = tl.load(ptr + (off2 + t0), mask=(t0 + k2) < L, other=0.0).to(tl.float32)
        if J == 2:
            b = tl.load(ptr + (off2 + (t0 + V)), mask=(t0 + V + k2) < L, other=0.0).to(tl.float32)
            x = tl.join(a, b)
        else:
            x = a  # (BD, V)
        return x

    @triton.jit
    def _st(ptr, off2, k2, t0, L, x, J: tl.constexpr, V: tl.constexpr):
        """Store a (BD, V, J) tile written by :func:`_ld` (cast to the pointer's dtype)."""
        if J == 2:
            a, b = tl.split(x)
            tl.store(ptr + (off2 + t0), a.to(ptr.dtype.element_ty), mask=(t0 + k2) < L)
            tl.store(ptr + (off2 + (t0 + V)), b.to(ptr.dtype.element_ty), mask=(t0 + V + k2) < L)
        else:
            tl.store(ptr + (off2 + t0), x.to(ptr.dtype.element_ty), mask=(t0 + k2) < L)

    @triton.jit
    def _dt_of(x, mt, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """Pre-softplus value ``delta + bias`` and effective ``dt`` (0 outside the sequence) of raw ``x``."""
        if HAS_BIAS:
            x = x + bias
        if SOFTPLUS:
            dt = _softplus(x)
        else:
            dt = x
        dt = tl.where(mt, dt, 0.0)
        return x, dt

    @triton.jit
    def _load_dt(dl_ptr, off2, k2, t0, L, mt, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 J: tl.constexpr, V: tl.constexpr):
        """Pre-softplus value ``delta + bias`` and effective ``dt`` (0 outside the sequence)."""
        return _dt_of(_ld(dl_ptr, off2, k2, t0, L, J, V), mt, bias, HAS_BIAS, SOFTPLUS)

    @triton.jit
    def _scan_tile(h, A2, dt, dtu, tt, t0, L, Bp, Cp, sBl, sCl, offs_n, mask_n,
                   T: tl.constexpr, WITH_Y: tl.constexpr):
        """Advance h (BD, NP) over the T steps of a tile; optionally return the y tile."""
        y = tl.zeros_like(dt)
        for i in tl.static_range(T):
            sel = tt == i
            dt_i = _col(dt, sel)
            x_i = _col(dtu, sel)
            mi = mask_n & (t0 + i < L)
            b_i = tl.load(Bp + (t0 + i) * sBl + offs_n, mask=mi, other=0.0).to(tl.float32)
            h = tl.exp2(dt_i[:, None] * A2) * h + x_i[:, None] * b_i[None, :]
            if WITH_Y:
                c_i = tl.load(Cp + (t0 + i) * sCl + offs_n, mask=mi, other=0.0).to(tl.float32)
                y_i = tl.sum(h * c_i[None, :], axis=1)
                y = tl.where(sel, y_i[:, None], y)  # forward tiles are 2-D
        return h, y

    @triton.jit
    def _ss_fwd_kernel(
        u_ptr, dl_ptr, A_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, perm_ptr,
        y_ptr, hs_ptr, hl_ptr,
        Dm, L, N, nc, dpg_b, dpg_c, Di,
        sBb, sBg, sBl, sCb, sCg, sCl,
        su_b, su_k, su_d, sd_b, sd_k, sd_d, s_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        NP: tl.constexpr, BD: tl.constexpr, J: tl.constexpr, V: tl.constexpr,
        CHUNK_TILES: tl.constexpr, XS: tl.constexpr,
    ):
        # grid: (Dm // BD, batch); loop over tiles of T = J * V steps, each handled
        # as J sub-tiles of V steps. Channel d is channel d % Di of direction d // Di; element
        # (batch b, channel d, step t) of u / z is at b su_b + (d // Di) su_k + (d % Di) su_d + pos(t) s_l,
        # of delta and y likewise with sd_*; pos(t) = t, or with XS a token of the 2-D cross-scan
        pid_d = tl.program_id(0)
        pid_b = tl.program_id(1)
        d0 = pid_d * BD
        offs_d = d0 + tl.arange(0, BD)
        offs_n = tl.arange(0, NP)
        mask_n = offs_n < N
        b64 = pid_b.to(tl.int64)
        kdir = d0 // Di
        k64 = kdir.to(tl.int64)
        dd = (offs_d - kdir * Di).to(tl.int64)
        row_u1 = b64 * su_b + k64 * su_k + dd * su_d  # (BD,)
        row_d1 = b64 * sd_b + k64 * sd_k + dd * sd_d
        row_u = row_u1[:, None]  # (BD, 1)
        row_d = row_d1[:, None]
        perm_k = perm_ptr + kdir * L  # XS: this direction's (L,) int32 tokens
        tt = tl.arange(0, V)[None, :]  # (1, V)
        T: tl.constexpr = J * V

        A2 = _gather_state(A_ptr, offs_d, offs_n, N, 1, N, NP) * 1.4426950408889634
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d).to(tl.float32)[:, None]
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d).to(tl.float32)[:, None]
        else:
            bias = 0.0
        Bp = Bt_ptr + b64 * sBb + (d0 // dpg_b) * sBg
        Cp = Ct_ptr + b64 * sCb + (d0 // dpg_c) * sCg
        hs_base = hs_ptr + b64 * nc * N * Dm
        h = tl.zeros((BD, NP), dtype=tl.float32)
        # loop bounds by plain integer arithmetic (also keeps them Python ints in the interpreter)
        n_tiles = (L + T - 1) // T
        for it in range(n_tiles):
            if it % CHUNK_TILES == 0:
                _scatter_state(hs_base + (it // CHUNK_TILES) * N * Dm, h, offs_d, offs_n, N, Dm, 1, NP)
            for jj in tl.static_range(J):
                t0 = it * T + jj * V
                mt = (t0 + tt) < L
                if XS:  # V == 8: the steps gathered at their tokens, one channel a lane (see ld8_tokens)
                    u = tl.reshape(ld8_tokens(u_ptr, row_u1, perm_k, t0, L, s_l, False), (BD, V))
                    xr = tl.reshape(ld8_tokens(dl_ptr, row_d1, perm_k, t0, L, s_l, False), (BD, V))
                else:
                    p = (t0 + tt) * s_l  # (1, V)
                    u = tl.load(u_ptr + (row_u + p), mask=mt, other=0.0).to(tl.float32)
                    xr = tl.load(dl_ptr + (row_d + p), mask=mt, other=0.0).to(tl.float32)
                x, dt = _dt_of(xr, mt, bias, HAS_BIAS, SOFTPLUS)
                h, y = _scan_tile(h, A2, dt, dt * u, tt, t0, L, Bp, Cp, sBl, sCl, offs_n, mask_n, V, True)
                if HAS_D:
                    y += Dv * u
                if HAS_Z:  # never with XS
                    zv = tl.load(z_ptr + (row_u + (t0 + tt) * s_l), mask=mt, other=0.0).to(tl.float32)
                    y = y * zv * _sigmoid(zv)
                if XS:
                    st8_tokens(y_ptr, row_d1, perm_k, t0, L, s_l, tl.reshape(y, (BD, 2, 2, 2)), False)
                else:
                    tl.store(y_ptr + (row_d + (t0 + tt) * s_l), y.to(y_ptr.dtype.element_ty), mask=mt)
        _scatter_state(hl_ptr + b64 * Dm * N, h, offs_d, offs_n, N, 1, N, NP)

    @triton.jit
    def _ss_bwd_kernel(
        u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr,
        dy_ptr, hs_ptr, hsub_ptr, dcarry_ptr,
        du_ptr, ddl_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
        Dm, L, N, nc, nblk, dpg_b, dpg_c,
        sBb, sBg, sBn, sBl, sCb, sCg, sCn, sCl,
        sBtb, sBtg, sBtl, sCtb, sCtg, sCtl,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        NP: tl.constexpr, BD: tl.constexpr, J: tl.constexpr, V: tl.constexpr, K: tl.constexpr,
    ):
        # grid: (Dm // BD, batch); sub-chunks of TB = V * J steps, K of them per chunk
        pid_d = tl.program_id(0)
        pid_b = tl.program_id(1)
        d0 = pid_d * BD
        offs_d = d0 + tl.arange(0, BD)
        offs_n = tl.arange(0, NP)
        mask_n = offs_n < N
        b64 = pid_b.to(tl.int64)
        k2 = tl.arange(0, V)[None, :]  # (1, V)
        off2 = b64 * Dm * L + offs_d.to(tl.int64)[:, None] * L + k2  # (BD, V)
        tt = tl.arange(0, V)[None, :, None] + V * tl.arange(0, J)[None, None, :]  # (1, V, J)
        tt2 = tl.arange(0, V)[:, None] + V * tl.arange(0, J)[None, :]  # (V, J)
        TB: tl.constexpr = J * V
        CHUNK: tl.constexpr = K * TB

        if HAS_D:
            Dv = tl.load(D_ptr + offs_d).to(tl.float32)[:, None, None]
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d).to(tl.float32)[:, None, None]
        else:
            bias = 0.0
        gb = d0 // dpg_b
        gc = d0 // dpg_c
        Bp = B_ptr + b64 * sBb + gb * sBg
        Cp = C_ptr + b64 * sCb + gc * sCg
        Btp = Bt_ptr + b64 * sBtb + gb * sBtg
        Ctp = Ct_ptr + b64 * sCtb + gc * sCtg
        hs_b = hs_ptr + b64 * nc * N * Dm
        hsub_b = hsub_ptr + b64 * K * N * Dm
        carry_b = dcarry_ptr + b64 * N * Dm + offs_d
        dA_b = dA_ptr + b64 * N * Dm + offs_d
        part_b = b64 * nblk + pid_d
        dB_b = dB_ptr + part_b * N * L
        dC_b = dC_ptr + part_b * N * L
        if K > 1:
            A2 = _gather_state(A_ptr, offs_d, offs_n, N, 1, N, NP) * 1.4426950408889634

        dD_acc = tl.zeros((BD,), dtype=tl.float32)
        db_acc = tl.zeros((BD,), dtype=tl.float32)
        for ci in range(nc):
            c = nc - 1 - ci
            # sub-chunks inside the sequence: min(K, cdiv(L - c * CHUNK, TB))
            ks = (L - c * CHUNK + TB - 1) // TB
            ks = ks - (ks - K) * (ks > K)
            # ---- phase 1: states at the start of every sub-chunk of this chunk
            if K > 1:
                h2 = _gather_state(hs_b + c * N * Dm, offs_d, offs_n, N, Dm, 1, NP)
                for s in range(ks):
                    _scatter_state(hsub_b + s * N * Dm, h2, offs_d, offs_n, N, Dm, 1, NP)
                    if s < ks - 1:
                        t0 = c * CHUNK + s * TB
                        mt = (t0 + tt) < L
                        u = _ld(u_ptr, off2, k2, t0, L, J, V)
                        x, dt = _load_dt(dl_ptr, off2, k2, t0, L, mt, bias, HAS_BIAS, SOFTPLUS, J, V)
                        h2, _unused = _scan_tile(h2, A2, dt, dt * u, tt, t0, L, Btp, Ctp, sBtl, sCtl,
                                                 offs_n, mask_n, TB, False)
            # ---- phase 2: sub-chunks backwards
            for si in range(ks):
                s = ks - 1 - si
                t0 = c * CHUNK + s * TB
                t = t0 + tt
                mt = t < L
                u = _ld(u_ptr, off2, k2, t0, L, J, V)
                x, dt = _load_dt(dl_ptr, off2, k2, t0, L, mt, bias, HAS_BIAS, SOFTPLUS, J, V)
                dy = _ld(dy_ptr, off2, k2, t0, L, J, V)
                if HAS_Z:
                    zv = _ld(z_ptr, off2, k2, t0, L, J, V)
                    sz = _sigmoid(zv)
                    dyg = dy * zv * sz
                else:
                    dyg = dy
                dtu = dt * u
                acc_dtu = tl.zeros_like(dt)  # d loss / d(dt u)
                acc_ddt = tl.zeros_like(dt)  # d loss / d dt through the decay
                acc_y = tl.zeros_like(dt)  # sum_n C h (for the gate's gradient)
                mt2 = (t0 + tt2) < L
                if K > 1:
                    h0_base = hsub_b + s * N * Dm + offs_d
                else:
                    h0_base = hs_b + c * N * Dm + offs_d
                for n in range(N):
                    A_n = tl.load(A_ptr + offs_d * N + n).to(tl.float32)
                    a = tl.exp2(dt * (A_n * 1.4426950408889634)[:, None, None])
                    b_n = tl.load(Bp + n * sBn + t * sBl, mask=mt, other=0.0).to(tl.float32)
                    c_n = tl.load(Cp + n * sCn + t * sCl, mask=mt, other=0.0).to(tl.float32)
                    xb = dtu * b_n
                    # recompute h_{t-1} over the sub-chunk
                    h = tl.load(h0_base + n * Dm)
                    hp = tl.zeros_like(dt)
                    for i in tl.static_range(TB):
                        sel = tt == i
                        hp = tl.where(sel, h[:, None, None], hp)
                        h = _col(a, sel) * h + _col(xb, sel)
                    hc = a * hp + xb  # h_t
                    if HAS_Z:
                        acc_y += hc * c_n
                    tl.store(dC_b + n * L + t0 + tt2, tl.sum(hc * dyg, axis=0), mask=mt2)
                    # adjoint dh_t = C_t dy'_t + a_{t+1} dh_{t+1}; g enters as a_{t+1} dh_{t+1}
                    cdy = c_n * dyg
                    g = tl.load(carry_b + n * Dm)
                    gh = tl.zeros_like(dt)
                    for ii in tl.static_range(TB):
                        i = TB - 1 - ii
                        sel = tt == i
                        g = g + _col(cdy, sel)
                        gh = tl.where(sel, g[:, None, None], gh)
                        g = g * _col(a, sel)
                    tl.store(carry_b + n * Dm, g)
                    acc_dtu += gh * b_n
                    tl.store(dB_b + n * L + t0 + tt2, tl.sum(gh * dtu, axis=0), mask=mt2)
                    q = gh * a * hp  # d loss / d(dt A)
                    acc_ddt += q * A_n[:, None, None]
                    dA_n = tl.sum(tl.sum(q * dt, axis=2), axis=1)
                    tl.store(dA_b + n * Dm, tl.load(dA_b + n * Dm) + dA_n)
                # per-channel gradients of this sub-chunk
                du = acc_dtu * dt
                ddt = acc_ddt + acc_dtu * u
                if HAS_D:
                    du += Dv * dyg
                    dD_acc += tl.sum(tl.sum(dyg * u, axis=2), axis=1)
                if HAS_Z:
                    out = acc_y
                    if HAS_D:
                        out += Dv * u
                    dz = dy * out * sz * (1.0 + zv * (1.0 - sz))
                    _st(dz_ptr, off2, k2, t0, L, dz, J, V)
                if SOFTPLUS:
                    ddl = ddt * _sigmoid(x)
                else:
                    ddl = ddt
                ddl = tl.where(mt, ddl, 0.0)
                if HAS_BIAS:
                    db_acc += tl.sum(tl.sum(ddl, axis=2), axis=1)
                _st(du_ptr, off2, k2, t0, L, du, J, V)
                _st(ddl_ptr, off2, k2, t0, L, ddl, J, V)
        if HAS_D:
            tl.store(dD_ptr + b64 * Dm + offs_d, dD_acc)
        if HAS_BIAS:
            tl.store(dbias_ptr + b64 * Dm + offs_d, db_acc)


# ----------------------------------------------------------------------------- launch helpers


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _pick_block(dpg_b: int, dpg_c: int, block_d: Optional[int], num_warps: int) -> Tuple[int, int]:
    """Channels per program (a power of two dividing both Dm/G_B and Dm/G_C) and warps."""
    want = block_d if block_d else 32 * num_warps
    want = _next_pow2(want)
    bd = want
    while bd > 1 and (dpg_b % bd or dpg_c % bd):
        bd //= 2
    nw = max(1, min(num_warps, bd // 32)) if bd >= 32 else 1
    return bd, nw


def _reg_cap(maxnreg: int, like: Tensor) -> dict:
    # register cap per thread (more resident warps); ignored by the interpreter
    return {"maxnreg": int(maxnreg)} if maxnreg and like.is_cuda and not _INTERPRET else {}


def _alloc(shape, dtype, device) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _check_chunk(chunk: int, t_fwd: int, t_bwd: int) -> None:
    if chunk % t_fwd or chunk % t_bwd:
        raise ValueError(
            f"selective_scan_triton: chunk={chunk} must be a multiple of the time tiles "
            f"({t_fwd} forward, {t_bwd} backward)"
        )


def _fwd_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, block_d, num_warps, j, v=_V, maxnreg=0,
              layout: Optional[SeqLayout] = None):
    """Launch the forward kernel; ``y`` comes out shaped and laid out like ``delta``."""
    if not HAS_TRITON:
        raise RuntimeError("selective_scan_triton: triton is not available")
    batch, dim, length = u.shape[0], A.shape[0], B.shape[-1]
    dstate = A.shape[1]
    gb, gc = B.shape[1], C.shape[1]
    if layout is None:
        u, delta = u.contiguous(), delta.contiguous()
        layout = plain_layout(dim, length)
    elif layout.perm is not None and (z is not None or v != 8):
        raise ValueError("selective_scan_triton: the 2-D cross-scan layout takes no gate and needs v=8")
    A = A.contiguous()
    Bt = B.transpose(-1, -2).contiguous()  # (batch, G, L, N): N contiguous per step
    Ct = C.transpose(-1, -2).contiguous()
    z = None if z is None else z.contiguous()
    bd, nw = _pick_block(dim // gb, dim // gc, block_d, num_warps)
    if layout.di % bd:
        raise ValueError(f"selective_scan_triton: {bd} channels a program do not divide {layout.di} a direction")
    T = v * j
    if chunk % T:
        raise ValueError(f"selective_scan_triton: chunk={chunk} must be a multiple of 4*j={T}")
    nc = -(-length // chunk)
    y = _alloc(delta.shape, u.dtype, u.device)
    hs = _alloc((batch, nc, dstate, dim), torch.float32, u.device)
    hl = _alloc((batch, dim, dstate), torch.float32, u.device)
    dummy = u
    grid = (dim // bd, batch)
    _ss_fwd_kernel[grid](
        u, delta, A, Bt, Ct,
        D if D is not None else dummy,
        z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        layout.perm if layout.perm is not None else dummy,
        y, hs, hl,
        dim, length, dstate, nc, dim // gb, dim // gc, layout.di,
        Bt.stride(0), Bt.stride(1), Bt.stride(2), Ct.stride(0), Ct.stride(1), Ct.stride(2),
        *layout.su, *layout.sd, layout.s_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        NP=_next_pow2(dstate), BD=bd, J=j, V=v, CHUNK_TILES=chunk // T, XS=layout.perm is not None,
        num_warps=nw, **_reg_cap(maxnreg, u),
    )
    return y, hl, hs


def _lane_refusal(dim: int, groups_b: int, groups_c: int, gated: bool, chunk: int) -> str:
    return ("selective_scan_triton: the lane backward serves only gate-free calls with 32 | Dm / G and 8 | chunk "
            f"(Dm={dim}, G={groups_b}/{groups_c}, gate={'yes' if gated else 'no'}, chunk={chunk}); "
            "use bwd_kernel='auto' or 'tile'")


def _bwd_impl(dy, dhl, u, delta, A, B, C, D, z, delta_bias, hs, delta_softplus, chunk, block_d, num_warps, j,
              v=_V, maxnreg=0, bwd_kind=BWD_AUTO):
    if not HAS_TRITON:
        raise RuntimeError("selective_scan_triton: triton is not available")
    if bwd_kind != BWD_TILE and lane_bwd_supported(u.shape[1], B.shape[1], C.shape[1], z is not None, chunk):
        du, ddl, dA, dB, dC, dD, dbias = bwd_lane(dy, dhl, u, delta, A, B, C, D, delta_bias, hs, delta_softplus,
                                                  chunk, _alloc, LANE_BWD_DEFAULTS["maxnreg"])
        # a fresh empty tensor each: a custom op's outputs must not alias one another
        return (du, ddl, dA, dB, dC, dD if dD is not None else u.new_empty(0), u.new_empty(0),
                dbias if dbias is not None else u.new_empty(0))
    if bwd_kind == BWD_LANE:
        raise ValueError(_lane_refusal(u.shape[1], B.shape[1], C.shape[1], z is not None, chunk))
    batch, dim, length = u.shape
    dstate = A.shape[1]
    gb, gc = B.shape[1], C.shape[1]
    dev = u.device
    u, delta, dy = u.contiguous(), delta.contiguous(), dy.contiguous()
    A = A.contiguous()
    z = None if z is None else z.contiguous()
    Bt = B.transpose(-1, -2).contiguous()
    Ct = C.transpose(-1, -2).contiguous()
    bd, nw = _pick_block(dim // gb, dim // gc, block_d, num_warps)
    TB = v * j
    if chunk % TB:
        raise ValueError(f"selective_scan_triton: chunk={chunk} must be a multiple of 4*j={TB}")
    if j != 2:
        raise ValueError(f"selective_scan_triton: backward j must be 2, got {j}")
    K = chunk // TB
    nc = hs.shape[1]
    nblk = dim // bd
    f32 = torch.float32
    # program-private scratch: states at sub-chunk starts and the adjoint carried between sub-chunks
    hsub = torch.empty((batch, K, dstate, dim), dtype=f32, device=dev) if K > 1 else hs
    dcarry = dhl.to(f32).transpose(1, 2).contiguous()  # (batch, N, Dm)
    du = _alloc(u.shape, u.dtype, dev)
    ddl = _alloc(delta.shape, delta.dtype, dev)
    dz = _alloc(z.shape, z.dtype, dev) if z is not None else None
    dA_part = torch.zeros((batch, dstate, dim), dtype=f32, device=dev)
    dD_part = _alloc((batch, dim), f32, dev) if D is not None else None
    db_part = _alloc((batch, dim), f32, dev) if delta_bias is not None else None
    dB_part = _alloc((batch, nblk, dstate, length), f32, dev)
    dC_part = _alloc((batch, nblk, dstate, length), f32, dev)
    dummy = u
    grid = (nblk, batch)
    _ss_bwd_kernel[grid](
        u, delta, A, B, C, Bt, Ct,
        D if D is not None else dummy,
        z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        dy, hs, hsub, dcarry,
        du, ddl,
        dz if dz is not None else dummy,
        dA_part,
        dD_part if dD_part is not None else dummy,
        db_part if db_part is not None else dummy,
        dB_part, dC_part,
        dim, length, dstate, nc, nblk, dim // gb, dim // gc,
        B.stride(0), B.stride(1), B.stride(2), B.stride(3),
        C.stride(0), C.stride(1), C.stride(2), C.stride(3),
        Bt.stride(0), Bt.stride(1), Bt.stride(2), Ct.stride(0), Ct.stride(1), Ct.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        NP=_next_pow2(dstate), BD=bd, J=j, V=v, K=K,
        num_warps=nw, **_reg_cap(maxnreg, u),
    )
    dA = dA_part.sum(0).t().contiguous().to(A.dtype)
    dB = dB_part.view(batch, gb, nblk // gb, dstate, length).sum(2).to(B.dtype)
    dC = dC_part.view(batch, gc, nblk // gc, dstate, length).sum(2).to(C.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else u.new_empty(0)
    dbias = db_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)
    return du, ddl, dA, dB, dC, dD, (dz if dz is not None else u.new_empty(0)), dbias


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("m3amba::selective_scan_fwd", mutates_args=())
def selective_scan_fwd_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
    delta_softplus: bool, chunk: int, block_d: int, num_warps: int, j: int, v: int, maxnreg: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Forward kernel: ``(y, h_last, saved chunk states)``; ``B``/``C`` grouped 4-D."""
    return _fwd_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk,
                     block_d or None, num_warps, j, v, maxnreg)


@selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, block_d, num_warps, j, v, maxnreg):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    nc = -(-length // chunk)
    return (
        torch.empty_like(u, memory_format=torch.contiguous_format),
        u.new_empty((batch, dim, dstate), dtype=torch.float32),
        u.new_empty((batch, nc, dstate, dim), dtype=torch.float32),
    )


@torch.library.custom_op("m3amba::selective_scan_bwd", mutates_args=())
def selective_scan_bwd_op(
    dy: Tensor, dh_last: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], saved_states: Tensor,
    delta_softplus: bool, chunk: int, block_d: int, num_warps: int, j: int, v: int, maxnreg: int,
    bwd_kind: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward kernel: ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)`` (empty for absent inputs).

    ``bwd_kind``: :data:`BWD_AUTO` (the lane kernel where it applies, else the tile kernel),
    :data:`BWD_TILE` or :data:`BWD_LANE`; ``block_d`` .. ``maxnreg`` launch the tile kernel.
    (Not named ``kernel``: inductor's fallback for custom ops takes an argument of that name.)
    """
    return _bwd_impl(dy, dh_last, u, delta, A, B, C, D, z, delta_bias, saved_states, delta_softplus,
                     chunk, block_d or None, num_warps, j, v, maxnreg, bwd_kind)


@selective_scan_bwd_op.register_fake
def _(dy, dh_last, u, delta, A, B, C, D, z, delta_bias, saved_states, delta_softplus, chunk,
      block_d, num_warps, j, v, maxnreg, bwd_kind):
    def like(x):
        if x is None:
            return u.new_empty(0)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    return like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias)


class SelectiveScanTritonFn(torch.autograd.Function):
    """Autograd wrapper of the two custom ops (``B``/``C`` must be 4-D)."""

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, cfg: Tuple[int, ...]):
        chunk, fbd, fnw, fj, fv, fr, bbd, bnw, bj, bv, br, bk = cfg
        y, h_last, hs = torch.ops.m3amba.selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, fbd, fnw, fj, fv, fr
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hs)
        ctx.delta_softplus = delta_softplus
        ctx.cfg = (chunk, bbd, bnw, bj, bv, br, bk)
        ctx.mark_non_differentiable(hs)
        return y, h_last, hs

    @staticmethod
    def backward(ctx: Any, dy, dh_last, _dhs):
        u, delta, A, B, C, D, z, delta_bias, hs = ctx.saved_tensors
        chunk, bbd, bnw, bj, bv, br, bk = ctx.cfg
        if dy is None:
            dy = torch.zeros_like(u)
        if dh_last is None:
            dh_last = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
        du, ddl, dA, dB, dC, dD, dz, dbias = torch.ops.m3amba.selective_scan_bwd(
            dy, dh_last, u, delta, A, B, C, D, z, delta_bias, hs, ctx.delta_softplus,
            chunk, bbd, bnw, bj, bv, br, bk,
        )
        return (
            du, ddl, dA, dB, dC,
            dD if D is not None else None,
            dz if z is not None else None,
            dbias if delta_bias is not None else None,
            None, None,
        )


def selective_scan_triton(
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
    *,
    chunk: int = CHUNK_DEFAULT,
    fwd_block_d: Optional[int] = None,
    fwd_num_warps: Optional[int] = None,
    fwd_j: Optional[int] = None,
    bwd_block_d: Optional[int] = None,
    bwd_num_warps: Optional[int] = None,
    bwd_j: Optional[int] = None,
    fwd_v: Optional[int] = None,
    bwd_v: Optional[int] = None,
    fwd_maxnreg: Optional[int] = None,
    bwd_maxnreg: Optional[int] = None,
    bwd_kernel: str = "auto",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan with Triton kernels (backend ``"triton"``).

    Arguments and return value are those of
    :func:`m3amba.ops.selective_scan.selective_scan_fn`.  The keyword-only
    launch parameters only affect speed (``chunk``: steps between the states
    saved for backward; ``*_block_d``: channels per program; ``*_num_warps``;
    ``*_j``: time tile of ``4 * j`` steps); defaults in :data:`FWD_DEFAULTS`,
    :data:`BWD_DEFAULTS` (:data:`BWD_DEFAULTS_16BIT` for bf16/fp16 inputs) and
    ``CHUNK_DEFAULT``.  ``bwd_kernel``: ``"auto"`` (the lane backward of
    :mod:`.triton_bwd_lane` for gate-free calls with 32 | Dm / G, else the tile
    backward of this module), ``"tile"`` or ``"lane"``; the ``bwd_*`` launch
    parameters apply to the tile backward.  float64 inputs are computed by
    the ``"torch"`` backend.
    """
    if bwd_kernel not in _BWD_KERNELS:
        raise ValueError(f"selective_scan_triton: bwd_kernel must be one of {sorted(_BWD_KERNELS)}, got {bwd_kernel!r}")
    if bwd_kernel == "lane":  # refused at the call, not only when the backward runs
        groups = [t.shape[1] if t.dim() == 4 else 1 for t in (B, C)]
        if not lane_bwd_supported(u.shape[1], groups[0], groups[1], z is not None, chunk):
            raise ValueError(_lane_refusal(u.shape[1], groups[0], groups[1], z is not None, chunk))
    validate_inputs(u, delta, A, B, C, D, z, delta_bias)
    if any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z, delta_bias)):
        from .chunked import selective_scan_chunked

        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    fj = fwd_j or FWD_DEFAULTS["j"]
    bwd_defaults = BWD_DEFAULTS_16BIT if u.element_size() == 2 else BWD_DEFAULTS
    bj = bwd_j or bwd_defaults["j"]
    fv = fwd_v or FWD_DEFAULTS["v"]
    bv = bwd_v or bwd_defaults["v"]
    _check_chunk(chunk, fv * fj, bv * bj)
    cfg = (
        int(chunk),
        int(fwd_block_d or FWD_DEFAULTS["block_d"] or 0),
        int(fwd_num_warps or FWD_DEFAULTS["num_warps"]),
        int(fj),
        int(fv),
        int(fwd_maxnreg if fwd_maxnreg is not None else FWD_DEFAULTS["maxnreg"]),
        int(bwd_block_d or bwd_defaults["block_d"] or 0),
        int(bwd_num_warps or bwd_defaults["num_warps"]),
        int(bj),
        int(bv),
        int(bwd_maxnreg if bwd_maxnreg is not None else bwd_defaults["maxnreg"]),
        _BWD_KERNELS[bwd_kernel],
    )
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    y, h_last, _ = SelectiveScanTritonFn.apply(u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus), cfg)
    return (y, h_last) if return_last_state else y
