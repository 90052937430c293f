"""Variants as data: every ``configs/*.json`` becomes a registered model entrypoint.

A config holds ``description`` and ``model_args`` (keyword arguments of :class:`M3amba`).
Keyword arguments given to ``create_model`` override the config's.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Dict

from .._builder import build_model_with_cfg
from .._pretrained import PretrainedCfg
from .._registry import register_model, register_pretrained_cfg
from .m3amba import M3amba

__all__ = ["get_model_config", "list_model_configs"]


@lru_cache(maxsize=None)
def _configs() -> Dict[str, Dict[str, Any]]:
    folder = resources.files(__package__).joinpath("configs")
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            out[entry.name[: -len(".json")]] = json.loads(entry.read_text())
    return out


def list_model_configs() -> list:
    """Names of the variant configs shipped with the package."""
    return sorted(_configs())


def get_model_config(name: str) -> Dict[str, Any]:
    """A copy of variant ``name``'s config (``description``, ``model_args``)."""
    cfg = _configs()[name]
    return {"description": cfg["description"], "model_args": dict(cfg["model_args"])}


def _make_entrypoint(name: str, cfg: Dict[str, Any]) -> Callable:
    def entrypoint(pretrained: bool = False, pretrained_cfg: PretrainedCfg = None, **kwargs: Any) -> M3amba:
        args = {**cfg["model_args"], **(pretrained_cfg.model_kwargs if pretrained_cfg else {}), **kwargs}
        return build_model_with_cfg(M3amba, name, pretrained_cfg or PretrainedCfg(architecture=name), **args)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"{cfg['description']}.\n\nConfig: {cfg['model_args']}"
    return entrypoint


def _register_all() -> None:
    for name, cfg in _configs().items():
        register_model(_make_entrypoint(name, cfg))
        args = cfg["model_args"]
        register_pretrained_cfg(name + ".", PretrainedCfg(
            clip_model=args.get("clip_model"), clip_pretrained=args.get("clip_pretrained"),
            img_size=args.get("img_size", 32), license="apache-2.0",
            notes="architecture metadata only: no published weights",
        ))


_register_all()
