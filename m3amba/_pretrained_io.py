"""Saving, reloading and publishing pretrained models: ``save_pretrained``, ``load_pretrained_dir``, ``push_to_hub``.

A saved folder holds

* ``model.safetensors``: the state dict (the frozen CLIP tower is never stored);
* ``config.json``: ``architecture`` and ``model_args`` (``create_model(architecture, **model_args)``
  rebuilds the model, including ``in_chans``, ``num_classes``, ``clip_model``/``clip_pretrained``),
  and ``pretrained_cfg`` (the tag's metadata plus the ``sha256``/``file_size`` of the weights);
* ``README.md``: a model card with Hugging Face Hub YAML front matter.

Such a folder loads with :func:`load_pretrained_dir`, or with
``create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=folder/"model.safetensors"), **model_args)``;
folders written by :func:`m3amba.convert.save_converted` load the same way.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from torch import nn

from ._checkpoint import _fsync_dir, save_state_dict_file
from ._hub import hf_endpoint, sha256_file
from ._model_card import model_card
from ._pretrained import PretrainedCfg

__all__ = ["save_pretrained", "load_pretrained_dir", "push_to_hub", "read_config", "manifest_entry",
           "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME"]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CONFIG_FORMAT = "m3amba-pretrained"
#: constructor arguments that choose how to run, not what the model is: never saved
_RUNTIME_ARGS = ("scan_backend",)
#: cfg fields that describe one machine's file, not the model: never saved
_LOCAL_FIELDS = ("file", "model_kwargs", "architecture")

PathLike = Union[str, os.PathLike]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) cannot be stored in config.json")


def _model_args(model: nn.Module, model_args: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    recorded = model_args if model_args is not None else getattr(model, "model_args", None)
    if recorded is None:
        raise ValueError(
            f"{type(model).__name__} has no recorded constructor arguments (it was not built by m3amba.create_model); "
            "pass model_args=dict(...) so that config.json can rebuild it"
        )
    defaults = {
        k: p.default for k, p in inspect.signature(type(model).__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    args = {**defaults, **dict(recorded)}
    # what the model is now (reset_classifier may have changed the classes)
    for attr in ("in_chans", "num_classes", "img_size"):
        if hasattr(model, attr):
            args[attr] = getattr(model, attr)
    for key in _RUNTIME_ARGS:
        args.pop(key, None)
    if "clip_model" in args and args["clip_model"] is None:
        args["clip_pretrained"] = None  # no tower, nothing pretrained
    return _jsonable(args)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(
    model: nn.Module,
    save_directory: PathLike,
    *,
    architecture: Optional[str] = None,
    model_args: Optional[Mapping[str, Any]] = None,
    pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and a model card ``README.md`` into ``save_directory``.

    Args:
        model: a model built by :func:`m3amba.create_model` (its constructor arguments are recorded).
        save_directory: the folder (created if needed); files are written atomically.
        architecture: the registered variant (default: ``model.pretrained_cfg["architecture"]``).
        model_args: constructor arguments, for models not built by ``create_model``.
        pretrained_cfg_overlay: :class:`~m3amba.PretrainedCfg` fields to record, e.g. ``tag``,
            ``dataset``, ``license``, ``metrics`` (``{"OA": ..., "AA": ..., "kappa": ...}``),
            ``metrics_protocol``, ``class_names``, ``band_names``, ``mean``, ``std``, ``hf_hub_id``.

    Returns:
        the folder. Load it back with :func:`load_pretrained_dir`.
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = dict(getattr(model, "pretrained_cfg", None) or {})
    architecture = architecture or cfg_dict.get("architecture")
    if not architecture:
        raise ValueError("pass architecture=... (the model has no pretrained_cfg naming its variant)")
    args = _model_args(model, model_args)
    known = set(PretrainedCfg.field_names())
    cfg_dict = {k: v for k, v in cfg_dict.items() if k in known}
    cfg_dict.update(dict(pretrained_cfg_overlay or {}))
    cfg = PretrainedCfg.from_dict(_jsonable(cfg_dict)).overlay(
        architecture=architecture, num_classes=args.get("num_classes"),
        in_chans=tuple(args["in_chans"]) if args.get("in_chans") is not None else None,
        img_size=args.get("img_size", 32), clip_model=_clip_name(args.get("clip_model")),
        clip_pretrained=args.get("clip_pretrained") if args.get("clip_model") is not None else None,
    )
    weights = out / WEIGHTS_NAME
    save_state_dict_file(model.state_dict(), weights, metadata={"format": "pt", "architecture": architecture})
    cfg = cfg.overlay(sha256=sha256_file(weights), file_size=weights.stat().st_size)
    meta = {k: v for k, v in _jsonable(cfg.to_dict()).items() if k not in _LOCAL_FIELDS}
    from .version import __version__

    config = {"format": CONFIG_FORMAT, "format_version": 1, "m3amba_version": __version__,
              "architecture": architecture, "model_args": args, "weights_file": WEIGHTS_NAME, "pretrained_cfg": meta}
    _write_text_atomic(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    random_clip = args.get("clip_model") is not None and args.get("clip_pretrained") is None
    _write_text_atomic(out / CARD_NAME, model_card(architecture, meta, args, random_clip=random_clip))
    _logger.info("saved %s to %s (sha256 %s)", architecture, out, cfg.sha256)
    return out


def _clip_name(clip_model: Any) -> Optional[str]:
    if clip_model is None or isinstance(clip_model, str):
        return clip_model
    return "custom"


def read_config(directory: PathLike) -> Dict[str, Any]:
    """``config.json`` of a folder written by :func:`save_pretrained` or :func:`m3amba.convert.save_converted`."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: load_pretrained_dir takes a folder written by m3amba.save_pretrained or "
            "m3amba.convert.save_converted (model.safetensors + config.json)"
        )
    config = json.loads(path.read_text())
    for key in ("architecture", "model_args"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r}: not an m3amba model folder")
    return config


def load_pretrained_dir(directory: PathLike, **kwargs: Any) -> nn.Module:
    """Rebuild and load the model saved in ``directory`` (by :func:`save_pretrained` or ``save_converted``).

    Args:
        directory: the folder holding ``config.json`` and ``model.safetensors``.
        **kwargs: :func:`m3amba.create_model` arguments overriding the saved ``model_args``; a
            different ``num_classes`` / ``in_chans`` fine-tunes (only the classifiers / band-dependent
            input layers are re-initialised), other arguments such as ``scan_backend`` or
            ``clip_pretrained="/local/open_clip_weights.bin"`` just change how the model is built.

    The weights file is checked against the sha256 recorded in ``config.json`` (when there is one)
    before it is read.
    """
    from ._builder import create_model
    from ._registry import is_model

    directory = Path(directory)
    config = read_config(directory)
    architecture = config["architecture"]
    if not is_model(architecture):
        raise ValueError(f"{directory / CONFIG_NAME}: architecture {architecture!r} is not a registered model")
    args = {**config["model_args"], **kwargs}
    clip_dim = config.get("clip_embed_dim")  # written by the reference-checkpoint converter
    if clip_dim is not None and "clip_model" not in args:
        raise ValueError(
            f"{directory / CONFIG_NAME}: the CLIP adapters take {clip_dim}-dim embeddings and no CLIP tower is "
            "recorded; pass clip_model=<open_clip model name or config dict with that embedding width>"
        )
    meta = dict(config.get("pretrained_cfg") or {})
    unknown = sorted(set(meta) - set(PretrainedCfg.field_names()))
    if unknown:
        warnings.warn(f"{directory / CONFIG_NAME}: ignoring unknown pretrained_cfg field(s) {unknown} "
                      "(written by a newer m3amba?)", stacklevel=2)
        meta = {k: v for k, v in meta.items() if k not in unknown}
    for key in _LOCAL_FIELDS:
        meta.pop(key, None)
    weights = directory / config.get("weights_file", WEIGHTS_NAME)
    cfg = PretrainedCfg.from_dict(meta).overlay(architecture=architecture, file=str(weights))
    overlay = cfg.to_dict()
    return create_model(architecture, pretrained=True, pretrained_cfg_overlay=overlay, **args)


def manifest_entry(directory: PathLike, model_name_tag: str, hf_hub_id: Optional[str] = None,
                   bundled: bool = False) -> Dict[str, Any]:
    """The ``weights/manifest.json`` entry that registers the model saved in ``directory`` as ``model_name_tag``.

    Args:
        directory: a folder written by :func:`save_pretrained`.
        model_name_tag: ``"name.tag"``, e.g. ``"m3amba_tiny.eolearn_lulc"``.
        hf_hub_id: the Hub repo the folder was pushed to (:func:`push_to_hub`).
        bundled: the weights file ships in ``weights/<name.tag>/`` (then ``file`` is set, relative to
            the manifest).
    """
    config = read_config(directory)
    name, _, tag = model_name_tag.partition(".")
    if not tag or name != config["architecture"]:
        raise ValueError(f"model_name_tag must be '{config['architecture']}.<tag>', got {model_name_tag!r}")
    cfg = {k: v for k, v in (config.get("pretrained_cfg") or {}).items() if k not in ("tag",)}
    cfg["model_kwargs"] = config["model_args"]
    if hf_hub_id:
        cfg["hf_hub_id"] = hf_hub_id
    if bundled:
        cfg["file"] = f"{model_name_tag}/{config.get('weights_file', WEIGHTS_NAME)}"
    if not cfg.get("sha256"):
        raise ValueError(f"{directory / CONFIG_NAME} records no sha256: re-save it with m3amba.save_pretrained")
    return {"name": model_name_tag, "cfg": cfg}


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: str = "Upload m3amba model",
    create_pr: bool = False,
    api: Any = None,
    **save_kwargs: Any,
) -> Any:
    """Save ``model`` with :func:`save_pretrained` into a temporary folder and upload it to the Hub repo ``repo_id``.

    Calls ``api.create_repo(repo_id, repo_type="model", private=..., exist_ok=True)`` and
    ``api.upload_folder(repo_id=..., folder_path=..., ...)`` of ``huggingface_hub.HfApi``
    (``HfApi(endpoint=HF_ENDPOINT, token=token)`` unless ``api`` is given). The package's tests only
    call it with a fake ``api`` object (they have no network); the real upload path is the plain
    ``huggingface_hub`` one. ``hf_hub_id=repo_id`` is recorded in the card and ``config.json``.

    Args:
        model: the model (see :func:`save_pretrained`).
        repo_id: ``"owner/name"`` on the Hub.
        private, token, revision, commit_message, create_pr: passed to ``huggingface_hub``.
        api: an ``HfApi``-like object (for tests or custom endpoints).
        **save_kwargs: :func:`save_pretrained` keyword arguments (``pretrained_cfg_overlay``, ...).

    Returns:
        what ``upload_folder`` returns (a ``CommitInfo`` for ``HfApi``).
    """
    args = getattr(model, "model_args", None) or save_kwargs.get("model_args") or {}
    if args.get("clip_model", "ViT-B-32-quickgelu") is not None and args.get("clip_pretrained", "openai") is None:
        warnings.warn("publishing a model built with a randomly initialised CLIP tower (clip_pretrained=None)",
                      stacklevel=2)
    if api is None:
        from huggingface_hub import HfApi

        from .version import __version__
        api = HfApi(endpoint=hf_endpoint(), token=token, library_name="m3amba", library_version=__version__)
    overlay = dict(save_kwargs.pop("pretrained_cfg_overlay", None) or {})
    overlay.setdefault("hf_hub_id", repo_id)
    with tempfile.TemporaryDirectory(prefix="m3amba-push-") as tmp:
        save_pretrained(model, tmp, pretrained_cfg_overlay=overlay, **save_kwargs)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
        result = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
            commit_message=commit_message, create_pr=create_pr, token=token,
        )
    _logger.info("pushed to %s/%s", hf_endpoint(), repo_id)
    return result
