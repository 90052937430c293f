"""Reading scene arrays from files with clear errors: missing, empty, truncated or corrupt files, wrong keys.

:func:`read_array` reads one array from ``.npy``, ``.npz``, ``.mat`` (MATLAB v5 through scipy, v7.3 /
HDF5 through h5py), ``.h5``/``.hdf5`` or, with rasterio installed, GeoTIFF (``.tif``/``.tiff``, then
also its georeferencing via :func:`read_raster`). Nothing is unpickled: ``.npy``/``.npz`` files holding
Python objects are refused.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .eolearn import DataNotFoundError
from .validate import SceneError

__all__ = ["read_array", "read_raster", "SceneFileError"]

PathLike = Union[str, os.PathLike]
Keys = Union[None, str, Sequence[str]]


class SceneFileError(SceneError):
    """A scene file cannot be read: empty, truncated, corrupt, or holding objects that would need unpickling."""


def _damaged(path: Path, exc: BaseException) -> SceneFileError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return SceneFileError(f"{path} could not be read ({type(exc).__name__}{': ' + first if first else ''}); it is "
                          f"truncated or corrupt ({path.stat().st_size} bytes; an interrupted download or copy?): "
                          "fetch or export it again")


def _pick(path: Path, found: Dict[str, Any], keys: Keys):
    names = [k for k in found if not k.startswith("__")]
    if keys is None:
        if len(names) != 1:
            raise KeyError(f"{path} holds {len(names)} variables ({', '.join(names) or 'none'}); say which one (keys=...)")
        return found[names[0]]
    for k in [keys] if isinstance(keys, str) else keys:
        if k in found:
            return found[k]
    wanted = [keys] if isinstance(keys, str) else list(keys)
    raise KeyError(f"{path} has none of the variables {wanted} (found: {names})")


def _read_hdf5(path: Path, keys: Keys, matlab: bool) -> np.ndarray:
    try:
        import h5py
    except ImportError as exc:
        kind = "a MATLAB v7.3 (HDF5) file" if matlab else "an HDF5 file"
        raise ImportError(f"{path} is {kind}; reading it needs h5py: pip install h5py") from exc
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _damaged(path, exc) from exc
    with f:
        datasets = {k: f[k] for k in f.keys()}
        try:
            a = np.asarray(_pick(path, datasets, keys))
        except (OSError, RuntimeError) as exc:  # reading a dataset whose bytes are missing
            raise _damaged(path, exc) from exc
    return a.transpose(tuple(range(a.ndim))[::-1]) if matlab else a  # MATLAB is column-major


def read_array(path: PathLike, keys: Keys = None) -> np.ndarray:
    """One array from a file, with errors that say what is wrong and what to do.

    Args:
        path: a ``.npy``, ``.npz``, ``.mat``, ``.h5``/``.hdf5`` or ``.tif``/``.tiff`` file.
        keys: the variable name, or candidate names (first found wins), inside ``.npz``/``.mat``/HDF5
            files; None takes the only variable there is.

    Raises:
        DataNotFoundError: the file does not exist (a ``FileNotFoundError``).
        SceneFileError: the file is empty, truncated or corrupt, or holds pickled Python objects.
        KeyError: none of ``keys`` is in the file (the message lists the variables found).
        ImportError: an optional reader (h5py, rasterio) is needed and missing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return read_raster(path)[0]
    if not path.is_file():
        raise DataNotFoundError(f"scene file not found: {path}")
    if path.stat().st_size == 0:
        raise SceneFileError(f"{path} is empty (0 bytes; an interrupted download or copy?): fetch or export it again")
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise SceneFileError(f"{path} holds Python objects, which would need unpickling (refused: it can "
                                     "run code); save a plain numeric array") from exc
            raise _damaged(path, exc) from exc
        except (OSError, EOFError) as exc:
            raise _damaged(path, exc) from exc
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                key = _pick(path, {n: n for n in names}, keys)
                return z[key]
        except KeyError:
            raise
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise SceneFileError(f"{path} holds Python objects, which would need unpickling (refused)") from exc
            raise _damaged(path, exc) from exc
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise _damaged(path, exc) from exc
    if suffix == ".mat":
        with open(path, "rb") as f:
            head = f.read(128)
        if b"MATLAB 7.3" in head:
            return _read_hdf5(path, keys, matlab=True)
        try:
            from scipy.io import loadmat
        except ImportError as exc:  # pragma: no cover
            raise ImportError("reading .mat files needs scipy: pip install 'm3amba[data]'") from exc
        try:
            data = loadmat(str(path))
        except NotImplementedError:  # v7.3 without the usual header text
            return _read_hdf5(path, keys, matlab=True)
        except Exception as exc:  # scipy reports truncation as MatReadError, IndexError, OSError, ValueError...
            raise _damaged(path, exc) from exc
        return np.asarray(_pick(path, data, keys))
    if suffix in (".h5", ".hdf5", ".he5"):
        return _read_hdf5(path, keys, matlab=False)
    raise SceneFileError(f"{path}: unknown file type {suffix!r}; use .npy, .npz, .mat, .h5 or .tif")


def read_raster(path: PathLike) -> Tuple[np.ndarray, Optional[Dict[str, Any]]]:
    """A GeoTIFF's (bands, H, W) array and its georeferencing ``{"crs", "transform"}`` (needs rasterio).

    The georeferencing can be passed to :class:`~m3amba.data.Scene` (``georef=(geo1, geo2)``), which
    refuses modalities on different grids.
    """
    try:
        import rasterio
    except ImportError as exc:
        raise ImportError(f"reading {path} (GeoTIFF) needs rasterio: pip install rasterio (or '.[geotiff]'); "
                          "or export the raster as .npy") from exc
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"scene file not found: {path}")
    try:
        with rasterio.open(path) as src:
            array = src.read()
            georef = {"crs": None if src.crs is None else str(src.crs), "transform": tuple(src.transform)[:6]}
    except rasterio.errors.RasterioError as exc:
        raise _damaged(path, exc) from exc
    return array, georef
