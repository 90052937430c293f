"""Inference with a published pretrained tag (``create_model(name.tag, pretrained=True)``) on a scene.

A tag's pretrained config carries what inference needs besides the weights: the per-band
normalisation (``mean`` / ``std`` = the offset / scale the training run used) and the class names.
The scene, its split and the sliding-window settings come from the recipe config the tag was
trained with, so ``m3amba evaluate --pretrained TAG --config RECIPE`` reproduces the card's metrics.
"""
from __future__ import annotations

from typing import Any, Dict, Union

import numpy as np
import torch

from ..data import NormStats
from .config import DEFAULT_CONFIG, load_config, merge_config
from .engine import TrainedModel

__all__ = ["load_published"]


def load_published(name_tag: str, config: Union[str, Dict[str, Any]], device="cpu") -> TrainedModel:
    """A published tag's model with its normalisation and classes, and the recipe ``config`` for the scene.

    Args:
        name_tag: ``"model.tag"``, e.g. ``"m3amba_tiny_noclip.eolearn_lulc"`` (see ``m3amba.list_pretrained()``).
        config: the recipe config (path or dict) the tag was trained with: its ``data`` section names the
            scene and split, its ``eval`` section the windows.
        device: where the model runs.
    Raises:
        ValueError: the tag records no normalisation or classes, or the config's model differs from the tag's.
    """
    import m3amba
    if "." not in name_tag:
        raise ValueError(f"expected a pretrained tag 'model.tag', got {name_tag!r}; see m3amba.list_pretrained()")
    cfg = merge_config(DEFAULT_CONFIG, load_config(config) if not isinstance(config, dict) else config)
    model = m3amba.create_model(name_tag, pretrained=True)
    pc = model.pretrained_cfg if isinstance(model.pretrained_cfg, dict) else model.pretrained_cfg.to_dict()
    arch = name_tag.partition(".")[0]
    if cfg["model"]["name"] != arch:
        raise ValueError(f"the config trains {cfg['model']['name']!r} but the tag is a {arch!r}: pass the recipe "
                         f"config of {name_tag} (its model card's Reproduce section names it)")
    mean, std, classes = pc.get("mean"), pc.get("std"), pc.get("class_names")
    if not mean or not std or mean[0] is None or mean[1] is None or not classes:
        raise ValueError(f"{name_tag} records no per-band normalisation or class names: evaluate it with your own "
                         "normalisation through the Python API instead")
    method = (cfg["data"].get("normalization") or {}).get("method", "minmax")
    source = (cfg["data"].get("normalization") or {}).get("source", "scene")
    norm = NormStats(*(np.asarray(v, np.float32) for v in (mean[0], std[0], mean[1], std[1])), method, source)
    device = torch.device(device)
    model.to(device).eval()
    return TrainedModel(model, norm, classes, cfg, epoch=0, device=device)
