"""A co-registered two-modality scene with train/test label maps.

Conventions (the common ones of the multi-modal remote-sensing benchmarks):

* label maps are integer (H, W) arrays: **0 = unlabelled**, ``1..K`` = classes, with
  ``class_names[k - 1]`` naming class ``k``; models and metrics use the 0-based id ``k - 1``;
* modalities are given channels-last (H, W, C) by default (the layout of the ``.mat`` files the
  benchmarks ship), or channels-first (C, H, W) with ``layout="chw"``; a 2-D (H, W) array is one band.
  Inside a :class:`Scene` they are stored channels-first float32 (C, H, W), the layout models take.
* NaN, Inf and nodata values are counted per band and then refused, filled or masked
  (``nonfinite=``, see :class:`Scene`); :func:`scene_defaults` sets the policy for every scene built
  inside a ``with`` block (how ``m3amba train``'s ``data.nonfinite`` reaches any reader).
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from .validate import (Nodata, SceneError, ValueReport, as_georef, check_same_grid, fill_invalid, resolve_policy,
                       scan_values)

__all__ = ["Scene", "SceneError", "split_labels", "as_chw", "scene_defaults"]

_DEFAULTS: contextvars.ContextVar[Dict[str, Any]] = contextvars.ContextVar(
    "m3amba_scene_defaults", default={"nonfinite": "raise", "nodata": None})


@contextlib.contextmanager
def scene_defaults(nonfinite: Optional[str] = None, nodata: Nodata = None) -> Iterator[None]:
    """Within the block, scenes built without ``nonfinite=`` / ``nodata=`` use these (readers included).

    Args:
        nonfinite: ``"raise"`` (``"fail"``), ``"fill"`` or ``"mask"``; None keeps the current default.
        nodata: a value meaning "no data" in both modalities, or a pair; None keeps the current default.
    """
    current = dict(_DEFAULTS.get())
    if nonfinite is not None:
        current["nonfinite"] = resolve_policy(nonfinite)
    if nodata is not None:
        current["nodata"] = nodata
    token = _DEFAULTS.set(current)
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def as_chw(array, layout: str = "hwc", name: str = "modality") -> np.ndarray:
    """Return ``array`` as a float32 (C, H, W) array; ``layout`` says how a 3-D input is ordered."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if layout == "hwc":
            a = np.moveaxis(a, -1, 0)
        elif layout != "chw":
            raise SceneError(f"layout must be 'hwc' or 'chw', got {layout!r}")
    else:
        raise SceneError(f"{name} must be a 2-D (H, W) or 3-D array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise SceneError(f"{name} must hold numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _label_map(labels, name: str, shape, num_classes: int) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise SceneError(f"{name} must be an (H, W) label map, got shape {a.shape}")
    if tuple(a.shape) != tuple(shape):
        raise SceneError(f"{name} is {a.shape[0]}x{a.shape[1]} but the modalities are {shape[0]}x{shape[1]}")
    if a.dtype == bool:
        raise SceneError(f"{name} must be a label map (0 = unlabelled, 1..K = class), not a boolean mask")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or (a != np.round(a)).any():
            raise SceneError(f"{name} must hold whole class ids (0 = unlabelled, 1..K); found non-integer values")
    elif not np.issubdtype(a.dtype, np.integer):
        raise SceneError(f"{name} must be an integer label map, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > num_classes):
        raise SceneError(
            f"{name} values must be 0 (unlabelled) or 1..{num_classes} (one per class name); found range "
            f"{a.min()}..{a.max()} (0-based labels? add 1 and mark unlabelled pixels with 0)"
        )
    return a


class Scene:
    """Two co-registered modalities with train / test (and optional validation) label maps.

    Args:
        modality1, modality2: (H, W, C) arrays (or (C, H, W) with ``layout="chw"``; (H, W) = one band).
        train_mask, test_mask: (H, W) integer label maps, 0 = unlabelled, 1..K = class (see module doc).
            ``test_mask=None`` makes a scene without test labels (training / prediction only).
        class_names: K names; class k is ``class_names[k - 1]``.
        layout: ``"hwc"`` (default) or ``"chw"`` for 3-D modality arrays.
        val_mask: optional validation label map (same convention), disjoint from train and test.
        name: a short name, e.g. ``"eolearn_slovenia"``.
        band_names: optional ``(names1, names2)``.
        nonfinite: what to do with NaN, +Inf, -Inf and ``nodata`` values (counted per band first, see
            :attr:`value_report`): ``"raise"`` (or ``"fail"``) refuses them, listing counts per band;
            ``"fill"`` replaces them by the band's mean of valid values (with a warning); ``"mask"``
            fills them too, and takes the affected pixels out of every label map (they are neither
            trained on nor evaluated; :attr:`valid_mask` marks them False, ``m3amba predict`` writes 0
            there). None: the :func:`scene_defaults` in effect, else ``"raise"``.
        allow_overlap: accept pixels labelled in both train and test (refused by default).
        meta: free-form provenance (split settings, checksums, source ids...).
        nodata: a value meaning "no data" in both modalities (e.g. -9999), or a pair
            ``(nodata1, nodata2)``; treated like NaN. None: the :func:`scene_defaults` in effect, else none.
        georef: optional georeferencing of the modalities, ``(geo1, geo2)`` (or one for both): each a
            mapping or object with ``crs`` and/or ``transform`` (6 affine coefficients, e.g. a rasterio
            dataset's). Modalities on different grids are refused.

    Attributes:
        value_report: the :class:`~m3amba.data.validate.ValueReport` of the modalities as given.
        valid_mask: (H, W) bool, False on pixels masked by ``nonfinite="mask"``; None when no pixel is masked.
    """

    def __init__(
        self,
        modality1,
        modality2,
        train_mask,
        test_mask,
        class_names: Sequence[str],
        layout: str = "hwc",
        val_mask=None,
        name: str = "scene",
        band_names=None,
        nonfinite: Optional[str] = None,
        allow_overlap: bool = False,
        meta: Optional[Dict] = None,
        nodata: Nodata = None,
        georef=None,
    ) -> None:
        self.name = name
        self.class_names: List[str] = [str(c) for c in class_names]
        if not self.class_names:
            raise SceneError("class_names must name at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise SceneError(f"class_names must be unique, got {self.class_names}")
        self.modality1 = as_chw(modality1, layout, "modality1")
        self.modality2 = as_chw(modality2, layout, "modality2")
        h1, w1 = self.modality1.shape[1:]
        h2, w2 = self.modality2.shape[1:]
        if (h1, w1) != (h2, w2):
            hint = "" if layout == "chw" else " (channels-first arrays? pass layout='chw')"
            raise SceneError(f"modality1 is {h1}x{w1} but modality2 is {h2}x{w2}; they must be co-registered{hint}")
        self.georef = self._georef(georef)
        shape = (h1, w1)
        k = len(self.class_names)
        self.train_mask = _label_map(train_mask, "train_mask", shape, k)
        self.test_mask = (np.zeros(shape, np.int64) if test_mask is None
                          else _label_map(test_mask, "test_mask", shape, k))
        self.val_mask = None if val_mask is None else _label_map(val_mask, "val_mask", shape, k)
        defaults = _DEFAULTS.get()
        self.valid_mask: Optional[np.ndarray] = None
        self.value_report: ValueReport = self._check_values(
            resolve_policy(defaults["nonfinite"] if nonfinite is None else nonfinite),
            defaults["nodata"] if nodata is None else nodata)
        if not (self.train_mask > 0).any():
            masked = "" if self.valid_mask is None else (
                f" after masking {int((~self.valid_mask).sum())} pixels with invalid values (nonfinite='mask')")
            raise SceneError(f"train_mask has no labelled pixel (all 0){masked}: nothing to train on")
        if test_mask is not None and not (self.test_mask > 0).any():
            raise SceneError("test_mask has no labelled pixel (all 0); pass test_mask=None for a scene without test labels")
        if self.val_mask is not None and not (self.val_mask > 0).any():
            raise SceneError("val_mask has no labelled pixel (all 0); pass val_mask=None for no validation split")
        pairs = [("train", self.train_mask), ("test", self.test_mask)]
        if self.val_mask is not None:
            pairs.append(("val", self.val_mask))
        for i in range(len(pairs)):
            for j in range(i + 1, len(pairs)):
                overlap = int(((pairs[i][1] > 0) & (pairs[j][1] > 0)).sum())
                if overlap and not allow_overlap:
                    raise SceneError(
                        f"{overlap} pixels are labelled in both the {pairs[i][0]} and the {pairs[j][0]} mask; "
                        "the splits must be disjoint (allow_overlap=True to accept)"
                    )
        self._warn_missing_classes()
        self.band_names = band_names
        self.meta = dict(meta or {})

    @staticmethod
    def _georef(georef):
        if georef is None:
            return None
        if isinstance(georef, (tuple, list)) and len(georef) == 2:
            g1, g2 = as_georef(georef[0]), as_georef(georef[1])
        else:
            g1 = g2 = as_georef(georef)
        check_same_grid(g1, g2)
        return g1, g2

    def _check_values(self, policy: str, nodata: Nodata) -> ValueReport:
        report, (bad1, bad2) = scan_values(self.modality1, self.modality2, nodata)
        report.policy = policy
        if not report.any:
            return report
        problems = "; ".join(report.problems())
        if policy == "raise":
            raise SceneError(problems + " (nonfinite='fill' replaces them by the band mean; nonfinite='mask' also "
                             "takes those pixels out of training and evaluation)")
        for i, (x, bad) in enumerate(((self.modality1, bad1), (self.modality2, bad2)), start=1):
            if bad.any() and not x.flags.writeable:
                raise SceneError(
                    problems + f"; nonfinite={policy!r} replaces them in place, but modality{i} is read-only (a file "
                    "memory-mapped with mmap_mode='r'?): open it with mmap_mode='c' (copy-on-write: only the pages "
                    "changed are copied, the file stays untouched) or clean the file first")
        fill_invalid(self.modality1, bad1)
        fill_invalid(self.modality2, bad2)
        if policy == "fill":
            warnings.warn(problems + "; replaced by the band mean", stacklevel=3)
            return report
        self.valid_mask = ~report.invalid_pixels
        for split in ("train", "val", "test"):
            mask = getattr(self, f"{split}_mask")
            if mask is None:
                continue
            hit = (mask > 0) & report.invalid_pixels
            if hit.any():
                report.dropped_labels[split] = int(hit.sum())
                mask[hit] = 0
        dropped = ", ".join(f"{k} {v}" for k, v in report.dropped_labels.items()) or "none"
        warnings.warn(f"{problems}; replaced by the band mean, and the {int(report.invalid_pixels.sum())} pixels "
                      f"concerned masked out (labelled pixels taken out: {dropped})", stacklevel=3)
        return report

    def _warn_missing_classes(self) -> None:
        k = self.num_classes
        train = np.bincount(self.train_mask.ravel(), minlength=k + 1)[1:]
        test = np.bincount(self.test_mask.ravel(), minlength=k + 1)[1:]
        missing = [c for c in range(k) if not train[c]]
        if not missing:
            return
        msg = f"classes without training pixels: {', '.join(self.class_names[c] for c in missing)}"
        in_test = [c for c in missing if test[c]]
        if in_test:
            msg += ("; of these, " + ", ".join(f"{self.class_names[c]} ({int(test[c])} test pixels)" for c in in_test)
                    + " appear in the test mask: the model cannot learn them, so their accuracy will be 0 "
                    "(and they lower OA/AA/kappa)")
        warnings.warn(msg, stacklevel=3)

    # -- facts -------------------------------------------------------------------------
    @property
    def shape(self):
        """(H, W)."""
        return tuple(self.train_mask.shape)

    @property
    def in_chans(self):
        """(C1, C2) band counts, as ``create_model(in_chans=...)`` takes them."""
        return int(self.modality1.shape[0]), int(self.modality2.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self, which: str = "train") -> np.ndarray:
        """Pixels per class (K,) of the ``train``, ``test`` or ``val`` mask."""
        mask = {"train": self.train_mask, "test": self.test_mask, "val": self.val_mask}[which]
        if mask is None:
            return np.zeros(self.num_classes, np.int64)
        return np.bincount(mask.ravel(), minlength=self.num_classes + 1)[1:]

    def summary(self) -> str:
        """A human-readable table of the scene: size, bands and per-class train/val/test counts."""
        h, w = self.shape
        lines = [f"{self.name}: {h} x {w} pixels, bands {self.in_chans[0]} + {self.in_chans[1]}, "
                 f"{self.num_classes} classes"]
        tr, te, va = self.counts("train"), self.counts("test"), self.counts("val")
        width = max(len(c) for c in self.class_names)
        lines.append(f"  {'class':<{width}} {'train':>7} {'val':>7} {'test':>7}")
        for i, c in enumerate(self.class_names):
            lines.append(f"  {c:<{width}} {tr[i]:>7} {va[i]:>7} {te[i]:>7}")
        lines.append(f"  {'total':<{width}} {tr.sum():>7} {va.sum():>7} {te.sum():>7}")
        if self.value_report.any:
            lines.extend("  " + line for line in self.value_report.summary().splitlines())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Scene(name={self.name!r}, shape={self.shape}, in_chans={self.in_chans}, "
                f"classes={self.num_classes}, train={int(self.counts('train').sum())}, "
                f"test={int(self.counts('test').sum())})")


def split_labels(
    labels,
    train_per_class: Optional[int] = None,
    train_fraction: Optional[float] = None,
    val_per_class: int = 0,
    seed: int = 0,
    block_size: Optional[int] = None,
):
    """Split one reference label map (0 = unlabelled) into disjoint train / val / test label maps.

    Pixel split (``block_size=None``), per class: ``train_per_class`` pixels (at most half of the class,
    so that every class keeps test pixels; at least one where the class has two or more) or
    ``train_fraction`` of them, drawn with ``numpy.random.default_rng(seed)``; then ``val_per_class``
    of the remaining ones (at most half of them) for validation; the rest are test pixels.

    Block split (``block_size=b``): the scene is cut into b x b blocks; a seeded random
    ``train_fraction`` (default 0.5) of the blocks holding labels become training blocks (all their
    labelled pixels train, or ``train_per_class`` of them per class if given) and the others test
    blocks. Train and test pixels are then spatially disjoint, though a training window around a pixel
    near a block edge still sees (unlabelled) image content of a neighbouring test block.

    Returns:
        ``(train, val, test)`` label maps (``val`` is None when ``val_per_class`` is 0).
    """
    labels = np.asarray(labels).astype(np.int64)
    if train_per_class is not None and train_fraction is not None and block_size is None:
        raise ValueError("give train_per_class or train_fraction, not both")
    if train_fraction is not None and not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    train = np.zeros_like(labels)
    val = np.zeros_like(labels)
    classes = [int(c) for c in np.unique(labels) if c > 0]
    if block_size is None:
        if train_per_class is None and train_fraction is None:
            raise ValueError("give train_per_class or train_fraction (or block_size)")
        for c in classes:
            idx = np.flatnonzero(labels.ravel() == c)
            rng.shuffle(idx)
            n = len(idx)
            if train_per_class is not None:
                k = min(train_per_class, max(n // 2, 1 if n >= 2 else 0))
            else:
                k = int(round(train_fraction * n))
                k = min(max(k, 1 if n >= 2 else 0), n - 1 if n >= 2 else n)
            train.ravel()[idx[:k]] = c
            rest = idx[k:]
            v = min(val_per_class, len(rest) // 2)
            val.ravel()[rest[:v]] = c
    else:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        frac = 0.5 if train_fraction is None else train_fraction
        h, w = labels.shape
        bx = -(-w // block_size)  # blocks per row
        block_id = (np.arange(h)[:, None] // block_size) * bx + (np.arange(w)[None, :] // block_size)
        labelled_blocks = np.unique(block_id[labels > 0])
        order = rng.permutation(labelled_blocks)
        n_train = min(max(int(round(frac * len(order))), 1), max(len(order) - 1, 1))
        train_blocks = np.isin(block_id, order[:n_train])
        in_train = train_blocks & (labels > 0)
        if train_per_class is None:
            train[in_train] = labels[in_train]
        else:
            for c in classes:
                idx = np.flatnonzero((in_train & (labels == c)).ravel())
                rng.shuffle(idx)
                train.ravel()[idx[:train_per_class]] = c
        if val_per_class:
            for c in classes:
                idx = np.flatnonzero(((~train_blocks) & (labels == c)).ravel())
                rng.shuffle(idx)
                val.ravel()[idx[: min(val_per_class, len(idx) // 2)]] = c
        # test = labelled pixels of the test blocks only (training blocks' leftovers stay out)
        test = np.where((~train_blocks) & (labels > 0) & (val == 0), labels, 0)
        return train, (val if val_per_class else None), test
    test = np.where((labels > 0) & (train == 0) & (val == 0), labels, 0)
    return train, (val if val_per_class else None), test
