"""The M3amba training objective (paper, Sec. on the loss):

``L = lambda_sup * (CE(M1) + CE(M2) + CE(Mf)) + lambda_unsup * (D(M1, Mf) + D(M2, Mf))``

* CE: per-pixel cross-entropy of each head, averaged over the **training pixels** of the batch only
  (label -1 = no training label, ignored);
* D: per-pixel cosine *distance* ``1 - cos(a, b)`` between the class vectors of a modality head and the
  fused head, averaged over every **valid** pixel (inside the scene, labelled or not: this is the
  unsupervised term, so it also uses the unlabelled pixels; reflected padding is excluded).

Defaults and why:

* ``consistency_on="prob"``: the cosine is taken between softmax probabilities. Softmax is invariant
  to adding a constant to a pixel's logits, the cosine of raw logits is not, so on logits the term
  would push heads to agree on an arbitrary offset rather than on the prediction; on probabilities
  it compares predicted class distributions (``"logits"`` is available);
* ``detach_fused=False``: gradients flow into both heads, so the streams pull towards each other;
* ``lambda_sup=1.0, lambda_unsup=0.5``: our choice (the values used for the paper's results are not
  given in the reference code); set them in the config.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["M3ambaLoss"]


class M3ambaLoss(nn.Module):
    def __init__(self, lambda_sup: float = 1.0, lambda_unsup: float = 0.5, consistency_on: str = "prob",
                 detach_fused: bool = False, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if consistency_on not in ("prob", "logits"):
            raise ValueError(f"consistency_on must be 'prob' or 'logits', got {consistency_on!r}")
        self.lambda_sup = lambda_sup
        self.lambda_unsup = lambda_unsup
        self.consistency_on = consistency_on
        self.detach_fused = detach_fused
        self.label_smoothing = label_smoothing

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target >= 0).any():
            return logits.float().sum() * 0.0  # no training pixel in this batch: zero, but keep the graph
        return F.cross_entropy(logits.float(), target, ignore_index=-1, label_smoothing=self.label_smoothing)

    def _cos_distance(self, a: torch.Tensor, b: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        a, b = a.float(), b.float()
        if self.consistency_on == "prob":
            a, b = a.softmax(1), b.softmax(1)
        d = 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)  # (B, H, W)
        if valid is None:
            return d.mean()
        v = valid.to(d.dtype)
        return (d * v).sum() / v.sum().clamp_min(1.0)

    def forward(self, logits_m1: torch.Tensor, logits_m2: torch.Tensor, logits_fused: torch.Tensor,
                target: torch.Tensor, valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Loss terms for (B, K, H, W) logits, (B, H, W) targets (-1 = ignore) and an optional valid mask.

        Returns a dict with ``loss`` (the total) and the terms ``ce_m1, ce_m2, ce_fused, cos_m1, cos_m2``.
        """
        ce = [self._ce(lg, target) for lg in (logits_m1, logits_m2, logits_fused)]
        fused = logits_fused.detach() if self.detach_fused else logits_fused
        if self.lambda_unsup:
            cos = [self._cos_distance(logits_m1, fused, valid), self._cos_distance(logits_m2, fused, valid)]
        else:
            zero = logits_fused.float().sum() * 0.0
            cos = [zero, zero]
        loss = self.lambda_sup * (ce[0] + ce[1] + ce[2]) + self.lambda_unsup * (cos[0] + cos[1])
        return {"loss": loss, "ce_m1": ce[0], "ce_m2": ce[1], "ce_fused": ce[2], "cos_m1": cos[0], "cos_m2": cos[1]}
