"""Four-direction cross-scan of a 2-D map and its adjoint, the cross-merge.

SS2D reads a (B, C, H, W) map as four 1-D sequences of length L = H*W:
row-major, column-major, and both of those reversed. ``cross_merge`` maps the four
per-direction outputs back to row-major order and sums them; it is the adjoint
(transpose) of ``cross_scan``, so autograd through either is exact.

``reorder_directions`` applies direction k's order to the k-th of four row-major maps. A
per-direction linear map over channels commutes with the reordering of time steps, so SS2D
projects the (B, C, H, W) map once and reorders only the small projected rows, instead of
projecting four reordered copies of the map.

SS2D's features are channels-last: ``cross_scan_channels_last`` and ``cross_merge_channels_last``
go between a (B, H, W, C) map and the scan layout. They are left to ``torch.compile`` to fuse with
their neighbours: dedicated Triton kernels for them measured slower on an H100 (see
docs/benchmarks.md).
"""
from __future__ import annotations

import torch

__all__ = [
    "cross_scan", "cross_merge", "reorder_directions", "cross_scan_channels_last", "cross_merge_channels_last",
    "NUM_DIRECTIONS",
]

NUM_DIRECTIONS = 4


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Unfold a (B, C, H, W) map into the four scan orders, shape (B, 4, C, H*W).

    Direction 0 is row-major, 1 column-major, 2 and 3 are 0 and 1 reversed.
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    out = x.new_empty(b, NUM_DIRECTIONS, c, h * w)
    # four writes into one buffer: no intermediate stack/cat copies
    out[:, 0] = x.flatten(2)
    out[:, 1] = x.transpose(2, 3).flatten(2)
    out[:, 2:] = out[:, :2].flip(-1)
    return out


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum four per-direction sequences (B, 4, C, H*W) back into row-major order (B, C, H*W)."""
    if ys.dim() != 4 or ys.shape[1] != NUM_DIRECTIONS or ys.shape[-1] != height * width:
        raise ValueError(
            f"cross_merge expects (B, 4, C, {height}*{width}) sequences, got shape {tuple(ys.shape)}"
        )
    b, _, c, length = ys.shape
    pair = ys[:, :2] + ys[:, 2:].flip(-1)
    cols_as_rows = pair[:, 1].reshape(b, c, width, height).transpose(2, 3).reshape(b, c, length)
    return pair[:, 0] + cols_as_rows


def reorder_directions(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Read the k-th of four row-major sequences (B, 4, C, H*W) in direction k's scan order.

    ``reorder_directions(x, H, W)[:, k] == cross_scan(m)[:, k]`` whenever ``x[:, k]`` is the
    row-major flattening of the map ``m``.
    """
    if x.dim() != 4 or x.shape[1] != NUM_DIRECTIONS or x.shape[-1] != height * width:
        raise ValueError(
            f"reorder_directions expects (B, 4, C, {height}*{width}) sequences, got shape {tuple(x.shape)}"
        )
    b, _, c, length = x.shape
    out = torch.empty_like(x)
    out[:, 0::2] = x[:, 0::2]
    out[:, 1::2] = x[:, 1::2].reshape(b, 2, c, height, width).transpose(-1, -2).reshape(b, 2, c, length)
    out[:, 2:] = out[:, 2:].flip(-1)
    return out


def cross_scan_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Unfold a channels-last (B, H, W, C) map into the four scan orders, shape (B, 4, C, H*W)."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan_channels_last expects a (B, H, W, C) tensor, got shape {tuple(x.shape)}")
    return cross_scan(x.permute(0, 3, 1, 2))


def cross_merge_channels_last(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum four per-direction sequences (B, 4, C, H*W) into a channels-last (B, H, W, C) map."""
    b, _, c, _ = ys.shape
    return cross_merge(ys, height, width).transpose(1, 2).reshape(b, height, width, c)
