"""Triton selective-scan backward with one lane per channel and butterfly channel sums.

The ``"triton"`` backend's default backward for gate-free calls whose channels per group
(``Dm / G`` of ``B`` and of ``C``) are multiples of 32, which is every SS2D and Cross-SS2D scan
of the model. Other calls take :mod:`.triton_scan`'s tile backward.

Layout of the work
------------------
One program is one warp: one batch element and 32 channels of one group, one channel per lane.
Time goes in sub-chunks of 8 steps held in-thread as ``(32, 2, 2, 2)`` tiles (step
``4 a + 2 b + c``), so picking a step out of a tile is a split, not arithmetic. The 16 (or N)
states are visited one at a time in an inner loop; a state's recurrences over a sub-chunk stay
in one thread and need no communication.

* Phase 1, once per saved chunk (the forward kernel saves the state entering every chunk of
  ``CHUNK`` steps): run the forward recurrence over the chunk and store the state entering every
  sub-chunk in a small program-private scratch buffer (it stays in L2).
* Phase 2, sub-chunks from last to first, state by state: recompute ``h_t`` over the sub-chunk
  from its entry state, run the adjoint ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` backwards
  (its value leaving the sub-chunk is carried in a per-state scratch slot), and accumulate the
  per-channel gradients (``du``, ``d delta``, ``dA``, ``dD``, bias).

Where ``u``, ``delta``, ``dy`` and the gradients live is a :class:`._layout.SeqLayout`: contiguous
``(batch, Dm, L)`` rows (tiles loaded as two 4-step halves), or the 2-D cross-scan of
:mod:`.triton_scan2d`, whose steps are gathered at their tokens one step at a time
(:func:`ld8_tokens`), 32 adjacent channels a load.

``dB_t[n]`` and ``dC_t[n]`` are sums over the channels of a group, i.e. over the lanes. The 16
values a lane holds per state and sub-chunk (8 steps of each) are summed with a transposed
butterfly: at each of the five levels a lane keeps half of its values and adds its partner's
copy of that half, so the whole sum costs 16 shuffles instead of the 80 of sixteen separate
reductions, and ends with one finished sum per lane pair, which that pair stores. Partial sums of
the ``Dm / G / 32`` programs of a group are added by torch afterwards (deterministic, no atomics).

The partner's value is a ``tl.gather`` along the channel axis. Triton lowers a gather within one
warp to shuffles (``SHFL.BFLY`` in the SASS, one a value); unlike a shuffle in inline PTX it stays
correct whichever register layout Triton chooses for a tile (that layout depends on the
divisibility Triton can prove for ``L``: with inline PTX the first version was right at L = 1024
and wrong at L = 77). The interpreter runs the same code, so the CPU tests check the butterfly.

On an H100 at M3amba-base's shape (bf16, batch 64, Dm 3072, G 4, N 16, L 1024, chunk 64) this
backward took 11.2 ms, mamba-ssm's 13.4 ms and the tile backward 17.5 ms (docs/benchmarks.md).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ._layout import SeqLayout, plain_layout

try:  # optional, like the rest of the Triton backend
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["LANE_CHANNELS", "LANE_BWD_DEFAULTS", "lane_bwd_supported", "bwd_lane"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: channels a program (one warp, one lane each)
LANE_CHANNELS = 32
#: steps of a sub-chunk (the in-thread time tile)
_STEPS = 8
#: launch defaults: register cap per thread (0: none)
LANE_BWD_DEFAULTS = dict(maxnreg=0)


def lane_bwd_supported(dim: int, groups_b: int, groups_c: int, has_gate: bool, chunk: int) -> bool:
    """Whether this backward serves a call: no gate, 32 | Dm / G for B and C, 8 | chunk."""
    return (
        HAS_TRITON
        and not has_gate
        and dim % groups_b == 0
        and dim % groups_c == 0
        and (dim // groups_b) % LANE_CHANNELS == 0
        and (dim // groups_c) % LANE_CHANNELS == 0
        and chunk % _STEPS == 0
    )


if HAS_TRITON:

    @triton.jit
    def _log2_approx(x, ASM: tl.constexpr):
        # the special-function unit's log2 (tl.log2 compiles to a ~20-instruction polynomial)
        if ASM:
            return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            return tl.log2(x)

    @triton.jit
    def _softplus(x, ASM: tl.constexpr):
        # max(x, 0) + ln(1 + e^-|x|) on the approximate exp2/log2 units (absolute error ~1e-7)
        e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
        return tl.maximum(x, 0.0) + _log2_approx(1.0 + e, ASM) * 0.6931471805599453

    @triton.jit
    def _shfl_xor(x, MASK: tl.constexpr):
        # x[i ^ MASK] along axis 0 (the lanes). A warp-local tl.gather compiles to one shuffle a value
        # (SHFL.BFLY) and, unlike inline PTX, follows whatever register layout Triton picked
        idx = tl.arange(0, x.shape[0]) ^ MASK
        for _ in tl.static_range(len(x.shape) - 1):
            idx = idx[:, None]
        return tl.gather(x, tl.broadcast_to(idx, x.shape), 0)

    @triton.jit
    def _halve(x, lane, BIT: tl.constexpr):
        # one butterfly level: lanes with bit BIT set keep the upper half of x's last axis, the
        # others the lower half, and each adds its partner's copy of the half it keeps
        lo, hi = tl.split(x)
        up = ((lane >> BIT) & 1) != 0
        send = tl.where(up, lo, hi)
        keep = tl.where(up, hi, lo)
        return keep + _shfl_xor(send, 1 << BIT)

    @triton.jit
    def _steps8(t0, L):
        # the steps t0 .. t0+7 of a sub-chunk as two (1, 4) halves, and which lie inside the sequence
        t = tl.arange(0, 4)[None, :]
        return t0 + t, t0 + 4 + t, (t0 + t) < L, (t0 + 4 + t) < L

    @triton.jit
    def _ld1(ptr, row, perm_k, t, L, s_l, EVEN: tl.constexpr):
        # (C,) fp32: step t of every lane's sequence, stored at token perm_k[t] (0 beyond L)
        if EVEN:
            return tl.load(ptr + (row + tl.load(perm_k + t) * s_l)).to(tl.float32)
        else:
            inside = (row * 0 + t) < L
            return tl.load(ptr + (row + tl.load(perm_k + t, mask=t < L, other=0) * s_l), mask=inside,
                           other=0.0).to(tl.float32)

    @triton.jit
    def _st1(ptr, row, perm_k, t, L, s_l, x, EVEN: tl.constexpr):
        # store (C,) values as step t (see :func:`_ld1`)
        if EVEN:
            tl.store(ptr + (row + tl.load(perm_k + t) * s_l), x.to(ptr.dtype.element_ty))
        else:
            inside = (row * 0 + t) < L
            tl.store(ptr + (row + tl.load(perm_k + t, mask=t < L, other=0) * s_l), x.to(ptr.dtype.element_ty),
                     mask=inside)

    @triton.jit
    def ld8_tokens(ptr, row, perm_k, t0, L, s_l, EVEN: tl.constexpr):
        """(C, 2, 2, 2) fp32 tile of steps t0 .. t0+7 (step 4 a + 2 b + c) read at their tokens.

        Eight (C,) loads, one a step, joined: a join adds an in-thread axis, so the tile has one
        channel a lane and its steps in-thread. (A load shaped like the tile would be laid out along
        the channels, the contiguous axis here, and converted through shared memory at every use.)
        """
        c0 = tl.join(tl.join(_ld1(ptr, row, perm_k, t0, L, s_l, EVEN), _ld1(ptr, row, perm_k, t0 + 4, L, s_l, EVEN)),
                     tl.join(_ld1(ptr, row, perm_k, t0 + 2, L, s_l, EVEN), _ld1(ptr, row, perm_k, t0 + 6, L, s_l, EVEN)))
        c1 = tl.join(tl.join(_ld1(ptr, row, perm_k, t0 + 1, L, s_l, EVEN), _ld1(ptr, row, perm_k, t0 + 5, L, s_l, EVEN)),
                     tl.join(_ld1(ptr, row, perm_k, t0 + 3, L, s_l, EVEN), _ld1(ptr, row, perm_k, t0 + 7, L, s_l, EVEN)))
        return tl.join(c0, c1)

    @triton.jit
    def st8_tokens(ptr, row, perm_k, t0, L, s_l, x, EVEN: tl.constexpr):
        """Store a tile of :func:`ld8_tokens`'s layout at its steps' tokens."""
        c0, c1 = tl.split(x)  # c = 0, 1: (C, a, b)
        p0, p2 = tl.split(c0)  # (b, c) = (0, 0), (1, 0): (C, a)
        p1, p3 = tl.split(c1)  # (0, 1), (1, 1)
        s0, s4 = tl.split(p0)
        s2, s6 = tl.split(p2)
        s1, s5 = tl.split(p1)
        s3, s7 = tl.split(p3)
        _st1(ptr, row, perm_k, t0, L, s_l, s0, EVEN)
        _st1(ptr, row, perm_k, t0 + 1, L, s_l, s1, EVEN)
        _st1(ptr, row, perm_k, t0 + 2, L, s_l, s2, EVEN)
        _st1(ptr, row, perm_k, t0 + 3, L, s_l, s3, EVEN)
        _st1(ptr, row, perm_k, t0 + 4, L, s_l, s4, EVEN)
        _st1(ptr, row, perm_k, t0 + 5, L, s_l, s5, EVEN)
        _st1(ptr, row, perm_k, t0 + 6, L, s_l, s6, EVEN)
        _st1(ptr, row, perm_k, t0 + 7, L, s_l, s7, EVEN)

    @triton.jit
    def _seq8(ptr, row, perm_k, t0, L, s_l, EVEN: tl.constexpr, XS: tl.constexpr):
        # (32, 2, 2, 2) tile of steps t0 .. t0+7 of the lanes' sequences (rows start at row, (32,))
        if XS:
            return ld8_tokens(ptr, row, perm_k, t0, L, s_l, EVEN)
        else:
            q0, q1, m0, m1 = _steps8(t0, L)
            return _ld8(ptr, row[:, None], q0, q1, m0, m1, EVEN)

    @triton.jit
    def _seq8_store(ptr, row, perm_k, t0, L, s_l, x, EVEN: tl.constexpr, XS: tl.constexpr):
        # store a tile of :func:`_seq8`
        if XS:
            st8_tokens(ptr, row, perm_k, t0, L, s_l, x, EVEN)
        else:
            q0, q1, m0, m1 = _steps8(t0, L)
            _st8(ptr, row[:, None], q0, q1, m0, m1, x, EVEN)

    @triton.jit
    def _ld8(ptr, row, p0, p1, m0, m1, EVEN: tl.constexpr):
        # (32, 2, 2, 2) fp32 tile of the 8 steps at offsets p0, p1 (two (1, 4) halves) past the lanes'
        # row starts (0 where masked off), step = 4 a + 2 b + c. Loaded as two (32, 4) halves, 4
        # values a thread whatever the dtype, so the layout (one channel a lane, the 8 steps
        # in-thread) depends neither on the element size nor on where the steps are stored
        if EVEN:
            x0 = tl.load(ptr + (row + p0))
            x1 = tl.load(ptr + (row + p1))
        else:
            x0 = tl.load(ptr + (row + p0), mask=m0, other=0.0)
            x1 = tl.load(ptr + (row + p1), mask=m1, other=0.0)
        x = tl.reshape(tl.join(x0.to(tl.float32), x1.to(tl.float32)), (x0.shape[0], 2, 2, 2))
        return tl.permute(x, (0, 3, 1, 2))

    @triton.jit
    def _st8(ptr, row, p0, p1, m0, m1, x, EVEN: tl.constexpr):
        # store a tile of :func:`_ld8`'s layout (cast to the pointer's dtype)
        x0, x1 = tl.split(tl.reshape(tl.permute(x, (0, 2, 3, 1)), (x.shape[0], 4, 2)))
        x0 = x0.to(ptr.dtype.element_ty)
        x1 = x1.to(ptr.dtype.element_ty)
        if EVEN:
            tl.store(ptr + (row + p0), x0)
            tl.store(ptr + (row + p1), x1)
        else:
            tl.store(ptr + (row + p0), x0, mask=m0)
            tl.store(ptr + (row + p1), x1, mask=m1)

    @triton.jit
    def _step(x, I: tl.constexpr):
        # step I (compile time) of a (32, 2, 2, 2) tile: three in-thread splits, no arithmetic
        lo, hi = tl.split(x)
        if I % 2 == 0:
            y = lo
        else:
            y = hi
        lo, hi = tl.split(y)
        if (I // 2) % 2 == 0:
            y = lo
        else:
            y = hi
        lo, hi = tl.split(y)
        if I // 4 == 0:
            y = lo
        else:
            y = hi
        return y

    @triton.jit
    def _bc(v):
        # a per-lane (32,) value broadcast against (32, 2, 2, 2) tiles
        return v[:, None, None, None]

    @triton.jit
    def _tsum(x):
        # sum of a (32, 2, 2, 2) tile over its 8 steps
        return tl.sum(tl.sum(tl.sum(x, axis=3), axis=2), axis=1)

    @triton.jit
    def _dt(dl_ptr, row, perm_k, t0, L, s_l, mt, bias, SOFTPLUS: tl.constexpr, EVEN: tl.constexpr,
            ASM: tl.constexpr, XS: tl.constexpr):
        """Pre-softplus ``delta + bias`` and the step size ``dt`` (0 beyond L) of a sub-chunk."""
        x = _seq8(dl_ptr, row, perm_k, t0, L, s_l, EVEN, XS) + bias
        if SOFTPLUS:
            dt = _softplus(x, ASM)
        else:
            dt = x
        return x, tl.where(mt, dt, 0.0)

    @triton.jit
    def _ss_bwd_lane_kernel(
        u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, perm_ptr,
        hs_ptr, hsub_ptr, carry_ptr,
        du_ptr, ddl_ptr, dA_ptr, dD_ptr, dbias_ptr, dbc_ptr,
        Dm, L, N, nc, nblk, dpg_b, dpg_c, batch, Di,
        sBb, sBg, sBn, sCb, sCg, sCn,
        su_b, su_k, su_d, sd_b, sd_k, sd_d, sy_b, sy_k, sy_d, s_l,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        NP: tl.constexpr, K: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, XS: tl.constexpr,
    ):
        # grid (Dm // 32, batch); sub-chunks of 8 steps, K of them per saved chunk; EVEN: N == NP
        # and 8 | L, so no load needs a mask. Addresses of u, delta (and du, ddelta) and dy: see
        # SeqLayout (su_*, sd_*, sy_*, s_l, perm_ptr with XS)
        BD: tl.constexpr = 32
        TB: tl.constexpr = 8
        CHUNK: tl.constexpr = K * TB
        LOG2E: tl.constexpr = 1.4426950408889634
        pid_d = tl.program_id(0)
        pid_b = tl.program_id(1)
        b64 = pid_b.to(tl.int64)
        d0 = pid_d * BD
        lane = tl.arange(0, BD)
        offs_d = d0 + lane
        kdir = d0 // Di
        k64 = kdir.to(tl.int64)
        dd = (offs_d - kdir * Di).to(tl.int64)
        row_u = b64 * su_b + k64 * su_k + dd * su_d  # (32,) row starts
        row_d = b64 * sd_b + k64 * sd_k + dd * sd_d
        row_y = b64 * sy_b + k64 * sy_k + dd * sy_d
        perm_k = perm_ptr + kdir * L
        zero = (lane * 0)[:, None]  # B / C rows: every lane reads the same steps
        tt = (4 * tl.arange(0, 2)[:, None, None] + 2 * tl.arange(0, 2)[None, :, None]
              + tl.arange(0, 2)[None, None, :])[None, :, :, :]  # (1, 2, 2, 2) step index
        Bp = B_ptr + b64 * sBb + (d0 // dpg_b) * sBg
        Cp = C_ptr + b64 * sCb + (d0 // dpg_c) * sCg
        hs_b = hs_ptr + b64 * nc * N * Dm + offs_d
        hsub_b = hsub_ptr + b64 * K * N * Dm + offs_d
        carry_b = carry_ptr + b64 * N * Dm + offs_d
        dA_b = dA_ptr + b64 * N * Dm + offs_d
        # where the butterfly leaves each finished sum: lane bit 4 picks dC (0) or dB (1), bits
        # 3, 2, 1 the step's bits 0, 1, 2; lanes 2k and 2k+1 hold the same sum, the even one stores it
        red_kind = (lane >> 4) & 1
        red_step = ((lane >> 3) & 1) + ((lane >> 2) & 1) * 2 + ((lane >> 1) & 1) * 4
        red_ptr = dbc_ptr + ((red_kind.to(tl.int64) * batch + b64) * nblk + pid_d) * N * L + red_step
        red_mask = (lane & 1) == 0
        if HAS_D:
            Dv = _bc(tl.load(D_ptr + offs_d).to(tl.float32))
        if HAS_BIAS:
            bias = _bc(tl.load(bias_ptr + offs_d).to(tl.float32))
        else:
            bias = 0.0
        dD_acc = tl.zeros((BD,), dtype=tl.float32)
        db_acc = tl.zeros((BD,), dtype=tl.float32)
        for ci in range(nc):
            c = nc - 1 - ci
            ks = (L - c * CHUNK + TB - 1) // TB  # sub-chunks inside the sequence: min(K, ...)
            ks = ks - (ks - K) * (ks > K)
            # ---- phase 1: the state entering every sub-chunk of this chunk, state by state
            for n in range(NP):
                nm = ((lane * 0 + n) < N) | EVEN
                tl.store(hsub_b + n * Dm, tl.load(hs_b + (c * N + n) * Dm, mask=nm, other=0.0), mask=nm)
            for s in range(ks - 1):
                t0 = c * CHUNK + s * TB
                mt = ((t0 + tt) < L) | EVEN
                q0, q1, m0, m1 = _steps8(t0, L)
                x8, dt8 = _dt(dl_ptr, row_d, perm_k, t0, L, s_l, mt, bias, SOFTPLUS, EVEN, ASM, XS)
                dtu8 = dt8 * _seq8(u_ptr, row_u, perm_k, t0, L, s_l, EVEN, XS)
                for n in range(NP):
                    nm = ((lane * 0 + n) < N) | EVEN
                    A2 = tl.load(A_ptr + offs_d * N + n, mask=nm, other=0.0).to(tl.float32) * LOG2E
                    a8 = tl.exp2(dt8 * _bc(A2))
                    xb8 = dtu8 * _ld8(Bp + n * sBn, zero, q0, q1, m0 & (n < N), m1 & (n < N), EVEN)
                    h = tl.load(hsub_b + (s * N + n) * Dm, mask=nm, other=0.0)
                    for i in tl.static_range(TB):
                        h = _step(a8, i) * h + _step(xb8, i)
                    tl.store(hsub_b + ((s + 1) * N + n) * Dm, h, mask=nm)
            # ---- phase 2: sub-chunks backwards
            for si in range(ks):
                s = ks - 1 - si
                t0 = c * CHUNK + s * TB
                mt = ((t0 + tt) < L) | EVEN
                q0, q1, m0, m1 = _steps8(t0, L)
                u8 = _seq8(u_ptr, row_u, perm_k, t0, L, s_l, EVEN, XS)
                x8, dt8 = _dt(dl_ptr, row_d, perm_k, t0, L, s_l, mt, bias, SOFTPLUS, EVEN, ASM, XS)
                dy8 = _seq8(dy_ptr, row_y, perm_k, t0, L, s_l, EVEN, XS)
                dtu8 = dt8 * u8
                acc_dtu = tl.zeros_like(dt8)  # d loss / d (dt u)
                acc_ddt = tl.zeros_like(dt8)  # d loss / d dt through the decay
                for n in range(NP):
                    nm = ((lane * 0 + n) < N) | EVEN
                    An = tl.load(A_ptr + offs_d * N + n, mask=nm, other=0.0).to(tl.float32)
                    a8 = tl.exp2(dt8 * _bc(An * LOG2E))
                    b8 = _ld8(Bp + n * sBn, zero, q0, q1, m0 & (n < N), m1 & (n < N), EVEN)
                    c8 = _ld8(Cp + n * sCn, zero, q0, q1, m0 & (n < N), m1 & (n < N), EVEN)
                    xb8 = dtu8 * b8
                    # h over the sub-chunk: before (hp8) and after (hc8) each step
                    h = tl.load(hsub_b + (s * N + n) * Dm, mask=nm, other=0.0)
                    hp8 = tl.zeros_like(dt8)
                    hc8 = tl.zeros_like(dt8)
                    for i in tl.static_range(TB):
                        hp8 = tl.where(tt == i, _bc(h), hp8)
                        h = _step(a8, i) * h + _step(xb8, i)
                        hc8 = tl.where(tt == i, _bc(h), hc8)
                    # adjoint, backwards; g enters as exp(dt_{t+1} A) g_{t+1} from the next sub-chunk
                    cdy8 = c8 * dy8
                    g = tl.load(carry_b + n * Dm, mask=nm, other=0.0)
                    gh8 = tl.zeros_like(dt8)
                    for ii in tl.static_range(TB):
                        g = g + _step(cdy8, TB - 1 - ii)
                        gh8 = tl.where(tt == TB - 1 - ii, _bc(g), gh8)
                        g = g * _step(a8, TB - 1 - ii)
                    tl.store(carry_b + n * Dm, g, mask=nm)
                    acc_dtu += gh8 * b8
                    q8 = gh8 * a8 * hp8  # d loss / d (dt A)
                    acc_ddt += q8 * _bc(An)
                    tl.store(dA_b + n * Dm, tl.load(dA_b + n * Dm, mask=nm, other=0.0) + _tsum(q8 * dt8), mask=nm)
                    # lane sums of dC_t = sum_d h_t dy_t and dB_t = sum_d g_t dt_t u_t
                    r = tl.join(hc8 * dy8, gh8 * dtu8)
                    r = _halve(r, lane[:, None, None, None], 4)
                    r = _halve(r, lane[:, None, None], 3)
                    r = _halve(r, lane[:, None], 2)
                    r = _halve(r, lane, 1)
                    r = r + _shfl_xor(r, 1)
                    tl.store(red_ptr + n * L + t0, r, mask=red_mask & ((t0 + red_step) < L) & nm)
                du8 = acc_dtu * dt8
                ddt8 = acc_ddt + acc_dtu * u8
                if HAS_D:
                    du8 += Dv * dy8
                    dD_acc += _tsum(dy8 * u8)
                if SOFTPLUS:
                    # sigmoid(x) = exp(x - softplus(x)), and dt8 is softplus(x) inside the sequence
                    ddl8 = ddt8 * tl.exp2((x8 - dt8) * LOG2E)
                else:
                    ddl8 = ddt8
                ddl8 = tl.where(mt, ddl8, 0.0)
                if HAS_BIAS:
                    db_acc += _tsum(ddl8)
                _seq8_store(du_ptr, row_d, perm_k, t0, L, s_l, du8, EVEN, XS)
                _seq8_store(ddl_ptr, row_d, perm_k, t0, L, s_l, ddl8, EVEN, XS)
        if HAS_D:
            tl.store(dD_ptr + b64 * Dm + offs_d, dD_acc)
        if HAS_BIAS:
            tl.store(dbias_ptr + b64 * Dm + offs_d, db_acc)


def bwd_lane(dy: Tensor, dh_last: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Optional[Tensor], delta_bias: Optional[Tensor], saved_states: Tensor, delta_softplus: bool,
             chunk: int, alloc: Callable, maxnreg: int = 0, layout: Optional[SeqLayout] = None) -> Tuple[Tensor, ...]:
    """Gradients ``(du, ddelta, dA, dB, dC, dD, ddelta_bias)`` of a gate-free scan.

    ``B``/``C`` are grouped (4-D); ``saved_states`` are the forward kernel's states entering each
    chunk of ``chunk`` steps, ``(batch, L / chunk, N, Dm)`` fp32; ``dh_last`` is the gradient of
    the final state ``(batch, Dm, N)``. ``alloc(shape, dtype, device)`` makes the output buffers
    (the tests poison them). ``dD``/``ddelta_bias`` are None for absent inputs.

    ``layout``: where the kernel finds ``u``, ``delta`` and ``dy`` (default: contiguous
    ``(batch, Dm, L)``); ``du`` and ``ddelta`` come out shaped and laid out like ``delta``.
    """
    if not HAS_TRITON:
        raise RuntimeError("the lane backward needs triton")
    batch, dim, length = u.shape[0], A.shape[0], B.shape[-1]
    dstate = A.shape[1]
    gb, gc = B.shape[1], C.shape[1]
    if not lane_bwd_supported(dim, gb, gc, False, chunk):
        raise ValueError(f"lane backward: needs 32 | Dm / G and 8 | chunk, got Dm={dim}, G={gb}/{gc}, chunk={chunk}")
    dev = u.device
    f32 = torch.float32
    if layout is None:
        u, delta, dy = u.contiguous(), delta.contiguous(), dy.contiguous()
        layout = plain_layout(dim, length)
    Bf, Cf = B.to(f32).contiguous(), C.to(f32).contiguous()  # small; no per-step unpacking in the kernel
    A = A.contiguous()
    k = chunk // _STEPS
    nc = saved_states.shape[1]
    nblk = dim // LANE_CHANNELS
    np_ = 1 << max(0, (dstate - 1).bit_length())
    hsub = torch.empty((batch, k, dstate, dim), dtype=f32, device=dev)  # program-private scratch
    carry = dh_last.to(f32).transpose(1, 2).contiguous()  # (batch, N, Dm), updated in place
    du = alloc(delta.shape, u.dtype, dev)
    ddl = alloc(delta.shape, delta.dtype, dev)
    dA_part = torch.zeros((batch, dstate, dim), dtype=f32, device=dev)
    dD_part = alloc((batch, dim), f32, dev) if D is not None else None
    db_part = alloc((batch, dim), f32, dev) if delta_bias is not None else None
    dbc = alloc((2, batch, nblk, dstate, length), f32, dev)  # [0]: dC, [1]: dB partial sums
    opts = {"maxnreg": int(maxnreg)} if maxnreg and u.is_cuda and not _INTERPRET else {}
    _ss_bwd_lane_kernel[(nblk, batch)](
        u, delta, A, Bf, Cf, D if D is not None else u, delta_bias if delta_bias is not None else u, dy,
        layout.perm if layout.perm is not None else u,
        saved_states, hsub, carry, du, ddl, dA_part,
        dD_part if dD_part is not None else u, db_part if db_part is not None else u, dbc,
        dim, length, dstate, nc, nblk, dim // gb, dim // gc, batch, layout.di,
        Bf.stride(0), Bf.stride(1), Bf.stride(2), Cf.stride(0), Cf.stride(1), Cf.stride(2),
        *layout.su, *layout.sd, *layout.sy, layout.s_l,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        NP=np_, K=k, EVEN=np_ == dstate and length % _STEPS == 0, ASM=not _INTERPRET, XS=layout.perm is not None,
        num_warps=1, **opts,
    )
    dA = dA_part.sum(0).t().contiguous().to(A.dtype)
    dC = dbc[0].view(batch, gc, nblk // gc, dstate, length).sum(2).to(C.dtype)
    dB = dbc[1].view(batch, gb, nblk // gb, dstate, length).sum(2).to(B.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    dbias = db_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddl, dA, dB, dC, dD, dbias
