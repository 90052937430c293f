"""Model registry in the style of timm: entrypoints by name, pretrained cfgs by ``name.tag``."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from ._pretrained import PretrainedCfg

__all__ = [
    "register_model", "register_pretrained_cfg", "list_models", "list_pretrained", "is_model",
    "model_entrypoint", "get_pretrained_cfg", "split_model_name_tag", "list_pretrained_tags",
]

_model_entrypoints: Dict[str, Callable] = {}
_pretrained_cfgs: Dict[str, Dict[str, PretrainedCfg]] = {}  # name -> tag -> cfg (insertion order = priority)

Filter = Union[str, Iterable[str]]


def split_model_name_tag(model_name: str) -> Tuple[str, str]:
    """``'m3amba_tiny.eolearn_lulc'`` → ``('m3amba_tiny', 'eolearn_lulc')``; no tag → ``''``."""
    name, _, tag = model_name.partition(".")
    return name, tag


def register_model(fn: Callable) -> Callable:
    """Decorator: register a model entrypoint under its function name."""
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is already registered")
    _model_entrypoints[name] = fn
    _pretrained_cfgs.setdefault(name, {})
    return fn


def register_pretrained_cfg(model_name_tag: str, cfg: PretrainedCfg) -> None:
    """Attach pretrained metadata/weights to ``name.tag`` (the first tag with weights is the default)."""
    name, tag = split_model_name_tag(model_name_tag)
    _pretrained_cfgs.setdefault(name, {})[tag] = cfg.overlay(architecture=name, tag=tag)


def _as_list(f: Optional[Filter]) -> List[str]:
    if not f:
        return []
    return [f] if isinstance(f, str) else list(f)


def _matches(name: str, include: List[str], exclude: List[str]) -> bool:
    if include and not any(fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in exclude)


def list_models(filter: Filter = "", pretrained: bool = False, exclude_filters: Filter = "") -> List[str]:
    """Sorted names of registered models matching the fnmatch ``filter``.

    With ``pretrained=True``, lists ``name.tag`` for every tag that has weights instead.
    """
    include, exclude = _as_list(filter), _as_list(exclude_filters)
    if not pretrained:
        return sorted(n for n in _model_entrypoints if _matches(n, include, exclude))
    # a filter may name the model ("m3amba_tiny*") or the full "name.tag"
    return sorted(t for t in list_pretrained()
                  if _matches(t, include, exclude) or _matches(split_model_name_tag(t)[0], include, exclude))


def list_pretrained(filter: Filter = "", exclude_filters: Filter = "") -> List[str]:
    """Sorted ``name.tag`` of every tag whose weights exist."""
    include, exclude = _as_list(filter), _as_list(exclude_filters)
    tags = [f"{n}.{t}" for n, cfgs in _pretrained_cfgs.items() for t, c in cfgs.items() if t and c.has_weights]
    return sorted(t for t in tags if _matches(t, include, exclude))


def list_pretrained_tags(model_name: str) -> List[str]:
    """Tags of ``model_name`` that have weights, default first."""
    return [t for t, c in _pretrained_cfgs.get(model_name, {}).items() if t and c.has_weights]


def is_model(model_name: str) -> bool:
    """Whether ``model_name`` (tag ignored) is registered."""
    return split_model_name_tag(model_name)[0] in _model_entrypoints


def model_entrypoint(model_name: str) -> Callable:
    """The entrypoint of ``model_name``; unknown names raise a ValueError with close matches."""
    name = split_model_name_tag(model_name)[0]
    try:
        return _model_entrypoints[name]
    except KeyError:
        close = difflib.get_close_matches(name, _model_entrypoints, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Registered models: {', '.join(sorted(_model_entrypoints))}"
        ) from None


def get_pretrained_cfg(model_name: str) -> PretrainedCfg:
    """The cfg of ``name.tag``; for a bare name, its default tag (first with weights) or its metadata cfg."""
    name, tag = split_model_name_tag(model_name)
    model_entrypoint(name)  # clear error for unknown names
    cfgs = _pretrained_cfgs.get(name, {})
    if tag:
        if tag not in cfgs:
            known = list_pretrained_tags(name)
            raise ValueError(
                f"model {name!r} has no pretrained tag {tag!r}; tags with weights: {known or 'none'}"
            )
        return cfgs[tag]
    for t, c in cfgs.items():
        if t and c.has_weights:
            return c
    return cfgs.get("", PretrainedCfg(architecture=name))
