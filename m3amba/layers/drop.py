"""Stochastic depth (drop-path) whose rate does not specialise compiled code."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Drop whole residual branches per sample with probability ``drop_prob`` (training only).

    Same function as timm's ``DropPath`` (surviving samples scaled by ``1 / keep``), but the rate is
    held as a (non-persistent) tensor buffer instead of a Python float: ``torch.compile`` guards on a
    float's value, so the nine trunk layers, each with its own rate, would each need a recompilation
    and the ninth would exceed dynamo's recompile limit and run eagerly. Checkpoint keys are unchanged.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.register_buffer("drop_prob", torch.tensor(float(drop_prob)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        # the draw and the 1/keep scale in fp32 whatever x's dtype (a bf16 keep of 0.9 is 0.898)
        keep = 1.0 - self.drop_prob.float()
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        scale = (torch.rand(shape, device=x.device) < keep).float() / keep
        return x * scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"drop_prob={float(self.drop_prob):.3f}"
