"""Per-band normalisation: ``x_norm = (x - offset) / scale``, statistics stored with the checkpoint.

Methods: ``"minmax"`` (offset = band minimum, scale = max - min: values in [0, 1], what the reference
implementation's pre-processing does) and ``"zscore"`` (offset = mean, scale = standard deviation).
Statistics come from the whole scene (``source="scene"``, the default and the usual practice in the
literature: the image itself, not its labels, is seen) or from the training pixels only
(``source="train"``, stricter: nothing of the test area enters the statistics). Pixels a scene masked
for NaN/Inf/nodata values (``Scene(nonfinite="mask")``) never enter the statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["NormStats", "compute_norm_stats"]

METHODS = ("minmax", "zscore")

#: ``normalize(b1, b2) -> (b1_normalised, b2_normalised)`` for window batches, see :meth:`NormStats.batch_normalizer`
BatchNormalizer = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
SOURCES = ("scene", "train")


@dataclass
class NormStats:
    """Per-band ``offset`` and ``scale`` of both modalities (float32 arrays of C1 and C2 values)."""

    offset1: np.ndarray
    scale1: np.ndarray
    offset2: np.ndarray
    scale2: np.ndarray
    method: str = "minmax"
    source: str = "scene"

    def check_bands(self, c1: int, c2: int) -> None:
        """Raise ``ValueError`` unless a scene of ``c1`` + ``c2`` bands matches these statistics."""
        have, want = (int(c1), int(c2)), (len(self.offset1), len(self.offset2))
        if have != want:
            raise ValueError(f"the scene has {have[0]} + {have[1]} bands but these normalisation statistics (and the "
                             f"model they were stored with) have {want[0]} + {want[1]}: a scene from other sensors "
                             "or another band selection than the checkpoint's?")

    def apply(self, x1: np.ndarray, x2: np.ndarray):
        """Normalise (C, H, W) arrays of both modalities (new float32 arrays)."""
        self.check_bands(x1.shape[0], x2.shape[0])
        return (((x1 - self.offset1[:, None, None]) / self.scale1[:, None, None]).astype(np.float32),
                ((x2 - self.offset2[:, None, None]) / self.scale2[:, None, None]).astype(np.float32))

    def batch_normalizer(self, device="cpu") -> "BatchNormalizer":
        """A function normalising window batches ``(B, C1, h, w), (B, C2, h, w)`` on ``device``.

        For streamed prediction: each batch is normalised where it is predicted, so no normalised copy
        of the whole scene is ever made. For float32 inputs the result equals :meth:`apply` bit for bit
        (the same float32 subtraction and division per element).
        """
        dev = torch.device(device)
        o1, s1, o2, s2 = (torch.as_tensor(np.asarray(v, np.float32), device=dev)[None, :, None, None]
                          for v in (self.offset1, self.scale1, self.offset2, self.scale2))

        def normalize(b1: torch.Tensor, b2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            if b1.shape[1] != o1.shape[1] or b2.shape[1] != o2.shape[1]:
                self.check_bands(b1.shape[1], b2.shape[1])
            return (b1.float() - o1) / s1, (b2.float() - o2) / s2
        return normalize

    def to_state(self) -> Dict:
        """Plain tensors + strings, for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {"offset1": torch.from_numpy(self.offset1), "scale1": torch.from_numpy(self.scale1),
                "offset2": torch.from_numpy(self.offset2), "scale2": torch.from_numpy(self.scale2),
                "method": self.method, "source": self.source}

    @classmethod
    def from_state(cls, state: Dict) -> "NormStats":
        get = lambda k: np.asarray(state[k].numpy() if torch.is_tensor(state[k]) else state[k], np.float32)  # noqa: E731
        return cls(get("offset1"), get("scale1"), get("offset2"), get("scale2"),
                   state.get("method", "minmax"), state.get("source", "scene"))


def _band_stats(x: np.ndarray, mask: Optional[np.ndarray], method: str):
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if mask is not None:
        flat = flat[:, mask.ravel()]
    if method == "minmax":
        offset = flat.min(1)
        scale = flat.max(1) - offset
    else:
        offset = flat.mean(1)
        scale = flat.std(1)
    scale = np.where(scale > 0, scale, 1.0)  # a constant band maps to 0, not to NaN
    return offset.astype(np.float32), scale.astype(np.float32)


def compute_norm_stats(scene, method: str = "minmax", source: str = "scene") -> NormStats:
    """Per-band statistics of ``scene`` (a :class:`~m3amba.data.Scene`), see the module doc."""
    if method not in METHODS:
        raise ValueError(f"normalisation method must be one of {METHODS}, got {method!r}")
    if source not in SOURCES:
        raise ValueError(f"normalisation source must be one of {SOURCES}, got {source!r}")
    mask = scene.train_mask > 0 if source == "train" else None
    valid = getattr(scene, "valid_mask", None)  # pixels masked for NaN/Inf/nodata (nonfinite="mask") stay out
    if valid is not None:
        mask = valid if mask is None else (mask & valid)
    o1, s1 = _band_stats(scene.modality1, mask, method)
    o2, s2 = _band_stats(scene.modality2, mask, method)
    return NormStats(o1, s1, o2, s2, method, source)
