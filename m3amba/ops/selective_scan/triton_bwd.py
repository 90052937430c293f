"""Triton selective-scan backward, state-resident variant (``bwd_kernel="states"``).

Why a second backward: the per-state kernel of :mod:`.triton_scan` loops over the N states with the
time axis in registers, so the adjoint and ``dA`` of every state make a round trip through memory
on each sub-chunk, and its register demand spills; on an H100 it issues ~65 instructions per
(channel, step, state) and is latency-bound (docs/benchmarks.md). Here one lane owns one channel
and all N of its states:

* the adjoint ``dh`` and the ``dA`` accumulator stay in registers from the last step to the first;
* time advances in sub-chunks of ``T = 4`` steps: the states of a sub-chunk are recomputed from its
  starting state (phase 1 of each chunk writes those to a small L2-resident scratch buffer, as in
  the per-state kernel) and kept in registers while the adjoint walks back over the four steps;
* every per-step sum over states (``du``, ``ddelta``, the pre-gate output for ``dz``) is in-thread;
* the per-step sums over channels that ``dB`` and ``dC`` need are one small matrix product per
  step, ``ones(16, BD) @ [P_C | P_B]`` on the tensor cores (tf32, or the three-pass tf32 split for
  fp32 inputs so that fp32 keeps fp32 accuracy), instead of warp-shuffle trees; each program writes
  one partial per (step, state) and torch sums the partials of a group afterwards (deterministic).

Inputs and outputs are those of :func:`m3amba.ops.selective_scan.triton_scan._bwd_impl`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .triton_scan import HAS_TRITON, _alloc, _next_pow2, _reg_cap

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_scan import _col, _gather_state, _ld, _load_dt, _scatter_state, _sigmoid, _st

__all__ = ["bwd_states_impl", "STATES_T"]

#: time steps per sub-chunk (the recomputed states of a sub-chunk are held in registers)
STATES_T = 4
_LN2 = 0.6931471805599453

if HAS_TRITON:

    @triton.jit
    def _advance(h, A2, dt_i, dtu_i, b_i):
        # one step of the recurrence for all N states of every channel of the block
        return tl.exp2(dt_i[:, None] * A2) * h + dtu_i[:, None] * b_i[None, :]

    @triton.jit
    def _channel_sums(pc, pb, ones, DOT: tl.constexpr, PREC: tl.constexpr):
        """Sums over the block's channels of two (BD, NP) tiles, interleaved as (rows, 2 NP).

        With DOT: ``ones(16, BD) @ [pc | pb]`` (every row of the result is the sum); else a
        shuffle reduction (one row).
        """
        p = tl.reshape(tl.join(pc, pb), (pc.shape[0], 2 * pc.shape[1]))
        if DOT:
            r = tl.dot(ones, p, input_precision=PREC)
        else:
            r = tl.sum(p, axis=0)[None, :]
        return r

    @triton.jit
    def _bwd_step(G, dA_acc, h_cur, h_prev, A2, dt_i, u_i, dyg_i, b_i, c_i, ones, part_ptr, rows, offs_j, t, L,
                  NP: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
        """Adjoint of one step: updates dh (G) and dA; returns per-channel sums and writes dB/dC partials."""
        G = G + dyg_i[:, None] * c_i[None, :]  # dh_t
        dtu_i = dt_i * u_i
        sums = _channel_sums(h_cur * dyg_i[:, None], G * dtu_i[:, None], ones, DOT, PREC)
        tl.store(part_ptr + t * (2 * NP) + rows[:, None] * 0 + offs_j[None, :], sums,
                 mask=(rows[:, None] == 0) & (offs_j[None, :] >= 0) & (t < L))
        y_i = tl.sum(h_cur * c_i[None, :], axis=1)  # pre-gate output without the D skip
        s_b = tl.sum(G * b_i[None, :], axis=1)  # d loss / d(dt u)
        Ga = G * tl.exp2(dt_i[:, None] * A2)
        w = Ga * h_prev  # d loss / d(dt A), per state
        dA_acc += w * dt_i[:, None]
        s_w = tl.sum(w * A2, axis=1) * 0.6931471805599453  # sum_n w A
        return Ga, dA_acc, y_i, s_b, s_w

    @triton.jit
    def _ss_bwd_states_kernel(
        u_ptr, dl_ptr, A_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr,
        dy_ptr, hs_ptr, hsub_ptr, dcarry_ptr,
        du_ptr, ddl_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, part_ptr,
        Dm, L, N, nc, nblk, dpg_b, dpg_c,
        sBtb, sBtg, sBtl, sCtb, sCtg, sCtl,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        NP: tl.constexpr, BD: tl.constexpr, K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    ):
        # grid (Dm // BD, batch); one lane per channel; sub-chunks of T = 4 steps, K per chunk
        T: tl.constexpr = 4
        CHUNK: tl.constexpr = K * T
        pid_d = tl.program_id(0)
        pid_b = tl.program_id(1)
        d0 = pid_d * BD
        offs_d = d0 + tl.arange(0, BD)
        offs_n = tl.arange(0, NP)
        mask_n = offs_n < N
        offs_j = tl.arange(0, 2 * NP)
        rows = tl.arange(0, 16)
        b64 = pid_b.to(tl.int64)
        k2 = tl.arange(0, T)[None, :]
        off2 = b64 * Dm * L + offs_d.to(tl.int64)[:, None] * L + k2  # (BD, T)
        tt = tl.arange(0, T)[None, :]
        ones = tl.full((16, BD), 1.0, tl.float32)

        A2 = _gather_state(A_ptr, offs_d, offs_n, N, 1, N, NP) * 1.4426950408889634
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d).to(tl.float32)[:, None]
        else:
            bias = 0.0
        Btp = Bt_ptr + b64 * sBtb + (d0 // dpg_b) * sBtg
        Ctp = Ct_ptr + b64 * sCtb + (d0 // dpg_c) * sCtg
        hs_b = hs_ptr + b64 * nc * N * Dm
        hsub_b = hsub_ptr + b64 * K * N * Dm
        part_b = part_ptr + (b64 * nblk + pid_d) * L * (2 * NP)
        G = _gather_state(dcarry_ptr + b64 * N * Dm, offs_d, offs_n, N, Dm, 1, NP)
        dA_acc = tl.zeros((BD, NP), dtype=tl.float32)
        dD_acc = tl.zeros((BD,), dtype=tl.float32)
        db_acc = tl.zeros((BD,), dtype=tl.float32)
        for ci in range(nc):
            c = nc - 1 - ci
            ks = (L - c * CHUNK + T - 1) // T
            ks = ks - (ks - K) * (ks > K)
            # ---- phase 1: the state at the start of each sub-chunk of this chunk
            h = _gather_state(hs_b + c * N * Dm, offs_d, offs_n, N, Dm, 1, NP)
            for s in range(ks):
                _scatter_state(hsub_b + s * N * Dm, h, offs_d, offs_n, N, Dm, 1, NP)
                if s < ks - 1:
                    t0 = c * CHUNK + s * T
                    mt = (t0 + tt) < L
                    u = _ld(u_ptr, off2, k2, t0, L, 1, T)
                    x, dt = _load_dt(dl_ptr, off2, k2, t0, L, mt, bias, HAS_BIAS, SOFTPLUS, 1, T)
                    dtu = dt * u
                    for i in tl.static_range(T):
                        sel = tt == i
                        b_i = tl.load(Btp + (t0 + i) * sBtl + offs_n, mask=mask_n & (t0 + i < L), other=0.0).to(tl.float32)
                        h = _advance(h, A2, _col(dt, sel), _col(dtu, sel), b_i)
            # ---- phase 2: sub-chunks from last to first
            for si in range(ks):
                s = ks - 1 - si
                t0 = c * CHUNK + s * T
                mt = (t0 + tt) < L
                u = _ld(u_ptr, off2, k2, t0, L, 1, T)
                x, dt = _load_dt(dl_ptr, off2, k2, t0, L, mt, bias, HAS_BIAS, SOFTPLUS, 1, T)
                dy = _ld(dy_ptr, off2, k2, t0, L, 1, T)
                if HAS_Z:
                    zv = _ld(z_ptr, off2, k2, t0, L, 1, T)
                    sz = _sigmoid(zv)
                    dyg = dy * zv * sz
                else:
                    dyg = dy
                dtu = dt * u
                # recompute the four states of the sub-chunk (h1..h4) from its start h0
                h0 = _gather_state(hsub_b + s * N * Dm, offs_d, offs_n, N, Dm, 1, NP)
                b0 = tl.load(Btp + t0 * sBtl + offs_n, mask=mask_n & (t0 < L), other=0.0).to(tl.float32)
                b1 = tl.load(Btp + (t0 + 1) * sBtl + offs_n, mask=mask_n & (t0 + 1 < L), other=0.0).to(tl.float32)
                b2 = tl.load(Btp + (t0 + 2) * sBtl + offs_n, mask=mask_n & (t0 + 2 < L), other=0.0).to(tl.float32)
                b3 = tl.load(Btp + (t0 + 3) * sBtl + offs_n, mask=mask_n & (t0 + 3 < L), other=0.0).to(tl.float32)
                c0 = tl.load(Ctp + t0 * sCtl + offs_n, mask=mask_n & (t0 < L), other=0.0).to(tl.float32)
                c1 = tl.load(Ctp + (t0 + 1) * sCtl + offs_n, mask=mask_n & (t0 + 1 < L), other=0.0).to(tl.float32)
                c2 = tl.load(Ctp + (t0 + 2) * sCtl + offs_n, mask=mask_n & (t0 + 2 < L), other=0.0).to(tl.float32)
                c3 = tl.load(Ctp + (t0 + 3) * sCtl + offs_n, mask=mask_n & (t0 + 3 < L), other=0.0).to(tl.float32)
                dt0, dt1, dt2, dt3 = _col(dt, tt == 0), _col(dt, tt == 1), _col(dt, tt == 2), _col(dt, tt == 3)
                u0, u1, u2, u3 = _col(u, tt == 0), _col(u, tt == 1), _col(u, tt == 2), _col(u, tt == 3)
                g0, g1, g2, g3 = _col(dyg, tt == 0), _col(dyg, tt == 1), _col(dyg, tt == 2), _col(dyg, tt == 3)
                h1 = _advance(h0, A2, dt0, dt0 * u0, b0)
                h2 = _advance(h1, A2, dt1, dt1 * u1, b1)
                h3 = _advance(h2, A2, dt2, dt2 * u2, b2)
                h4 = _advance(h3, A2, dt3, dt3 * u3, b3)
                # adjoint over the four steps, last first
                G, dA_acc, y3, sb3, sw3 = _bwd_step(G, dA_acc, h4, h3, A2, dt3, u3, g3, b3, c3, ones, part_b, rows,
                                                    offs_j, t0 + 3, L, NP, DOT, PREC)
                G, dA_acc, y2, sb2, sw2 = _bwd_step(G, dA_acc, h3, h2, A2, dt2, u2, g2, b2, c2, ones, part_b, rows,
                                                    offs_j, t0 + 2, L, NP, DOT, PREC)
                G, dA_acc, y1, sb1, sw1 = _bwd_step(G, dA_acc, h2, h1, A2, dt1, u1, g1, b1, c1, ones, part_b, rows,
                                                    offs_j, t0 + 1, L, NP, DOT, PREC)
                G, dA_acc, y0, sb0, sw0 = _bwd_step(G, dA_acc, h1, h0, A2, dt0, u0, g0, b0, c0, ones, part_b, rows,
                                                    offs_j, t0, L, NP, DOT, PREC)
                # per-channel gradients of the sub-chunk, as (BD, T) tiles
                s_b = tl.where(tt == 0, sb0[:, None], tl.where(tt == 1, sb1[:, None],
                               tl.where(tt == 2, sb2[:, None], sb3[:, None])))
                s_w = tl.where(tt == 0, sw0[:, None], tl.where(tt == 1, sw1[:, None],
                               tl.where(tt == 2, sw2[:, None], sw3[:, None])))
                du = s_b * dt
                ddt = s_w + s_b * u
                if HAS_D:
                    du += Dv[:, None] * dyg
                    dD_acc += tl.sum(tl.where(mt, dyg * u, 0.0), axis=1)
                if HAS_Z:
                    out = tl.where(tt == 0, y0[:, None], tl.where(tt == 1, y1[:, None],
                                   tl.where(tt == 2, y2[:, None], y3[:, None])))
                    if HAS_D:
                        out += Dv[:, None] * u
                    dz = dy * out * sz * (1.0 + zv * (1.0 - sz))
                    _st(dz_ptr, off2, k2, t0, L, dz, 1, T)
                if SOFTPLUS:
                    ddl = ddt * _sigmoid(x)
                else:
                    ddl = ddt
                ddl = tl.where(mt, ddl, 0.0)
                if HAS_BIAS:
                    db_acc += tl.sum(ddl, axis=1)
                _st(du_ptr, off2, k2, t0, L, du, 1, T)
                _st(ddl_ptr, off2, k2, t0, L, ddl, 1, T)
        _scatter_state(dA_ptr + b64 * N * Dm, dA_acc, offs_d, offs_n, N, Dm, 1, NP)
        if HAS_D:
            tl.store(dD_ptr + b64 * Dm + offs_d, dD_acc)
        if HAS_BIAS:
            tl.store(dbias_ptr + b64 * Dm + offs_d, db_acc)


def bwd_states_impl(dy, dhl, u, delta, A, B, C, D, z, delta_bias, hs, delta_softplus, chunk: int,
                    num_warps: int = 1, maxnreg: int = 0, dot: Optional[bool] = None):
    """Backward of the selective scan with the state-resident kernel (see the module docstring).

    ``chunk`` must be the forward's (states were saved every ``chunk`` steps) and a multiple of 4.
    One program covers ``32 * num_warps`` channels (reduced to a power of two dividing ``Dm / G``).
    ``dot``: channel sums on the tensor cores (default: whenever N >= 16), else by warp shuffles.
    """
    if not HAS_TRITON:
        raise RuntimeError("selective_scan_triton: triton is not available")
    batch, dim, length = u.shape
    dstate = A.shape[1]
    gb, gc = B.shape[1], C.shape[1]
    dev = u.device
    if chunk % STATES_T:
        raise ValueError(f"selective_scan_triton: chunk={chunk} must be a multiple of {STATES_T}")
    u, delta, dy = u.contiguous(), delta.contiguous(), dy.contiguous()
    A = A.contiguous()
    z = None if z is None else z.contiguous()
    Bt = B.transpose(-1, -2).contiguous()  # (batch, G, L, N): the N values of a step contiguous
    Ct = C.transpose(-1, -2).contiguous()
    bd = 32 * max(1, int(num_warps))
    while bd > 1 and ((dim // gb) % bd or (dim // gc) % bd):
        bd //= 2
    nw = max(1, bd // 32)
    np_ = _next_pow2(dstate)
    use_dot = (np_ >= 16 and bd >= 16) if dot is None else bool(dot)
    if use_dot and (np_ < 16 or bd < 16):
        raise ValueError("selective_scan_triton: the tensor-core channel sums need N >= 16 and 16+ channels per program")
    K = chunk // STATES_T
    nc = hs.shape[1]
    nblk = dim // bd
    f32 = torch.float32
    hsub = torch.empty((batch, K, dstate, dim), dtype=f32, device=dev)
    dcarry = dhl.to(f32).transpose(1, 2).contiguous()  # (batch, N, Dm)
    du = _alloc(u.shape, u.dtype, dev)
    ddl = _alloc(delta.shape, delta.dtype, dev)
    dz = _alloc(z.shape, z.dtype, dev) if z is not None else None
    dA_part = _alloc((batch, dstate, dim), f32, dev)
    dD_part = _alloc((batch, dim), f32, dev) if D is not None else None
    db_part = _alloc((batch, dim), f32, dev) if delta_bias is not None else None
    # (batch, block, step, state, {C, B}): the channel sums of each program
    part = _alloc((batch, nblk, length, np_, 2), f32, dev)
    dummy = u
    prec = "tf32x3" if u.dtype == torch.float32 else "tf32"
    _ss_bwd_states_kernel[(nblk, batch)](
        u, delta, A, Bt, Ct,
        D if D is not None else dummy,
        z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        dy, hs, hsub, dcarry,
        du, ddl,
        dz if dz is not None else dummy,
        dA_part,
        dD_part if dD_part is not None else dummy,
        db_part if db_part is not None else dummy,
        part,
        dim, length, dstate, nc, nblk, dim // gb, dim // gc,
        Bt.stride(0), Bt.stride(1), Bt.stride(2), Ct.stride(0), Ct.stride(1), Ct.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), NP=np_, BD=bd, K=K, DOT=use_dot, PREC=prec,
        num_warps=nw, **_reg_cap(maxnreg, u),
    )
    sums = part[:, :, :, :dstate]  # (batch, nblk, L, N, 2)
    dC = sums[..., 0].reshape(batch, gc, nblk // gc, length, dstate).sum(2).transpose(-1, -2).to(C.dtype)
    dB = sums[..., 1].reshape(batch, gb, nblk // gb, length, dstate).sum(2).transpose(-1, -2).to(B.dtype)
    dA = dA_part.sum(0).t().contiguous().to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else u.new_empty(0)
    dbias = db_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)
    return du, ddl, dA, dB.contiguous(), dC.contiguous(), dD, (dz if dz is not None else u.new_empty(0)), dbias
