"""``create_model``: build a registered variant, attach its pretrained cfg, load weights."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Sequence

from torch import nn

from ._checkpoint import load_checkpoint
from ._finetune import adapted_cfg_changes, load_pretrained_weights
from ._hub import PretrainedWeightsNotFound, WeightsIntegrityError, resolve_weights
from ._pretrained import PretrainedCfg
from ._registry import get_pretrained_cfg, list_pretrained, model_entrypoint, split_model_name_tag

__all__ = ["create_model", "build_model_with_cfg", "PretrainedWeightsNotFound", "WeightsIntegrityError"]


def build_model_with_cfg(model_cls: type, variant: str, pretrained_cfg: PretrainedCfg, **kwargs: Any) -> nn.Module:
    """Instantiate ``model_cls(**kwargs)`` and attach ``pretrained_cfg`` as ``model.pretrained_cfg``.

    The constructor arguments are kept as ``model.model_args`` (what :func:`m3amba.save_pretrained`
    writes to ``config.json`` to rebuild the model).
    """
    model = model_cls(**kwargs)
    model.pretrained_cfg = pretrained_cfg.overlay(architecture=variant).to_dict()
    model.model_args = copy.deepcopy(kwargs)
    return model


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
    checkpoint_path: Optional[str] = None,
    num_classes: Optional[int] = None,
    in_chans: Optional[Sequence[int]] = None,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model, e.g. ``create_model("m3amba_base", in_chans=(144, 1), num_classes=15)``.

    Args:
        model_name: a registered name, optionally with a pretrained tag (``name.tag``).
        pretrained: load the tag's weights, found in this order (see ``docs/pretrained.md``): the
            cfg's ``file``, ``M3AMBA_WEIGHTS_DIR`` and the bundled ``weights/`` folder, the Hugging
            Face cache, a download from the Hub (``HF_ENDPOINT``; not with ``HF_HUB_OFFLINE=1``).
            The file's sha256 is checked before any tensor is read. With ``num_classes`` /
            ``in_chans`` other than the tag's, everything that fits is loaded and only the
            classifiers / band-dependent input layers are re-initialised (logged at INFO level).
        pretrained_cfg_overlay: fields overriding the tag's :class:`PretrainedCfg`, e.g.
            ``dict(file="dir/model.safetensors")``; a ``file`` given without ``sha256`` drops the
            tag's recorded ``sha256``/``file_size`` (they describe the published file).
        checkpoint_path: load exactly this weights file (safetensors, or a weights-only torch file)
            strictly after building; when given, ``pretrained`` weights are not looked up.
        num_classes: classes of the per-pixel heads (default: the variant's / tag's).
        in_chans: band counts (C1, C2) of the two modalities.
        features_only: return a :class:`~m3amba.models.M3ambaFeatureExtractor` whose forward gives
            the chosen trunk layers' maps (weights are loaded into the full model first).
        out_indices: with ``features_only``, the layer indices to return (default: every layer).
        **kwargs: passed to the model constructor (e.g. ``clip_model``, ``clip_pretrained``,
            ``drop_path_rate``, ``scan_backend``).

    Raises:
        PretrainedWeightsNotFound: the tag has no weights, or they cannot be found or downloaded.
        WeightsIntegrityError: the weights file is truncated or its sha256 differs from the cfg's.
        CheckpointMismatchError: the weights do not fit the model for a reason other than bands/classes.
    """
    name, tag = split_model_name_tag(model_name)
    entrypoint = model_entrypoint(name)
    cfg = get_pretrained_cfg(model_name)
    if pretrained_cfg_overlay:
        overlay = dict(pretrained_cfg_overlay)
        if "file" in overlay and "sha256" not in overlay:
            overlay.setdefault("file_size", None)
            overlay["sha256"] = None
        cfg = cfg.overlay(**overlay)
    if pretrained and not cfg.has_weights and not checkpoint_path:
        available = list_pretrained(f"{name}.*")
        others = list_pretrained()
        raise PretrainedWeightsNotFound(
            f"no published weights for {model_name!r}. "
            + (f"Tags with weights for {name}: {', '.join(available)}. " if available else "")
            + (f"All models with weights: {', '.join(others)}. " if others else "No model has published weights yet. ")
            + "Use pretrained=False to train from scratch, or checkpoint_path=... for your own weights."
        )
    # find and verify the file before building anything (a CLIP tower can take a while)
    resolved = resolve_weights(cfg) if pretrained and not checkpoint_path else None
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = entrypoint(pretrained_cfg=cfg, **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    elif resolved is not None:
        label = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
        report = load_pretrained_weights(model, resolved.path, name=label)
        if isinstance(getattr(model, "pretrained_cfg", None), dict):
            model.pretrained_cfg.update(adapted_cfg_changes(model, report, model.pretrained_cfg))
    if features_only:
        from .models import M3ambaFeatureExtractor
        return M3ambaFeatureExtractor(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices is only used with features_only=True")
    return model
