"""Residual Mamba blocks of the three-stream trunk and the layer that ties them together."""
from __future__ import annotations

from typing import Tuple

import torch
from timm.layers import Mlp
from torch import nn

from .drop import DropPath
from .ss2d import SS2D, CrossSS2D

__all__ = ["FusedBlock", "CrossBlock", "M3ambaLayer"]


class _ResidualMixerBlock(nn.Module):
    """LN → mixer → residual, LN → MLP(GELU) → residual, both with drop-path (VMamba block)."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float, drop: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def _mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FusedBlock(_ResidualMixerBlock):
    """The fused stream's block: a plain VMamba block with an SS2D mixer."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, drop: float = 0.0, **ssm_kwargs) -> None:
        super().__init__(dim, SS2D(dim, **ssm_kwargs), mlp_ratio, drop_path, drop)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.drop_path(self.op(self.norm(z)))
        return self._mlp_residual(z)


class CrossBlock(_ResidualMixerBlock):
    """A modality stream's block: Cross-SS2D with the fused stream, then the MLP.

    The same LayerNorm normalises the stream and the fused stream before the mixer.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, drop: float = 0.0, **ssm_kwargs) -> None:
        super().__init__(dim, CrossSS2D(dim, **ssm_kwargs), mlp_ratio, drop_path, drop)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x), self.norm(z)))
        return self._mlp_residual(x)


class M3ambaLayer(nn.Module):
    """One trunk step over the three streams: x ← Cross(x, z); y ← Cross(y, z); z ← Fused(x + y)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, drop: float = 0.0, **ssm_kwargs) -> None:
        super().__init__()
        self.cross1 = CrossBlock(dim, mlp_ratio, drop_path, drop, **ssm_kwargs)
        self.cross2 = CrossBlock(dim, mlp_ratio, drop_path, drop, **ssm_kwargs)
        self.fused = FusedBlock(dim, mlp_ratio, drop_path, drop, **ssm_kwargs)

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.cross1(x, z)
        y = self.cross2(y, z)
        z = self.fused(x + y)
        return x, y, z
