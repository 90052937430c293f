"""Per-pixel classification head: LayerNorm, then a 1x1 convolution to the classes."""
from __future__ import annotations

import torch
from torch import nn


class PixelHead(nn.Module):
    """Map channels-last features (B, H, W, D) to per-pixel logits (B, K, H, W).

    With ``num_classes=0`` the head is a feature extractor: it returns the normalised
    features channels-first, (B, D, H, W).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Conv2d(dim, num_classes, kernel_size=1) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` classes."""
        dim = self.norm.normalized_shape[0]
        device = self.norm.weight.device
        self.fc = nn.Conv2d(dim, num_classes, kernel_size=1).to(device) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        return x if pre_logits else self.fc(x)
