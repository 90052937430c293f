"""Training-window sampling around training pixels, and streaming sliding-window prediction of a scene.

Padding reflects the image (like ``numpy.pad(mode="reflect")``, for any pad width, also wider than
the scene) and uses 0 (= unlabelled) for labels: reflected copies of training labels are never
trained on.

Full-scene prediction streams the scene in horizontal bands: each band's rows are read (a
``numpy.memmap`` is read only there), moved to the device once and cut into windows *on the device*;
logits are accumulated in a rolling band accumulator and every finished row is handed back at once.
Nothing larger than about one window batch lives on the device, and with ``out=`` (e.g. a memmap)
host memory stays bounded by the band too.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["reflect_pad", "reflect_index", "tile_positions", "window_coverage", "sliding_window_logits",
           "TrainWindows"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def reflect_pad(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Reflect-pad the last two axes of a (C, H, W) array (pads may exceed H and W)."""
    if x.shape[-1] == 1 and x.shape[-2] == 1:
        mode = "edge"  # reflect of a single pixel is the pixel itself; say so explicitly
    else:
        mode = "reflect"
    return np.pad(x, ((0, 0), (top, bottom), (left, right)), mode=mode)


def reflect_index(positions: np.ndarray, size: int) -> np.ndarray:
    """Source indices of (possibly out-of-range) positions under reflection about the edges.

    Matches ``numpy.pad(mode="reflect")`` for any pad width: reflection without repeating the edge
    pixel is periodic with period ``2 * (size - 1)``.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    p = np.mod(positions, period)
    return np.where(p < size, p, period - p)


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


def window_coverage(starts: Sequence[int], window: int, total: int) -> np.ndarray:
    """How many windows (starting at ``starts``) cover each of ``total`` positions along one axis."""
    cover = np.zeros(total + 1, np.int64)
    np.add.at(cover, np.asarray(starts), 1)
    np.add.at(cover, np.asarray(starts) + window, -1)
    return np.cumsum(cover)[:total]


def _coverage_map(rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """(H, W) window counts, the outer product of the per-axis coverages, in the smallest int type."""
    dtype = np.int16 if int(rows.max()) * int(cols.max()) <= np.iinfo(np.int16).max else np.int32
    return torch.from_numpy(np.multiply.outer(rows.astype(dtype), cols.astype(dtype)))


def _read_rows(x: ArrayLike, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """x[:, rows][:, :, cols] as a contiguous CPU/device tensor (reads only those rows of a memmap)."""
    if isinstance(x, torch.Tensor):
        r = torch.as_tensor(rows, device=x.device)
        c = torch.as_tensor(cols, device=x.device)
        return x.index_select(1, r).index_select(2, c)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = np.asarray(x[:, lo:hi])  # one contiguous read, then the reflection is an in-memory gather
    return torch.from_numpy(np.ascontiguousarray(block[:, rows - lo][:, :, cols]))


def _bands(rows: List[int], cols: int, batch_size: int) -> Iterator[List[int]]:
    """Group consecutive window rows so that one band holds about ``batch_size`` windows."""
    per_band = max(1, batch_size // max(cols, 1))
    for i in range(0, len(rows), per_band):
        yield rows[i:i + per_band]


@torch.no_grad()
def sliding_window_logits(
    predict: Callable[..., torch.Tensor],
    x1: ArrayLike,
    x2: ArrayLike,
    num_classes: int,
    window: int = 32,
    stride: Optional[int] = None,
    margin: Optional[int] = None,
    batch_size: int = 32,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    pass_positions: bool = False,
    out: Optional[np.ndarray] = None,
    pad_last_batch: bool = False,
) -> Tuple[Union[torch.Tensor, np.ndarray], torch.Tensor]:
    """Per-pixel logits of a whole scene, averaged over overlapping windows, streamed band by band.

    Args:
        predict: maps window batches (B, C1, w, w), (B, C2, w, w) on ``device`` to logits (B, K, w, w).
        x1, x2: (C, H, W) normalised scene arrays: numpy arrays (memmaps are read band by band) or
            tensors (CPU, or already resident on ``device``).
        window, stride: window side and step (default ``window // 2``; at most ``window``).
        margin: reflect padding around the scene (default ``window - stride``: with a stride that
            divides the window, border pixels are then covered as often as interior ones).
        batch_size: windows per ``predict`` call; a band of the scene holds about this many windows.
        device: where windows are cut, predicted and accumulated.
        dtype: accumulator dtype.
        pass_positions: call ``predict(b1, b2, positions)`` with each window's (top, left) in scene
            coordinates (negative inside the top/left padding), e.g. for position-aware checks.
        out: optional (K, H, W) float array (e.g. ``numpy.lib.format.open_memmap``) that receives the
            averaged logits row band by row band; with it, no full-scene logits are held in memory.
        pad_last_batch: give ``predict`` only full batches (a short batch is padded by repeating its
            last window; the padding's outputs are dropped): compiled models and CUDA graphs then
            see one shape.
    Returns:
        ``(logits, counts)``: the stitched (K, H, W) logits (a CPU float32 tensor, or ``out``) and the
        (H, W) number of windows each pixel was averaged over (every entry >= 1).
    """
    if x1.shape[-2:] != x2.shape[-2:]:
        raise ValueError(f"the two modalities must share H x W, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    stride = window // 2 if stride is None else stride
    stride = max(1, stride)
    margin = (window - stride) if margin is None else margin
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    h, w = (int(v) for v in x1.shape[-2:])
    rows, total_h = tile_positions(h, window, stride, margin)
    cols, total_w = tile_positions(w, window, stride, margin)
    if out is not None and tuple(out.shape) != (num_classes, h, w):
        raise ValueError(f"out must have shape {(num_classes, h, w)}, got {tuple(out.shape)}")
    result = out if out is not None else torch.empty(num_classes, h, w, dtype=torch.float32)
    row_cover = window_coverage(rows, window, total_h)
    col_cover = window_coverage(cols, window, total_w)
    counts = _coverage_map(row_cover[margin:margin + h], col_cover[margin:margin + w])

    src_cols = reflect_index(np.arange(total_w) - margin, w)
    col_index = torch.as_tensor(cols, device=device)
    # flat column indices of every window of a row of windows, for one index_add_ per band row
    win_cols = (col_index[:, None] + torch.arange(window, device=device)[None, :]).reshape(-1)
    inv_col_cover = torch.from_numpy(1.0 / col_cover).to(device, dtype)

    acc = torch.zeros(num_classes, 0, total_w, dtype=dtype, device=device)
    acc_top = 0  # padded row of acc's first row
    done = 0     # padded rows [0, done) are finished and handed back
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(rows) * len(cols), desc="predict", unit="win", leave=False)
        except ImportError:  # pragma: no cover
            pass

    def flush(upto: int) -> None:
        # padded rows [done, upto) will get no more windows: average and hand them back
        nonlocal acc, acc_top, done
        if upto <= done:
            return
        n = upto - acc_top
        part = acc[:, :n] * inv_col_cover
        lo, hi = max(done, margin), min(upto, margin + h)
        if hi > lo:
            rc = torch.from_numpy(1.0 / row_cover[lo:hi]).to(device, dtype)[None, :, None]
            block = (part[:, lo - acc_top:hi - acc_top, margin:margin + w] * rc).float().cpu()
            if out is not None:
                result[:, lo - margin:hi - margin] = block.numpy()
            else:
                result[:, lo - margin:hi - margin] = block
        acc = acc[:, n:]
        acc_top = done = upto

    for band in _bands(rows, len(cols), batch_size):
        top, bottom = band[0], band[-1] + window
        flush(top)  # rows above this band's first window are final
        if acc_top + acc.shape[1] < bottom:
            grow = bottom - (acc_top + acc.shape[1])
            acc = torch.cat([acc, acc.new_zeros(num_classes, grow, total_w)], dim=1)
        src_rows = reflect_index(np.arange(top, bottom) - margin, h)
        strips = [_read_rows(x, src_rows, src_cols).to(device, non_blocking=True) for x in (x1, x2)]
        positions = [(r, c) for r in band for c in cols]
        for start in range(0, len(positions), batch_size):
            chunk = positions[start:start + batch_size]
            b1, b2 = (_cut(s, chunk, top, window) for s in strips)
            missing = batch_size - len(chunk) if pad_last_batch else 0
            if missing:
                b1, b2 = (torch.cat([b, b[-1:].expand(missing, *b.shape[1:])]) for b in (b1, b2))
            if pass_positions:
                logits = predict(b1, b2, [(r - margin, c - margin) for r, c in chunk + [chunk[-1]] * missing])
            else:
                logits = predict(b1, b2)
            logits = logits[:len(chunk)]
            if tuple(logits.shape) != (len(chunk), num_classes, window, window):
                raise ValueError(
                    f"predict returned {tuple(logits.shape)}, expected {(len(chunk), num_classes, window, window)}")
            logits = logits.to(device, dtype)
            i = 0
            while i < len(chunk):  # windows of one band row go in with one index_add_
                r = chunk[i][0]
                j = i
                while j < len(chunk) and chunk[j][0] == r:
                    j += 1
                idx = win_cols if j - i == len(cols) else \
                    (torch.as_tensor([c for _, c in chunk[i:j]], device=device)[:, None]
                     + torch.arange(window, device=device)[None, :]).reshape(-1)
                vals = logits[i:j].permute(1, 2, 0, 3).reshape(num_classes, window, -1)
                acc[:, r - acc_top:r - acc_top + window].index_add_(2, idx, vals)
                i = j
            if bar is not None:
                bar.update(len(chunk))
    flush(total_h)
    if bar is not None:
        bar.close()
    return result, counts


def _cut(strip: torch.Tensor, chunk: Sequence[Tuple[int, int]], top: int, window: int) -> torch.Tensor:
    """Windows (B, C, w, w) of a band strip (C, band_h, W_padded), cut on the strip's device."""
    view = strip.unfold(1, window, 1).unfold(2, window, 1)  # (C, nr, nc, w, w), no copy
    r = torch.as_tensor([p[0] - top for p in chunk], device=strip.device)
    c = torch.as_tensor([p[1] for p in chunk], device=strip.device)
    return view[:, r, c].permute(1, 0, 2, 3).contiguous()


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

    def to(self, device) -> "TrainWindows":
        """Keep the padded scene resident on ``device``: windows are then cut there, not on the host."""
        for name in ("x1", "x2", "y", "valid"):
            setattr(self, name, getattr(self, name).to(device))
        return self

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
