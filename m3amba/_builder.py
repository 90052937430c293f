"""``create_model``: build a registered variant, attach its pretrained cfg, load weights."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch import nn

from ._checkpoint import load_checkpoint
from ._pretrained import PretrainedCfg
from ._registry import get_pretrained_cfg, list_pretrained, model_entrypoint, split_model_name_tag

__all__ = ["create_model", "build_model_with_cfg", "PretrainedWeightsNotFound"]


class PretrainedWeightsNotFound(RuntimeError):
    """``pretrained=True`` was asked of a model/tag that has no published weights."""


def build_model_with_cfg(model_cls: type, variant: str, pretrained_cfg: PretrainedCfg, **kwargs: Any) -> nn.Module:
    """Instantiate ``model_cls(**kwargs)`` and attach ``pretrained_cfg`` as ``model.pretrained_cfg``."""
    model = model_cls(**kwargs)
    model.pretrained_cfg = pretrained_cfg.overlay(architecture=variant).to_dict()
    return model


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
    checkpoint_path: Optional[str] = None,
    num_classes: Optional[int] = None,
    in_chans: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model, e.g. ``create_model("m3amba_base", in_chans=(144, 1), num_classes=15)``.

    Args:
        model_name: a registered name, optionally with a pretrained tag (``name.tag``).
        pretrained: load the tag's published weights (an error names the tags that exist).
        pretrained_cfg_overlay: fields overriding the tag's :class:`PretrainedCfg` (e.g. ``file=...``).
        checkpoint_path: load this weights file (safetensors, or a weights-only torch file) after building.
        num_classes: classes of the per-pixel heads (default: the variant's / tag's).
        in_chans: band counts (C1, C2) of the two modalities.
        **kwargs: passed to the model constructor (e.g. ``clip_model``, ``clip_pretrained``,
            ``drop_path_rate``, ``scan_backend``).
    """
    name, tag = split_model_name_tag(model_name)
    entrypoint = model_entrypoint(name)
    cfg = get_pretrained_cfg(model_name)
    if pretrained_cfg_overlay:
        cfg = cfg.overlay(**pretrained_cfg_overlay)
    if pretrained and not cfg.has_weights:
        available = list_pretrained(f"{name}.*")
        others = list_pretrained()
        raise PretrainedWeightsNotFound(
            f"no published weights for {model_name!r}. "
            + (f"Tags with weights for {name}: {', '.join(available)}. " if available else "")
            + (f"All models with weights: {', '.join(others)}. " if others else "No model has published weights yet. ")
            + "Use pretrained=False to train from scratch, or checkpoint_path=... for your own weights."
        )
    if pretrained and not cfg.file:
        raise PretrainedWeightsNotFound(
            f"{model_name!r} has weights on the Hugging Face Hub ({cfg.hf_hub_id}), which this version cannot "
            "download yet; download the file and pass pretrained_cfg_overlay=dict(file=...)"
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = entrypoint(pretrained_cfg=cfg, **kwargs)
    weights = checkpoint_path or (cfg.file if pretrained else None)
    if weights:
        load_checkpoint(model, weights)
    return model
