"""Training-window sampling around training pixels, and sliding-window tiling/stitching of a scene.

Padding is ``numpy.pad(mode="reflect")`` for the image (any pad width, also wider than the scene)
and 0 (= unlabelled) for labels: reflected copies of training labels are never trained on.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["reflect_pad", "tile_positions", "sliding_window_logits", "TrainWindows"]


def reflect_pad(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Reflect-pad the last two axes of a (C, H, W) array (pads may exceed H and W)."""
    if x.shape[-1] == 1 and x.shape[-2] == 1:
        mode = "edge"  # reflect of a single pixel is the pixel itself; say so explicitly
    else:
        mode = "reflect"
    return np.pad(x, ((0, 0), (top, bottom), (left, right)), mode=mode)


def tile_positions(size: int, window: int, stride: int, margin: int) -> Tuple[List[int], int]:
    """Window starts along one axis of the padded scene, and the padded length.

    The scene (``size`` pixels) sits at ``[margin, margin + size)`` of a padded axis of length
    ``max(size + 2 * margin, window)``; windows start every ``stride`` pixels, plus one flush with the
    far end where the grid falls short, so every padded pixel lies in at least one window.
    """
    if window < 1 or stride < 1 or margin < 0:
        raise ValueError(f"window and stride must be positive and margin >= 0, got {window}, {stride}, {margin}")
    if stride > window:
        raise ValueError(f"stride ({stride}) larger than the window ({window}) would leave pixels unpredicted")
    total = max(size + 2 * margin, window)
    starts = list(range(0, total - window + 1, stride))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts, total


@torch.no_grad()
def sliding_window_logits(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x1: np.ndarray,
    x2: np.ndarray,
    num_classes: int,
    window: int = 32,
    stride: Optional[int] = None,
    margin: Optional[int] = None,
    batch_size: int = 32,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    pass_positions: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel logits of a whole scene, averaged over overlapping windows.

    Args:
        predict: maps window batches (B, C1, w, w), (B, C2, w, w) to logits (B, K, w, w).
        x1, x2: (C, H, W) normalised arrays of the scene.
        window, stride: window side and step (default ``window // 2``; at most ``window``).
        margin: reflect padding around the scene (default ``window - stride``: with a stride that
            divides the window, border pixels are then covered as often as interior ones).
        pass_positions: call ``predict(b1, b2, positions)`` with each window's (top, left) in scene
            coordinates (negative inside the top/left padding), e.g. for position-aware checks.
    Returns:
        ``(logits, counts)``: the stitched (K, H, W) float32 logits (CPU) and the (H, W) number of
        windows each pixel was averaged over (every entry >= 1).
    """
    stride = window // 2 if stride is None else stride
    stride = max(1, stride)
    margin = (window - stride) if margin is None else margin
    h, w = x1.shape[-2:]
    rows, total_h = tile_positions(h, window, stride, margin)
    cols, total_w = tile_positions(w, window, stride, margin)
    p1 = reflect_pad(x1, margin, total_h - h - margin, margin, total_w - w - margin)
    p2 = reflect_pad(x2, margin, total_h - h - margin, margin, total_w - w - margin)
    t1 = torch.from_numpy(np.ascontiguousarray(p1))
    t2 = torch.from_numpy(np.ascontiguousarray(p2))
    acc = torch.zeros(num_classes, total_h, total_w, dtype=dtype, device=device)
    cnt = torch.zeros(total_h, total_w, dtype=dtype, device=device)
    positions = [(r, c) for r in rows for c in cols]
    batches = range(0, len(positions), batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="predict", leave=False)
        except ImportError:  # pragma: no cover
            pass
    for start in batches:
        chunk = positions[start:start + batch_size]
        b1 = torch.stack([t1[:, r:r + window, c:c + window] for r, c in chunk]).to(device)
        b2 = torch.stack([t2[:, r:r + window, c:c + window] for r, c in chunk]).to(device)
        if pass_positions:
            logits = predict(b1, b2, [(r - margin, c - margin) for r, c in chunk]).to(dtype)
        else:
            logits = predict(b1, b2).to(dtype)
        if logits.shape != (len(chunk), num_classes, window, window):
            raise ValueError(f"predict returned {tuple(logits.shape)}, expected {(len(chunk), num_classes, window, window)}")
        for (r, c), lg in zip(chunk, logits):
            acc[:, r:r + window, c:c + window] += lg
            cnt[r:r + window, c:c + window] += 1
    acc = acc[:, margin:margin + h, margin:margin + w]
    cnt = cnt[margin:margin + h, margin:margin + w]
    return (acc / cnt).float().cpu(), cnt.cpu()


class TrainWindows:
    """Windows sampled around training pixels; labels outside the training mask are ignored (-1).

    Each epoch draws ``samples`` anchor pixels from the training pixels (a seeded permutation, repeated
    if ``samples`` exceeds their number); each anchor's window is placed so that the anchor lands at a
    uniformly random position inside it (not always the centre), then optionally flipped / rotated.
    The loss then uses *every* training pixel inside the window. With ``world_size > 1`` each rank
    takes every ``world_size``-th anchor of the same permutation (equal counts on every rank).

    Args:
        x1, x2: normalised (C, H, W) arrays; labels: (H, W) training label map (0 = none, 1..K).
    """

    def __init__(self, x1: np.ndarray, x2: np.ndarray, labels: np.ndarray, window: int = 32,
                 augment: bool = True) -> None:
        self.window = window
        self.augment = augment
        p = window
        h, w = labels.shape
        self.x1 = torch.from_numpy(np.ascontiguousarray(reflect_pad(x1, p, p, p, p)))
        self.x2 = torch.from_numpy(np.ascontiguousarray(reflect_pad(x2, p, p, p, p)))
        y = np.pad(labels.astype(np.int64) - 1, p, constant_values=-1)  # 0-based ids, -1 = ignore
        self.y = torch.from_numpy(y)
        valid = np.zeros(y.shape, bool)
        valid[p:p + h, p:p + w] = True
        self.valid = torch.from_numpy(valid)
        self.anchors = np.argwhere(labels > 0) + p  # padded coordinates
        if len(self.anchors) == 0:
            raise ValueError("no training pixel to sample windows around")

    def epoch_plan(self, epoch: int, seed: int, samples: Optional[int] = None, rank: int = 0,
                   world_size: int = 1) -> np.ndarray:
        """This rank's (N, 5) plan for ``epoch``: top, left, flip-h, flip-v, rot90 count per window."""
        rng = np.random.default_rng([seed, epoch])
        n = len(self.anchors) if samples is None else samples
        reps = math.ceil(n / len(self.anchors))
        order = np.concatenate([rng.permutation(len(self.anchors)) for _ in range(reps)])[:n]
        offs = rng.integers(0, self.window, size=(n, 2))
        aug = rng.integers(0, 2, size=(n, 3))
        rot = rng.integers(0, 4, size=(n, 1))
        if not self.augment:
            aug[:] = 0
            rot[:] = 0
        anchors = self.anchors[order]
        plan = np.concatenate([anchors - offs, aug[:, :2], rot], axis=1)
        per_rank = n // world_size if world_size > 1 else n
        return plan[: per_rank * world_size][rank::world_size] if world_size > 1 else plan

    def batch(self, plan_rows: Sequence[np.ndarray]):
        """Tensors ``x1 (B, C1, w, w), x2, y (B, w, w) int64 with -1 = ignore, valid (B, w, w) bool``."""
        w = self.window
        out = [[], [], [], []]
        for top, left, fh, fv, rot in plan_rows:
            parts = [self.x1[:, top:top + w, left:left + w], self.x2[:, top:top + w, left:left + w],
                     self.y[top:top + w, left:left + w], self.valid[top:top + w, left:left + w]]
            if fh:
                parts = [t.flip(-1) for t in parts]
            if fv:
                parts = [t.flip(-2) for t in parts]
            if rot:
                parts = [torch.rot90(t, int(rot), dims=(-2, -1)) for t in parts]
            for o, t in zip(out, parts):
                o.append(t)
        return tuple(torch.stack(o).contiguous() for o in out)
