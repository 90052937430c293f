"""Reading and writing weight files safely: safetensors, or torch files through ``weights_only=True``."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Union

import torch
from torch import nn

from ._faults import pause_point
from ._hub import WeightsIntegrityError

__all__ = [
    "read_torch_file", "load_state_dict_file", "load_checkpoint", "check_fit", "save_state_dict_file",
    "CheckpointMismatchError", "WeightsFileCorruptError",
]

PathLike = Union[str, os.PathLike]


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not fit the model (missing, unexpected or mis-shaped keys)."""


class WeightsFileCorruptError(WeightsIntegrityError, ValueError):
    """A weights file cannot be parsed: truncated or corrupt (an integrity error, and a ``ValueError``)."""


def read_torch_file(path: PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, with a clear error for files that need unpickling.

    Nothing is ever unpickled beyond tensors and plain containers: a file whose pickle would build
    other objects (and could run code while doing so) is refused with a :class:`ValueError`, as is a
    truncated or corrupt file (:class:`WeightsFileCorruptError`, a ``ValueError`` too).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else exc!r}). Files that need arbitrary unpickling are refused, "
            "as unpickling can run code; re-save the tensors with safetensors (or load the file yourself only if "
            "you trust it)."
        ) from exc
    except Exception as exc:  # EOFError / zip-reader RuntimeError: an incomplete file
        raise WeightsFileCorruptError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'empty file'}); it is truncated or corrupt (an "
            "interrupted download or copy?): fetch or copy it again. Files that need arbitrary unpickling "
            "are refused as well."
        ) from exc


def load_state_dict_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or (never unpickling code) a torch ``.pth``/``.pt``/``.bin`` file.

    Torch files that wrap the weights in ``{"state_dict": ...}``, ``{"model": ...}`` or
    ``{"model_dict": ...}`` are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors reports damaged files with its own exception type
            raise WeightsFileCorruptError(
                f"{path} could not be read as safetensors ({type(exc).__name__}: {exc}); it is truncated or "
                "corrupt (an interrupted download, copy or write?): fetch or copy it again"
            ) from exc
    obj = read_torch_file(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a flat mapping of tensor names to tensors")
    return dict(obj)


def save_state_dict_file(state_dict: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] = None) -> None:
    """Write ``state_dict`` as safetensors atomically (temporary file, fsync, rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata or {}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        pause_point("weights-temp")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover  (platforms without directory file descriptors)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def check_fit(model: nn.Module, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
              path: PathLike, hint: str, allowed_missing: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` naming every mis-shaped, missing and unexpected tensor.

    ``own`` is the model's state dict; keys in ``allowed_missing`` may be absent from ``state``.
    """
    skip = set(allowed_missing)
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and k not in skip]
    unexpected = [k for k in state if k not in own]
    if not (shape_errors or missing or unexpected):
        return
    lines = [f"checkpoint {path} does not fit {type(model).__name__}:"]
    if shape_errors:
        lines.append("  mismatched shapes: " + "; ".join(shape_errors[:10]))
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:10]))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:10]))
    lines.append("  " + hint)
    raise CheckpointMismatchError("\n".join(lines))


def load_checkpoint(model: nn.Module, path: PathLike) -> None:
    """Load a weights file into ``model`` strictly; any mismatch raises :class:`CheckpointMismatchError`.

    Shapes are checked before anything is copied, so a failed load leaves the model untouched.
    """
    state = load_state_dict_file(path)
    check_fit(model, model.state_dict(), state, path,
              hint="(a different variant, band count or class count? build the model to match the checkpoint)")
    model.load_state_dict(state, strict=True)
