"""Checks of a scene's values and grids: NaN/Inf/nodata counts per band, and georeferencing of the modalities.

* :func:`scan_values` counts, per band of both modalities, the NaN, +Inf, -Inf and nodata values and
  returns a :class:`ValueReport` (what :class:`~m3amba.data.Scene` reports and acts on, see its
  ``nonfinite`` policy);
* :func:`check_same_grid` refuses two modalities whose georeferencing (CRS, affine transform) differs.

The selective scan is a recurrence over every pixel of a window: one NaN in the input would spread
over the whole output map. Scenes therefore never reach a model with such values: they are refused
(policy ``raise``), replaced by the band mean (``fill``) or replaced and taken out of training and
evaluation (``mask``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "SceneError", "ValueReport", "scan_values", "fill_invalid", "nodata_pair", "NONFINITE_POLICIES",
    "resolve_policy", "as_georef", "check_same_grid",
]

#: what a scene does with NaN/Inf/nodata values ("fail" is accepted as a synonym of "raise")
NONFINITE_POLICIES = ("raise", "fill", "mask")

#: the columns of :attr:`ValueReport.counts`
KINDS = ("NaN", "+Inf", "-Inf", "nodata")

Nodata = Union[None, float, Sequence[Optional[float]]]


class SceneError(ValueError):
    """A scene's arrays are inconsistent (shapes, labels, masks, grids or non-finite values)."""


def resolve_policy(policy: str) -> str:
    """The canonical name of a ``nonfinite`` policy (``fail`` = ``raise``), or :class:`SceneError`."""
    canonical = {"fail": "raise"}.get(policy, policy)
    if canonical not in NONFINITE_POLICIES:
        raise SceneError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)} (or 'fail'), got {policy!r}")
    return canonical


def nodata_pair(nodata: Nodata) -> Tuple[Optional[float], Optional[float]]:
    """``nodata`` as one value (or None) per modality: a number applies to both, a pair to one each."""
    if nodata is None or isinstance(nodata, (int, float, np.number)):
        value = None if nodata is None else float(nodata)
        return value, value
    values = list(nodata)
    if len(values) != 2:
        raise SceneError(f"nodata must be a number or a pair (nodata1, nodata2), got {nodata!r}")
    return tuple(None if v is None else float(v) for v in values)  # type: ignore[return-value]


@dataclass
class ValueReport:
    """Invalid values of a scene, per band: the result of :func:`scan_values`.

    Attributes:
        counts: per modality, a (C, 4) int64 array of NaN, +Inf, -Inf and nodata counts per band.
        nodata: the nodata value of each modality (None = none).
        invalid_pixels: (H, W) bool, True where any band of either modality holds an invalid value.
        policy: what the scene did about them (``raise``, ``fill`` or ``mask``).
    """

    counts: Tuple[np.ndarray, np.ndarray]
    nodata: Tuple[Optional[float], Optional[float]]
    invalid_pixels: np.ndarray
    policy: str = "raise"
    dropped_labels: Dict[str, int] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        """Whether any band of either modality holds an invalid value."""
        return bool(self.counts[0].any() or self.counts[1].any())

    def per_band(self, modality: int) -> Dict[int, Dict[str, int]]:
        """``{band: {"NaN": n, "+Inf": n, "-Inf": n, "nodata": n}}`` of the bands of ``modality`` (1 or 2) with any."""
        c = self.counts[modality - 1]
        return {int(b): {k: int(v) for k, v in zip(KINDS, c[b])} for b in np.nonzero(c.sum(1))[0]}

    def problems(self) -> List[str]:
        """One phrase per modality and kind, e.g. ``"modality1 has non-finite values (band 1: 2, band 3: 1)"``."""
        out = []
        for i, c in enumerate(self.counts, start=1):
            nonfinite = c[:, :3].sum(1)
            if nonfinite.any():
                out.append(f"modality{i} has non-finite values ("
                           + ", ".join(f"band {b}: {int(n)}" for b, n in enumerate(nonfinite) if n) + ")")
            if c[:, 3].any():
                out.append(f"modality{i} has nodata values (= {self.nodata[i - 1]:g}) ("
                           + ", ".join(f"band {b}: {int(n)}" for b, n in enumerate(c[:, 3]) if n) + ")")
        return out

    def summary(self) -> str:
        """A few lines: per band the counts of each kind, and the pixels affected."""
        if not self.any:
            return "invalid values: none (no NaN, Inf or nodata value in any band)"
        h, w = self.invalid_pixels.shape
        lines = [f"invalid values (policy {self.policy}): {int(self.invalid_pixels.sum())} of {h * w} pixels affected"]
        for i in (1, 2):
            for band, kinds in self.per_band(i).items():
                detail = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
                lines.append(f"  modality{i} band {band}: {detail}")
        if self.dropped_labels:
            lines.append("  labels taken out (masked pixels): "
                         + ", ".join(f"{k} {v}" for k, v in self.dropped_labels.items()))
        return "\n".join(lines)


def _invalid(x: np.ndarray, nodata: Optional[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(C, 4) counts and the (C, H, W) invalid mask of one (C, H, W) array."""
    c = x.shape[0]
    flat = x.reshape(c, -1)
    nan = np.isnan(flat)
    posinf = np.isposinf(flat)
    neginf = np.isneginf(flat)
    nd = (flat == np.asarray(nodata, dtype=flat.dtype)) if nodata is not None and np.isfinite(nodata) \
        else np.zeros_like(nan)
    counts = np.stack([nan.sum(1), posinf.sum(1), neginf.sum(1), nd.sum(1)], axis=1).astype(np.int64)
    return counts, (nan | posinf | neginf | nd).reshape(x.shape)


def scan_values(x1: np.ndarray, x2: np.ndarray, nodata: Nodata = None) -> Tuple[ValueReport, Tuple[np.ndarray, np.ndarray]]:
    """Count NaN, +Inf, -Inf and nodata values per band of two (C, H, W) arrays.

    Args:
        x1, x2: the modalities, channels-first.
        nodata: a value meaning "no data" in both modalities, or a pair (one per modality, None = none).

    Returns:
        ``(report, (bad1, bad2))``: the :class:`ValueReport` and the (C, H, W) bool masks of invalid values.
    """
    nd = nodata_pair(nodata)
    c1, bad1 = _invalid(x1, nd[0])
    c2, bad2 = _invalid(x2, nd[1])
    pixels = bad1.any(0) | bad2.any(0)
    return ValueReport((c1, c2), nd, pixels), (bad1, bad2)


def fill_invalid(x: np.ndarray, bad: np.ndarray) -> None:
    """Replace, in place, the ``bad`` values of each band of ``x`` (C, H, W) by the band's mean of valid values (0 if none)."""
    for b in np.nonzero(bad.reshape(bad.shape[0], -1).any(1))[0]:
        good = x[b][~bad[b]]
        x[b][bad[b]] = good.mean(dtype=np.float64) if good.size else 0.0


# -- georeferencing ------------------------------------------------------------------------------------
def as_georef(obj: Any) -> Optional[Dict[str, Any]]:
    """``{"crs": str or None, "transform": 6 floats or None}`` from a mapping or an object with such attributes.

    Accepts e.g. ``{"crs": "EPSG:32633", "transform": (10, 0, 500000, 0, -10, 5100000)}``, a rasterio
    dataset or profile (``transform`` an ``Affine``: its first six coefficients a, b, c, d, e, f), or None.
    """
    if obj is None:
        return None
    get = obj.get if isinstance(obj, Mapping) else (lambda k: getattr(obj, k, None))
    crs, transform = get("crs"), get("transform")
    if crs is None and transform is None:
        raise SceneError(f"georeferencing must give 'crs' and/or 'transform', got {obj!r}")
    t = None
    if transform is not None:
        coeffs = [float(v) for v in list(transform)[:6]]
        if len(coeffs) != 6:
            raise SceneError(f"a transform has six coefficients (a, b, c, d, e, f), got {transform!r}")
        t = tuple(coeffs)
    crs = None if crs is None else str(crs).strip()
    if crs is not None and crs.lower().startswith("epsg:"):
        crs = crs.upper()  # "epsg:32633" and "EPSG:32633" are the same CRS
    return {"crs": crs, "transform": t}


def check_same_grid(g1: Optional[Dict[str, Any]], g2: Optional[Dict[str, Any]]) -> None:
    """Raise :class:`SceneError` when two georeferences (from :func:`as_georef`) describe different grids.

    CRSs are compared as strings (case-insensitive); transforms must agree to a thousandth of a pixel.
    A side that does not know its CRS or transform is not compared on that item.
    """
    if g1 is None or g2 is None:
        return
    problems = []
    if g1["crs"] and g2["crs"] and g1["crs"].upper() != g2["crs"].upper():
        problems.append(f"CRS {g1['crs']} vs {g2['crs']}")
    t1, t2 = g1["transform"], g2["transform"]
    if t1 is not None and t2 is not None:
        pixel = min(abs(v) for v in (t1[0], t1[4], t2[0], t2[4]) if v) if any((t1[0], t1[4], t2[0], t2[4])) else 1.0
        if not np.allclose(t1, t2, rtol=0, atol=1e-3 * pixel):
            detail = []
            if not np.allclose((t1[0], t1[4]), (t2[0], t2[4]), rtol=0, atol=1e-3 * pixel):
                detail.append(f"pixel size {(t1[0], t1[4])} vs {(t2[0], t2[4])}")
            if not np.allclose((t1[2], t1[5]), (t2[2], t2[5]), rtol=0, atol=1e-3 * pixel):
                detail.append(f"origin {(t1[2], t1[5])} vs {(t2[2], t2[5])} "
                              f"(differs by {(t2[2] - t1[2], t2[5] - t1[5])} map units)")
            if not np.allclose((t1[1], t1[3]), (t2[1], t2[3]), rtol=0, atol=1e-3 * pixel):
                detail.append(f"rotation terms {(t1[1], t1[3])} vs {(t2[1], t2[3])}")
            problems.append("transform " + "; ".join(detail))
    if problems:
        raise SceneError(
            "modality1 and modality2 are not on the same grid: " + "; ".join(problems)
            + ". Resample one onto the other's grid (e.g. rasterio.warp.reproject) before building the Scene"
        )
