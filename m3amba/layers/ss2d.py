"""SS2D and Cross-SS2D: the 2-D selective-scan token mixers of the M3amba trunk.

Both read channels-last features (B, H, W, D) and return the same shape. The input is
projected to an SSM branch u and a gate (in_proj), u goes through a depthwise 3x3 conv +
SiLU, is unfolded into four scan directions, scanned with input-dependent (Δ, B, C), merged
back, normalised, gated by SiLU(gate) and projected out. Unfold, scan and merge are one call,
:func:`m3amba.ops.selective_scan.scan2d.selective_scan_2d` (fused kernels on CUDA).

Cross-SS2D is the paper's cross-attention between a modality stream s and the fused stream
z: both are projected with the shared in_proj and conv, but the scan of s uses the mean of the
two streams' A, the input matrix B computed from z, and s's own Δ, C and D. The reference
implementation also runs the symmetric scan for z and then discards it; that scan, and every
parameter only it would use, is left out here (same output, ~40% less trunk work, and no
unused parameters to trip DDP).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cross_scan import NUM_DIRECTIONS, reorder_directions
from ..ops.selective_scan.scan2d import selective_scan_2d
from .ssm_init import init_a_log, init_dt_projection

__all__ = ["SS2D", "CrossSS2D"]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # the SSM's parameters (A, D, Δ bias) are used in fp32 even under bf16 autocast; fp64 stays fp64
    return t if t.dtype == torch.float64 else t.float()


def _project_tokens(weight: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """(K, R, I) per-direction projections of a (B, H, W, I) map, in row-major token order → (B, K, R, L).

    One GEMM over the channels-last map for all directions. A map over channels commutes with
    reordering time steps, so reordering the small R-row result (:func:`_project_directions`)
    equals projecting each cross-scanned copy of the map.
    """
    b, h, w, i = feats.shape
    k, r, _ = weight.shape
    proj = F.linear(feats, weight.reshape(k * r, i).to(feats.dtype))  # (B, H, W, K*R)
    return proj.reshape(b, h * w, k, r).permute(0, 2, 3, 1)


def _project_directions(weight: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """(K, R, I) per-direction projections of a (B, H, W, I) map, each in its scan order → (B, K, R, L)."""
    return reorder_directions(_project_tokens(weight, feats), feats.shape[1], feats.shape[2])


class SS2D(nn.Module):
    """Four-direction 2-D selective scan (VMamba's SS2D) over channels-last features.

    Args:
        d_model: width D of the input and output features.
        d_state: state size N of the SSM.
        ssm_ratio: inner width Di = ssm_ratio * D.
        dt_rank: rank R of the Δ projection; ``"auto"`` = ceil(D / 16).
        d_conv: kernel of the depthwise conv (1 disables it).
        bias: bias on in_proj / out_proj.
        dropout: dropout after out_proj.
        scan_backend: selective-scan backend name (``None`` = automatic, see
            :mod:`m3amba.ops.selective_scan`).
    """

    #: whether this mixer projects its own B (a Cross-SS2D takes B from the fused stream)
    owns_input_matrix: bool = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: Union[int, str] = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        k = NUM_DIRECTIONS
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.act = nn.SiLU()
        self.conv2d = (
            nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias)
            if d_conv > 1 else nn.Identity()
        )
        # per-direction projections of u to (Δ low-rank, [B,] C), stacked over the 4 directions
        proj_rows = dt_rank + (2 if self.owns_input_matrix else 1) * d_state
        self.x_proj_weight = nn.Parameter(torch.empty(k, proj_rows, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        bound = d_inner ** -0.5  # nn.Linear's default init, per direction
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        init_dt_projection(self.dt_projs_weight, self.dt_projs_bias, dt_min, dt_max, dt_init_floor)
        init_a_log(self.A_logs)
        for p in (self.A_logs, self.Ds):
            p._no_weight_decay = True

    # -- pieces shared with CrossSS2D -------------------------------------------------------
    def _conv_branch(self, u: torch.Tensor) -> torch.Tensor:
        """(B, H, W, Di) → depthwise conv + SiLU → (B, H, W, Di) (a view of the conv's channels-last output)."""
        return self.act(self.conv2d(u.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)

    def _state_matrix(self) -> torch.Tensor:
        return -torch.exp(_at_least_fp32(self.A_logs))

    def _scan(self, feats: torch.Tensor, dt_low: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor,
              Cs: torch.Tensor) -> torch.Tensor:
        """Four-direction scan of the (B, H, W, Di) map, merged back to (B, H, W, Di).

        ``dt_low`` (B, K, R, L) is in row-major token order, ``Bs``/``Cs`` (B, K, N, L) in scan order.
        """
        return selective_scan_2d(
            feats, dt_low, self.dt_projs_weight, A, Bs, Cs,
            _at_least_fp32(self.Ds),
            delta_bias=_at_least_fp32(self.dt_projs_bias.reshape(-1)),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def _output(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        y = self.out_norm(y.to(gate.dtype)) * self.act(gate)
        return self.dropout(self.out_proj(y))

    # -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix (B, H, W, D) features; returns (B, H, W, D)."""
        _, height, width, _ = x.shape
        u, gate = self.in_proj(x).chunk(2, dim=-1)
        feats = self._conv_branch(u)
        dt_low, bc = torch.split(_project_tokens(self.x_proj_weight, feats), [self.dt_rank, 2 * self.d_state], dim=2)
        Bs, Cs = torch.split(reorder_directions(bc, height, width), self.d_state, dim=2)
        y = self._scan(feats, dt_low, self._state_matrix(), Bs, Cs)
        return self._output(y, gate)


class CrossSS2D(SS2D):
    """Cross-SS2D: scan a modality stream s with state-space parameters exchanged with z.

    ``forward(s, z)`` returns the mixed s. Parameters beyond SS2D's: ``B_proj_weight_fused``
    (the per-direction projection of z to B) and ``A_logs_fused`` (z's A, averaged with s's).
    s's own projection yields only Δ and C.
    """

    owns_input_matrix = False

    def __init__(self, d_model: int, **kwargs) -> None:
        super().__init__(d_model, **kwargs)
        k, n, d = NUM_DIRECTIONS, self.d_state, self.d_inner
        self.B_proj_weight_fused = nn.Parameter(torch.empty(k, n, d))
        self.A_logs_fused = nn.Parameter(torch.empty(k * d, n))
        nn.init.uniform_(self.B_proj_weight_fused, -d ** -0.5, d ** -0.5)
        init_a_log(self.A_logs_fused)
        self.A_logs_fused._no_weight_decay = True

    def _state_matrix(self) -> torch.Tensor:
        # A of the exchanged scan: the mean of the two streams' A (not of their logs)
        return -0.5 * (torch.exp(_at_least_fp32(self.A_logs)) + torch.exp(_at_least_fp32(self.A_logs_fused)))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Mix stream ``x`` (B, H, W, D) using fused stream ``z`` (same shape); returns x's shape."""
        if x.shape != z.shape:
            raise ValueError(f"CrossSS2D streams must have one shape, got {tuple(x.shape)} and {tuple(z.shape)}")
        _, height, width, _ = x.shape
        u, gate = self.in_proj(x).chunk(2, dim=-1)
        # z needs only the SSM half of the shared in_proj: its gate would feed the discarded output
        d = self.d_inner
        w_u = self.in_proj.weight[:d]
        b_u = self.in_proj.bias[:d] if self.in_proj.bias is not None else None
        u_z = F.linear(z, w_u, b_u)
        feats = self._conv_branch(u)
        dt_low, c_tokens = torch.split(_project_tokens(self.x_proj_weight, feats), [self.dt_rank, self.d_state], dim=2)
        Cs = reorder_directions(c_tokens, height, width)
        # z's map feeds only this projection: it is never unfolded into the four scan orders
        Bs = _project_directions(self.B_proj_weight_fused, self._conv_branch(u_z))
        y = self._scan(feats, dt_low, self._state_matrix(), Bs, Cs)
        return self._output(y, gate)
