"""Finding a pretrained tag's weights file: local files, weights directories, the Hugging Face cache, the Hub.

:func:`resolve_weights` walks the resolution order documented in ``docs/pretrained.md``:

1. ``cfg.file`` (``pretrained_cfg_overlay=dict(file=...)``, or a file bundled with the package
   and registered from ``weights/manifest.json``);
2. local weights directories: every folder of ``M3AMBA_WEIGHTS_DIR`` (``os.pathsep``-separated),
   then the package's bundled ``weights/`` folder; in each, ``<name>.<tag>/<hf_hub_filename>``
   (a :func:`m3amba.save_pretrained` folder) or ``<hf_hub_id>/<hf_hub_filename>`` (a Hub mirror);
3. the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), without network;
4. ``huggingface_hub.hf_hub_download`` from ``HF_ENDPOINT``, unless ``HF_HUB_OFFLINE`` is set.

Environment variables are read when a file is resolved, not when the package is imported.
Whatever the source, the file's size and sha256 are checked against the cfg (when it records
them) before any tensor is read.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ._pretrained import PretrainedCfg

__all__ = [
    "PretrainedWeightsNotFound", "WeightsIntegrityError", "ResolvedWeights", "resolve_weights", "resolve_pretrained",
    "sha256_file", "verify_file", "local_weights_dirs", "bundled_weights_dir", "hf_cache_dir",
    "hf_endpoint", "hf_offline",
]

_logger = logging.getLogger(__name__)

#: environment variable naming local weights folders, searched before the Hugging Face cache
WEIGHTS_DIR_ENV = "M3AMBA_WEIGHTS_DIR"
_DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


class PretrainedWeightsNotFound(RuntimeError):
    """``pretrained=True`` was asked of a model/tag whose weights are not published or cannot be found."""


class WeightsIntegrityError(RuntimeError):
    """A weights file is truncated or its sha256 differs from the one its pretrained cfg records."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a tag's weights file was found.

    Attributes:
        path: the local file.
        source: ``"file"`` (``cfg.file``), ``"weights_dir"`` (``M3AMBA_WEIGHTS_DIR``), ``"bundled"``
            (the package's ``weights/`` folder), ``"hf_cache"`` (already in the Hugging Face cache)
            or ``"hf_download"`` (downloaded now).
        verified: whether its sha256 was checked against the cfg.
    """

    path: Path
    source: str
    verified: bool

    def describe(self) -> str:
        """One line for logs and error messages."""
        where = {
            "file": "local file", "weights_dir": f"found in {WEIGHTS_DIR_ENV}",
            "bundled": "found in the weights bundled with m3amba", "hf_cache": "found in the Hugging Face cache",
            "hf_download": "downloaded from the Hugging Face Hub into the cache",
        }[self.source]
        return f"{where}: {self.path} ({'sha256 verified' if self.verified else 'no sha256 recorded'})"


# -- environment, read at call time ---------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hf_endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` now, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def bundled_weights_dir() -> Optional[Path]:
    """The ``weights/`` folder shipped with the package, or None.

    Installed packages carry it as package data ``m3amba/weights/`` (``setup.py`` maps the
    repository's top-level ``weights/`` there); a source checkout uses the top-level
    ``weights/`` folder next to the ``m3amba`` package directly.
    """
    package = Path(__file__).resolve().parent
    installed = package / "weights"
    if installed.is_dir():
        return installed
    checkout = package.parent
    if (checkout / "weights").is_dir() and (checkout / "setup.py").is_file():
        return checkout / "weights"
    return None


def local_weights_dirs() -> List[Tuple[str, Path]]:
    """``(source, folder)`` pairs searched in order: each ``M3AMBA_WEIGHTS_DIR`` entry, then the bundled folder."""
    out = [("weights_dir", Path(p).expanduser()) for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if p]
    bundled = bundled_weights_dir()
    if bundled is not None:
        out.append(("bundled", bundled))
    return out


# -- integrity ----------------------------------------------------------------------------------
def sha256_file(path: os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: os.PathLike, sha256: Optional[str], file_size: Optional[int] = None, what: str = "") -> bool:
    """Check ``path`` against the recorded size and sha256; return whether a sha256 was checked.

    Raises:
        WeightsIntegrityError: the file is shorter/longer than recorded or its sha256 differs.
    """
    path = Path(path)
    label = f"weights file of {what}" if what else "weights file"
    size = path.stat().st_size
    if file_size is not None and size != file_size:
        kind = "truncated" if size < file_size else "larger than recorded"
        raise WeightsIntegrityError(
            f"{label} {path} is {kind}: {size} bytes, expected {file_size}. "
            f"{_fix_hint(path)}"
        )
    if not sha256:
        return False
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise WeightsIntegrityError(
            f"sha256 mismatch for {label} {path}: expected {sha256.lower()}, got {actual} ({size} bytes). "
            f"The file is corrupt, truncated or not the published one. {_fix_hint(path)}"
        )
    return True


def _fix_hint(path: Path) -> str:
    if hf_cache_dir() in path.parents or "blobs" in path.parts or "snapshots" in path.parts:
        return ("It came from the Hugging Face cache: delete it there (or the repo's cache folder) and load again "
                "to download it anew.")
    return "Replace it with the published file (or fix the cfg's sha256 if you published new weights)."


# -- resolution ---------------------------------------------------------------------------------
def _name_tag(cfg: PretrainedCfg) -> str:
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def _local_candidates(cfg: PretrainedCfg, folder: Path) -> List[Path]:
    out = []
    if cfg.architecture and cfg.tag:
        out.append(folder / _name_tag(cfg) / cfg.hf_hub_filename)
    if cfg.hf_hub_id:
        out.append(folder.joinpath(*cfg.hf_hub_id.split("/"), cfg.hf_hub_filename))
    return out


def _found(path: Path, source: str, cfg: PretrainedCfg) -> ResolvedWeights:
    verified = verify_file(path, cfg.sha256, cfg.file_size, _name_tag(cfg))
    resolved = ResolvedWeights(path=path, source=source, verified=verified)
    _logger.info("%s: weights %s", _name_tag(cfg), resolved.describe())
    return resolved


def resolve_weights(cfg: PretrainedCfg, *, search_local: bool = True) -> ResolvedWeights:
    """Find ``cfg``'s weights file (downloading it if needed) and verify it; see the module docstring.

    Args:
        cfg: the tag's pretrained cfg (with ``architecture`` and ``tag`` set for local look-ups).
        search_local: also search ``M3AMBA_WEIGHTS_DIR`` and the bundled ``weights/`` folder.

    Raises:
        PretrainedWeightsNotFound: no source has the file (the message lists every place searched
            and why the Hub could not be used).
        WeightsIntegrityError: a file was found but its size or sha256 is wrong.
    """
    name = _name_tag(cfg)
    searched: List[str] = []
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise PretrainedWeightsNotFound(f"weights file of {name} not found: {path}")
        return _found(path, "file", cfg)
    if search_local:
        for source, folder in local_weights_dirs():
            for path in _local_candidates(cfg, folder):
                if path.is_file():
                    return _found(path, source, cfg)
                searched.append(str(path))
    if not cfg.hf_hub_id:
        raise PretrainedWeightsNotFound(
            f"no weights file for {name}: it has no hf_hub_id and none of these exist: {', '.join(searched) or '-'}"
        )
    cached = _from_hf_cache(cfg)
    if cached is not None:
        return _found(cached, "hf_cache", cfg)
    searched.append(f"Hugging Face cache {hf_cache_dir()}")
    path = _download(cfg, name, searched)
    return _found(path, "hf_download", cfg)


def resolve_pretrained(model_name: str, pretrained_cfg_overlay: Optional[dict] = None) -> ResolvedWeights:
    """Find (downloading if needed) and verify the weights of ``name.tag`` without building the model.

    ``m3amba.resolve_pretrained("m3amba_tiny.eolearn_lulc").describe()`` says where the file came from.
    """
    from ._registry import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if pretrained_cfg_overlay:
        cfg = cfg.overlay(**pretrained_cfg_overlay)
    if not cfg.has_weights:
        raise PretrainedWeightsNotFound(f"no published weights for {model_name!r}")
    return resolve_weights(cfg)


def _from_hf_cache(cfg: PretrainedCfg) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id=cfg.hf_hub_id, filename=cfg.hf_hub_filename, cache_dir=str(hf_cache_dir()),
        revision=cfg.hf_hub_revision,
    )
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _download(cfg: PretrainedCfg, name: str, searched: Sequence[str]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .version import __version__

    endpoint, offline = hf_endpoint(), hf_offline()
    where = f"{cfg.hf_hub_id}/{cfg.hf_hub_filename}" + (f"@{cfg.hf_hub_revision}" if cfg.hf_hub_revision else "")
    looked = "Searched: " + "; ".join(searched) + "."
    hint = (f"Put the file at {WEIGHTS_DIR_ENV}/{name}/{cfg.hf_hub_filename}, or pass "
            "pretrained_cfg_overlay=dict(file=...).")
    if offline:
        raise PretrainedWeightsNotFound(
            f"weights of {name} ({where}) are not available offline: HF_HUB_OFFLINE is set and the file is not "
            f"in any local folder. {looked} {hint}"
        )
    _logger.info("%s: downloading %s from %s", name, where, endpoint)
    try:
        path = hf_hub_download(
            repo_id=cfg.hf_hub_id, filename=cfg.hf_hub_filename, revision=cfg.hf_hub_revision,
            cache_dir=str(hf_cache_dir()), endpoint=endpoint, library_name="m3amba", library_version=__version__,
        )
    except RepositoryNotFoundError as exc:
        raise PretrainedWeightsNotFound(
            f"Hugging Face repo {cfg.hf_hub_id!r} of {name} not found at {endpoint} (wrong hf_hub_id or HF_ENDPOINT, "
            f"or a private repo without a token). {hint}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise PretrainedWeightsNotFound(
            f"revision {cfg.hf_hub_revision!r} of Hugging Face repo {cfg.hf_hub_id!r} ({name}) not found at {endpoint}."
        ) from exc
    except LocalEntryNotFoundError as exc:
        from huggingface_hub import constants

        reason = (
            "huggingface_hub was imported while HF_HUB_OFFLINE was set and stays offline in this process "
            "(unset it before importing m3amba)"
            if constants.is_offline_mode() else f"the Hub could not be reached ({exc})"
        )
        raise PretrainedWeightsNotFound(
            f"could not download the weights of {name} ({where}) from {endpoint}: {reason}; they are not cached "
            f"either. {looked} {hint}"
        ) from exc
    except EntryNotFoundError as exc:  # (the remote one: local misses are handled above)
        raise PretrainedWeightsNotFound(
            f"file {cfg.hf_hub_filename!r} not found in Hugging Face repo {cfg.hf_hub_id!r} ({name}) at {endpoint}."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise PretrainedWeightsNotFound(
            f"downloading the weights of {name} ({where}) from {endpoint} failed: {exc}. {looked} {hint}"
        ) from exc
    return Path(path)
