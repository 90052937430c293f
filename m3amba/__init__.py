"""m3amba: M3amba, the CLIP-driven Mamba model for multi-modal remote-sensing classification.

Quick start::

    import m3amba
    m3amba.list_models("m3amba*")
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=(13, 1), num_classes=6)
    logits = model(x1, x2)              # (B, 6, 32, 32) per-pixel logits of the fused head
"""
from . import models as _models  # noqa: F401  (registers the variants)
from ._builder import PretrainedWeightsNotFound, create_model
from ._hub import ResolvedWeights, WeightsIntegrityError, resolve_pretrained, resolve_weights
from ._manifest import read_manifest, register_manifest
from ._pretrained_io import load_pretrained_dir, manifest_entry, push_to_hub, save_pretrained
from ._checkpoint import CheckpointMismatchError, load_checkpoint, load_state_dict_file, save_state_dict_file
from ._pretrained import PretrainedCfg
from ._registry import (
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_entrypoint,
    register_model,
    register_pretrained_cfg,
)
from .models import M3amba, M3ambaFeatures, M3ambaOutput
from .version import __version__

__all__ = [
    "CheckpointMismatchError", "M3amba", "M3ambaFeatures", "M3ambaOutput", "PretrainedCfg",
    "PretrainedWeightsNotFound", "__version__", "create_model", "get_pretrained_cfg", "is_model",
    "list_models", "list_pretrained", "load_checkpoint", "load_state_dict_file", "model_entrypoint",
    "register_model", "register_pretrained_cfg", "save_state_dict_file",
    "ResolvedWeights", "WeightsIntegrityError", "load_pretrained_dir", "manifest_entry", "push_to_hub",
    "read_manifest", "register_manifest", "resolve_pretrained", "resolve_weights", "save_pretrained",
]
