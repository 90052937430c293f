"""Readers of the four multi-modal benchmarks of the paper, in the ``.mat`` layouts they are commonly
distributed in: Houston 2013 (HSI + LiDAR), MUUFL Gulfport (HSI + LiDAR), Trento (HSI + LiDAR) and
Augsburg (HSI + SAR).

Every benchmark ships fixed train / test label maps (0 = unlabelled, 1..K = class). A reader looks in
``data_dir`` for each role's file under any of its usual names and, inside it, for any of the usual
variable names; MATLAB v7.3 files (HDF5) are read through h5py (optional) and transposed back.
Checksums of the real files could not be verified while writing this module, so ``sha256`` is None
for every file (no check is made).

=========== ======================= ============ ===== ======= ===============
benchmark   files (first name used)  H x W        bands classes train / test
=========== ======================= ============ ===== ======= ===============
houston2013 HSI.mat, LiDAR.mat,      349 x 1905   144+1 15      2,832 / 12,197
            TRLabel.mat, TSLabel.mat
muufl       hsi.mat, lidar.mat,      325 x 220    64+2  11      (varies)
            train_test_gt.mat
trento      HSI.mat, LiDAR.mat,      166 x 600    63+1  6       819 / 29,395
            TRLabel.mat, TSLabel.mat
augsburg    data_hsi.mat,            332 x 485    180+4 7       761 / 77,533
            data_sar.mat,
            mask_train.mat,
            mask_test.mat
=========== ======================= ============ ===== ======= ===============
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .eolearn import DataNotFoundError
from .scene import Scene

__all__ = ["BenchmarkSpec", "BENCHMARKS", "load_benchmark", "read_mat_variable"]


@dataclass(frozen=True)
class FileSpec:
    """One role's file: candidate file names and candidate variable names inside it."""

    names: Tuple[str, ...]
    keys: Tuple[str, ...]
    sha256: Optional[str] = None  # unknown for the real files: not checked


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    modality_names: Tuple[str, str]
    files: Dict[str, FileSpec]  # roles: m1, m2, train, test
    shape: Tuple[int, int]
    bands: Tuple[int, int]
    class_names: Tuple[str, ...]
    train_count: Optional[int] = None
    test_count: Optional[int] = None
    notes: str = ""
    aliases: Tuple[str, ...] = field(default_factory=tuple)


BENCHMARKS: Dict[str, BenchmarkSpec] = {
    "houston2013": BenchmarkSpec(
        name="houston2013", modality_names=("HSI", "LiDAR"),
        files={"m1": FileSpec(("HSI.mat", "Houston_HSI.mat", "hsi.mat"), ("HSI", "hsi", "data")),
               "m2": FileSpec(("LiDAR.mat", "LiDAR_1.mat", "Houston_LiDAR.mat", "lidar.mat"), ("LiDAR", "lidar", "data")),
               "train": FileSpec(("TRLabel.mat", "train.mat"), ("TRLabel", "trainlabels", "train")),
               "test": FileSpec(("TSLabel.mat", "test.mat"), ("TSLabel", "testlabels", "test"))},
        shape=(349, 1905), bands=(144, 1),
        class_names=("healthy grass", "stressed grass", "synthetic grass", "trees", "soil", "water",
                     "residential", "commercial", "road", "highway", "railway", "parking lot 1",
                     "parking lot 2", "tennis court", "running track"),
        train_count=2832, test_count=12197, aliases=("houston", "houston_2013")),
    "muufl": BenchmarkSpec(
        name="muufl", modality_names=("HSI", "LiDAR"),
        files={"m1": FileSpec(("hsi.mat", "HSI.mat", "muufl_hsi.mat"), ("HSI", "hsi", "data")),
               "m2": FileSpec(("lidar.mat", "LiDAR.mat", "muufl_lidar.mat"), ("lidar", "LiDAR", "data")),
               "train": FileSpec(("train_test_gt.mat", "TRLabel.mat"), ("trainlabels", "TRLabel")),
               "test": FileSpec(("train_test_gt.mat", "TSLabel.mat"), ("testlabels", "TSLabel"))},
        shape=(325, 220), bands=(64, 2),
        class_names=("trees", "mostly grass", "mixed ground surface", "dirt and sand", "road", "water",
                     "building shadow", "building", "sidewalk", "yellow curb", "cloth panels"),
        notes="split sizes vary between papers; negative label values (-1 = unlabelled in the original "
              "ground truth) are read as 0", aliases=("muffl", "muufl_gulfport")),
    "trento": BenchmarkSpec(
        name="trento", modality_names=("HSI", "LiDAR"),
        files={"m1": FileSpec(("HSI.mat", "Trento_HSI.mat", "hsi.mat"), ("HSI", "hsi", "data")),
               "m2": FileSpec(("LiDAR.mat", "Trento_LiDAR.mat", "lidar.mat"), ("LiDAR", "lidar", "data")),
               "train": FileSpec(("TRLabel.mat", "train.mat"), ("TRLabel", "trainlabels", "train")),
               "test": FileSpec(("TSLabel.mat", "test.mat"), ("TSLabel", "testlabels", "test"))},
        shape=(166, 600), bands=(63, 1),
        class_names=("apple trees", "buildings", "ground", "woods", "vineyard", "roads"),
        train_count=819, test_count=29395),
    "augsburg": BenchmarkSpec(
        name="augsburg", modality_names=("HSI", "SAR"),
        files={"m1": FileSpec(("data_hsi.mat", "HSI.mat"), ("data", "HSI", "hsi")),
               "m2": FileSpec(("data_sar.mat", "SAR.mat"), ("data", "SAR", "sar")),
               "train": FileSpec(("mask_train.mat", "TRLabel.mat"), ("mask_train", "TRLabel")),
               "test": FileSpec(("mask_test.mat", "TSLabel.mat"), ("mask_test", "TSLabel"))},
        shape=(332, 485), bands=(180, 4),
        class_names=("forest", "residential area", "industrial area", "low plants", "allotment",
                     "commercial area", "water"),
        train_count=761, test_count=77533),
}


def _lookup(name: str) -> BenchmarkSpec:
    key = name.lower().replace("-", "_").replace(" ", "_")
    for spec in BENCHMARKS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


def read_mat_variable(path: Path, keys: Sequence[str]) -> np.ndarray:
    """The first of ``keys`` found in a ``.mat`` file (v5 through scipy, v7.3/HDF5 through h5py).

    Missing, empty, truncated or corrupt files raise errors that name the file
    (:func:`m3amba.data.files.read_array`).
    """
    from .files import read_array
    return read_array(path, list(keys))


def _find(folder: Path, fs: FileSpec) -> Optional[Path]:
    for n in fs.names:
        if (folder / n).is_file():
            return folder / n
    return None


def load_benchmark(name: str, data_dir, check_sizes: bool = True) -> Scene:
    """Read benchmark ``name`` (houston2013, muufl, trento, augsburg) from ``data_dir`` as a :class:`Scene`.

    ``check_sizes`` compares the arrays with the published sizes, band counts and train/test counts
    (a mismatch of sizes/bands raises, of counts warns); tests on small synthetic files turn it off.
    """
    spec = _lookup(name)
    folder = Path(data_dir)
    paths = {role: _find(folder, fs) for role, fs in spec.files.items()}
    missing = [role for role, p in paths.items() if p is None]
    if missing:
        expected = "; ".join(f"{role}: one of {', '.join(spec.files[role].names)} holding "
                             f"'{'/'.join(spec.files[role].keys)}'" for role in spec.files)
        raise DataNotFoundError(f"{spec.name}: files missing in {folder} for {', '.join(missing)}. Expected: "
                                f"{expected}. The data sets are distributed by their authors (see the paper's "
                                "references); they are not bundled.")
    arrays = {role: read_mat_variable(p, spec.files[role].keys) for role, p in paths.items()}
    labels = {}
    for role in ("train", "test"):
        y = np.asarray(arrays[role])
        y = np.where(y < 0, 0, y)  # some distributions mark unlabelled pixels -1
        labels[role] = y.astype(np.int64)
    m1, m2 = arrays["m1"], arrays["m2"]
    if check_sizes:
        shape = tuple(labels["train"].shape)
        bands = (m1.shape[-1] if m1.ndim == 3 else 1, m2.shape[-1] if m2.ndim == 3 else 1)
        if shape != spec.shape or bands != spec.bands:
            raise ValueError(f"{spec.name}: got {shape[0]}x{shape[1]} pixels with {bands[0]}+{bands[1]} bands, "
                             f"expected {spec.shape[0]}x{spec.shape[1]} with {spec.bands[0]}+{spec.bands[1]} "
                             "(check_sizes=False to accept)")
        for role, expected in (("train", spec.train_count), ("test", spec.test_count)):
            got = int((labels[role] > 0).sum())
            if expected is not None and got != expected:
                warnings.warn(f"{spec.name}: {got} {role} pixels, the usual split has {expected}", stacklevel=2)
    return Scene(m1, m2, labels["train"], labels["test"], spec.class_names, layout="hwc", name=spec.name,
                 meta={"files": {r: str(p) for r, p in paths.items()}, "benchmark": spec.name})


def list_benchmarks() -> List[str]:
    return sorted(BENCHMARKS)
