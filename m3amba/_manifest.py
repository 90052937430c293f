"""Pretrained tags registered from ``manifest.json`` files: the bundled ``weights/`` folder and ``M3AMBA_WEIGHTS_DIR``.

A manifest is::

    {
      "format": "m3amba-weights-manifest",
      "version": 1,
      "tags": [
        {"name": "m3amba_tiny.eolearn_lulc",
         "cfg": {"hf_hub_id": "owner/m3amba_tiny.eolearn_lulc", "sha256": "…", "file_size": 123,
                 "file": "m3amba_tiny.eolearn_lulc/model.safetensors",
                 "num_classes": 10, "in_chans": [13, 2], "model_kwargs": {…}, "dataset": "…",
                 "metrics": {"OA": …, "AA": …, "kappa": …}, "metrics_protocol": "…", …}}
      ]
    }

``cfg`` takes :class:`~m3amba.PretrainedCfg` fields; ``sha256`` is required. A relative ``file``
is relative to the manifest's folder. A tag is registered only if its weights exist: its
``file`` is present, or it has an ``hf_hub_id`` (then a missing bundled file is looked up on the
Hub instead). :func:`m3amba.manifest_entry` writes entries from a :func:`m3amba.save_pretrained`
folder. The bundled manifest is registered when ``m3amba`` is imported (an error in it is an
error); a ``manifest.json`` in an ``M3AMBA_WEIGHTS_DIR`` folder is registered too (an error there
only warns).
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Union

from . import models as _models  # noqa: F401  (variants must be registered before their tags)
from ._hub import WEIGHTS_DIR_ENV, bundled_weights_dir
from ._pretrained import PretrainedCfg
from ._registry import is_model, register_pretrained_cfg

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "read_manifest", "register_manifest", "empty_manifest"]

_logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "m3amba-weights-manifest"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

PathLike = Union[str, os.PathLike]


def empty_manifest() -> Dict[str, Any]:
    """A manifest without tags (what ``weights/manifest.json`` holds until weights are published)."""
    return {"format": MANIFEST_FORMAT, "version": 1, "tags": []}


def read_manifest(path: PathLike) -> List[tuple]:
    """Parse and validate a manifest; returns ``[(name.tag, PretrainedCfg), ...]`` with ``file`` made absolute.

    Raises:
        ValueError: the file is not a manifest, a name is not ``registered_model.tag``, a cfg has an
            unknown field or no valid sha256.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("tags"), list):
        raise ValueError(
            f"{path} is not an m3amba weights manifest (expected format {MANIFEST_FORMAT!r} and a 'tags' list)"
        )
    out, seen = [], set()
    for i, entry in enumerate(data["tags"]):
        where = f"{path}: tags[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "cfg"} or "name" not in entry:
            raise ValueError(f"{where} must be an object with 'name' and 'cfg'")
        name = entry["name"]
        model, _, tag = str(name).partition(".")
        if not tag or not is_model(model):
            raise ValueError(f"{where}: name {name!r} must be '<registered model>.<tag>'")
        if name in seen:
            raise ValueError(f"{where}: {name!r} is listed twice")
        seen.add(name)
        raw = dict(entry.get("cfg") or {})
        for key in ("architecture", "tag"):
            if raw.pop(key, None) not in (None, model if key == "architecture" else tag):
                raise ValueError(f"{where}: cfg.{key} contradicts the name {name!r}")
        try:
            cfg = PretrainedCfg.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        if not cfg.sha256 or not _SHA256.match(cfg.sha256):
            raise ValueError(f"{where}: cfg.sha256 must be the 64-hex-digit sha256 of the weights file")
        if cfg.file:
            file = Path(cfg.file)
            cfg = cfg.overlay(file=str(file if file.is_absolute() else (path.parent / file).resolve()))
        out.append((name, cfg))
    return out


def register_manifest(path: PathLike) -> List[str]:
    """Register the tags of a manifest whose weights exist; returns the registered ``name.tag`` list."""
    registered = []
    for name, cfg in read_manifest(path):
        if cfg.file and not Path(cfg.file).is_file():
            if not cfg.hf_hub_id:
                _logger.warning("%s: %s lists %s, which does not exist; tag not registered", path, name, cfg.file)
                continue
            cfg = cfg.overlay(file=None)  # look it up on the Hub instead
        if not cfg.has_weights:
            _logger.warning("%s: %s has neither a file nor an hf_hub_id; tag not registered", path, name)
            continue
        register_pretrained_cfg(name, cfg)
        registered.append(name)
    return registered


def _register_at_import() -> None:
    bundled = bundled_weights_dir()
    if bundled is not None and (bundled / MANIFEST_NAME).is_file():
        register_manifest(bundled / MANIFEST_NAME)
    for folder in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep):
        manifest = Path(folder).expanduser() / MANIFEST_NAME if folder else None
        if manifest is not None and manifest.is_file():
            try:
                register_manifest(manifest)
            except (OSError, ValueError) as exc:
                warnings.warn(f"{WEIGHTS_DIR_ENV} manifest not registered: {exc}", stacklevel=2)


_register_at_import()
