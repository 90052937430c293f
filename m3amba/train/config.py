"""Training configuration: nested dicts with defaults, read from YAML (needs PyYAML) or JSON."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["DEFAULT_CONFIG", "DEMO_CONFIG", "load_config", "merge_config"]

DEFAULT_CONFIG: Dict[str, Any] = {
    "data": {
        "name": "eolearn_slovenia",  # or houston2013, muufl, trento, augsburg
        "data_dir": None,
        "date": 0,                   # eolearn_slovenia: 0..4 or "stack"
        "split": {"train_per_class": 50, "train_fraction": None, "val_per_class": 0, "block_size": None, "seed": 0},
        "normalization": {"method": "minmax", "source": "scene"},
        "nonfinite": "raise",        # NaN/Inf/nodata values: raise (refuse, with counts per band), fill, mask
        "nodata": None,              # a value meaning "no data" in both modalities, or [value1, value2]
    },
    "model": {
        "name": "m3amba_tiny_noclip",
        "args": {},                  # keyword overrides of the variant's config, e.g. embed_dim, depth
    },
    "train": {
        "epochs": 10,
        "batch_size": 16,
        "samples_per_epoch": None,   # windows per epoch; None = one per training pixel
        "window": 32,
        "augment": True,             # random flips and 90-degree rotations
        "lr": 1.0e-3,
        "min_lr": 1.0e-5,
        "weight_decay": 0.05,
        "warmup_epochs": 1,
        "grad_clip": 1.0,            # max gradient norm; 0 or None = off
        "ema_decay": 0.0,            # 0 = no EMA; e.g. 0.999
        "amp": True,                 # bf16 autocast on CUDA (CPU always runs fp32)
        "compile": False,            # torch.compile the training step's model (CUDA: ~2x faster, see docs/benchmarks.md)
        "grad_checkpointing": 0,     # recompute this many leading trunk layers in the backward (True = all)
        "seed": 0,
        "device": "auto",
        "keep_checkpoints": 2,
        "eval_every": 1,             # validation every n epochs (when the split has a validation set)
        "deterministic": False,      # torch.use_deterministic_algorithms(True) while training
    },
    "loss": {"lambda_sup": 1.0, "lambda_unsup": 0.5, "consistency_on": "prob", "detach_fused": False,
             "label_smoothing": 0.0},
    "eval": {"window": 32, "stride": 16, "batch_size": 32, "use_ema": True},
}

#: what ``m3amba demo`` trains (kept equal to configs/eolearn_tiny.yaml; a test checks)
DEMO_CONFIG: Dict[str, Any] = {
    "data": {"name": "eolearn_slovenia", "date": "stack",
             "split": {"train_per_class": 50, "val_per_class": 0, "seed": 0},
             "normalization": {"method": "minmax", "source": "scene"}},
    "model": {"name": "m3amba_tiny_noclip", "args": {"embed_dim": 32, "depth": 1, "d_state": 8, "ssm_ratio": 1.0,
                                                      "drop_path_rate": 0.0}},
    "train": {"epochs": 10, "batch_size": 16, "samples_per_epoch": 256, "window": 32, "lr": 3.0e-3,
              "weight_decay": 0.05, "warmup_epochs": 1, "grad_clip": 1.0, "seed": 0},
    "loss": {"lambda_sup": 1.0, "lambda_unsup": 0.5, "consistency_on": "prob"},
    "eval": {"window": 32, "stride": 16, "batch_size": 32},
}


def merge_config(base: Dict[str, Any], override: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (unknown top-level sections are refused)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value) if key != "args" else {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path=None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults, then the file at ``path`` (YAML or JSON), then ``overrides``."""
    user: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ImportError("YAML configs need PyYAML: pip install 'm3amba[train]' (or use a .json config)") from exc
            user = yaml.safe_load(text) or {}
        else:
            user = json.loads(text)
    unknown = set(user) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = merge_config(DEFAULT_CONFIG, user)
    return merge_config(cfg, overrides)
