"""Pixel-wise patch embedding: a 1x1 convolution to the trunk width, then LayerNorm, channels-last."""
from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Embed a (B, C, H, W) patch into (B, H, W, D) tokens (patch size 1: one token per pixel)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))
