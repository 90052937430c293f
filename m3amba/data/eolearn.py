"""The eo-learn example patch in Slovenia: a small real two-modality scene (Sentinel-2 L1C + DEM).

101 x 100 pixels at 10 m, from the example data of the eo-learn project (sentinel-hub/eo-learn,
folder ``example_data/``, MIT license). Files: ``s2_l1c.npy`` (5, 101, 100, 13) float32,
``dem.npy`` (101, 100, 1) float32, ``lulc.npy`` (101, 100, 1) uint16.

* modality 1: the 13 Sentinel-2 bands of one date (``date=0..4``), or all dates stacked as 65 channels
  (``date="stack"``, date-major: date 0's 13 bands first);
* modality 2: the DEM (metres);
* labels: ``lulc.npy`` with eo-learn's legend; only classes present in the patch are kept and renumbered
  1..K in legend order (cultivated land, forest, grassland, shrubland, artificial surface here);
* split: no official one exists. Default: 50 training pixels per class (at most half of a class:
  cultivated land has 11 pixels, so 5 train / 6 test), seed 0, everything else labelled is test.
  ``block_size=b`` gives a spatially disjoint split on b x b blocks instead (see
  :func:`~m3amba.data.scene.split_labels`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .scene import Scene, split_labels

__all__ = ["load_eolearn_slovenia", "find_eolearn_dir", "EOLEARN_LEGEND", "EOLEARN_SHA256", "DataNotFoundError"]

#: eo-learn's land-cover example legend (value -> name); 0 = no data
EOLEARN_LEGEND = {
    1: "cultivated land", 2: "forest", 3: "grassland", 4: "shrubland", 5: "water", 6: "wetland",
    7: "tundra", 8: "artificial surface", 9: "bareland", 10: "snow and ice",
}
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

#: sha256 of the files as taken from eo-learn commit 303e75855880531d519264f847e7c6b2fb97104d
EOLEARN_SHA256 = {
    "s2_l1c.npy": "2fbd4921483ef21129446d7d79c153975f1590310cd5b1dc569c04090c78a0f4",
    "dem.npy": "bb2ada2ea0e74a452e32fcc680e51ee0106c326b7c56704cfbc15d3de2e079b8",
    "lulc.npy": "9e1717d8ebc8df18b8cd36ab54f275616c5f874967662d8a2c2af0a4654be451",
}

WHERE_TO_GET = (
    "The eo-learn example data (MIT license) is in the eo-learn repository, "
    "https://github.com/sentinel-hub/eo-learn, folder example_data/ (an EOPatch of Slovenia): save "
    "data/L1C_data (or bands) as s2_l1c.npy (5, 101, 100, 13), data_timeless/DEM as dem.npy and "
    "mask_timeless/LULC as lulc.npy in one folder, then pass --data-dir (or set M3AMBA_EOLEARN_DIR)."
)


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where they were looked for."""


def _candidates(data_dir):
    if data_dir is not None:
        yield Path(data_dir)
        return
    env = os.environ.get("M3AMBA_EOLEARN_DIR")
    if env:
        yield Path(env)
    yield Path.cwd() / ".." / "shared" / "data" / "eolearn_slovenia"
    yield Path(__file__).resolve().parents[3] / "shared" / "data" / "eolearn_slovenia"


def find_eolearn_dir(data_dir=None) -> Path:
    """The folder holding the three ``.npy`` files, or :class:`DataNotFoundError` saying where to get them."""
    tried = []
    for cand in _candidates(data_dir):
        tried.append(str(cand))
        if all((cand / f).is_file() for f in EOLEARN_SHA256):
            return cand.resolve()
    raise DataNotFoundError(f"eolearn_slovenia data not found (looked in: {', '.join(tried)}; need "
                            f"{', '.join(EOLEARN_SHA256)}). {WHERE_TO_GET}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_eolearn_slovenia(
    data_dir=None,
    date: Union[int, str] = 0,
    train_per_class: Optional[int] = 50,
    train_fraction: Optional[float] = None,
    val_per_class: int = 0,
    block_size: Optional[int] = None,
    seed: int = 0,
    verify: bool = True,
    nonfinite: Optional[str] = None,
    nodata=None,
) -> Scene:
    """Load the eo-learn Slovenia patch as a :class:`Scene` (see the module doc for the protocol).

    Args:
        data_dir: folder with the files (default: ``$M3AMBA_EOLEARN_DIR``, then ``../shared/data/eolearn_slovenia``).
        date: acquisition index 0..4, or ``"stack"`` for all five dates as 65 channels.
        train_per_class, train_fraction, val_per_class, block_size, seed: the split, see
            :func:`~m3amba.data.scene.split_labels` (``train_fraction`` replaces ``train_per_class``).
        verify: check the files' sha256 against :data:`EOLEARN_SHA256`.
        nonfinite, nodata: NaN/Inf/nodata policy of the :class:`Scene` (default: :func:`~m3amba.data.scene.scene_defaults`).
    """
    from .files import read_array

    folder = find_eolearn_dir(data_dir)
    if verify:
        for name, digest in EOLEARN_SHA256.items():
            got = _sha256(folder / name)
            if got != digest:
                raise ValueError(f"{folder / name}: sha256 {got} differs from the expected {digest} "
                                 "(a different or damaged file; verify=False skips the check)")
    s2 = read_array(folder / "s2_l1c.npy")  # clear errors for truncated files (verify=False) or pickled objects
    dem = read_array(folder / "dem.npy")
    lulc = read_array(folder / "lulc.npy")
    for name, a, ndim in (("s2_l1c.npy", s2, 4), ("dem.npy", dem, 3), ("lulc.npy", lulc, 3)):
        if a.ndim != ndim:
            raise ValueError(f"{folder / name} has shape {a.shape}; expected {ndim} dimensions "
                             "(s2_l1c (dates, H, W, 13), dem (H, W, 1), lulc (H, W, 1))")
    lulc = lulc[..., 0].astype(np.int64)
    if date == "stack":
        m1 = np.concatenate(list(s2), axis=-1)
        names1 = [f"t{t}_{b}" for t in range(s2.shape[0]) for b in S2_BANDS]
    else:
        if not isinstance(date, (int, np.integer)) or not 0 <= date < s2.shape[0]:
            raise ValueError(f"date must be 0..{s2.shape[0] - 1} or 'stack', got {date!r}")
        m1 = s2[date]
        names1 = list(S2_BANDS)
    present = [int(v) for v in np.unique(lulc) if v > 0]
    unknown = [v for v in present if v not in EOLEARN_LEGEND]
    if unknown:
        raise ValueError(f"lulc.npy holds values outside eo-learn's legend: {unknown}")
    remap = np.zeros(lulc.max() + 1, np.int64)
    for new, old in enumerate(present, start=1):
        remap[old] = new
    labels = remap[lulc]
    if train_fraction is not None and block_size is None:
        train_per_class = None
    train, val, test = split_labels(labels, train_per_class=train_per_class, train_fraction=train_fraction,
                                    val_per_class=val_per_class, seed=seed, block_size=block_size)
    split = dict(train_per_class=train_per_class, train_fraction=train_fraction, val_per_class=val_per_class,
                 block_size=block_size, seed=seed)
    return Scene(m1, dem, train, test, [EOLEARN_LEGEND[v] for v in present], layout="hwc", val_mask=val,
                 name="eolearn_slovenia", band_names=(names1, ["DEM"]), nonfinite=nonfinite, nodata=nodata,
                 georef=_bbox_georef(folder / "bbox.geojson", labels.shape),
                 meta={"source_values": present, "date": date, "split": split, "data_dir": str(folder)})


def _bbox_georef(path: Path, shape) -> Optional[dict]:
    """The patch's grid from eo-learn's ``bbox.geojson`` (CRS + bounds) and the raster shape; None if absent."""
    if not path.is_file():
        return None
    import json
    try:
        box = json.loads(path.read_text())
        name = box["crs"]["properties"]["name"]  # e.g. urn:ogc:def:crs:EPSG::32633
        xs = [float(p[0]) for p in box["coordinates"][0]]
        ys = [float(p[1]) for p in box["coordinates"][0]]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: not a GeoJSON polygon with a named CRS ({exc}); remove it or fix it") from exc
    crs = "EPSG:" + name.rsplit(":", 1)[-1] if "EPSG" in name.upper() else name
    h, w = shape
    # north-up grid: x grows with the column, y falls with the row, origin at the top-left corner
    return {"crs": crs, "transform": ((max(xs) - min(xs)) / w, 0.0, min(xs), 0.0, -(max(ys) - min(ys)) / h, max(ys))}
