"""Loading pretrained weights into a model built for other bands or classes (fine-tuning on new scenes).

Everything that fits is loaded. Exactly these layers are left freshly initialised, and only when
the model and the checkpoint disagree on what they depend on:

* a band-count change of modality ``i`` (``in_chans[i]`` differs): the layers that read the
  modality's bands, ``patch_embeds.{i}.proj`` and, in ``fusion_embeds.{i}``, ``to_rgb``,
  ``expand`` and ``patch_embed.proj`` (CLIP variants) or ``proj`` (no-CLIP variants);
* a class-count change (``num_classes`` differs): the classifiers of the three heads,
  ``head_m1.fc``, ``head_m2.fc`` and ``head.fc``.

A layer is re-initialised as a whole (weight and bias), and each re-initialised tensor is logged
at INFO level. Any other missing, unexpected or mis-shaped tensor is a
:class:`~m3amba.CheckpointMismatchError`; the model is only modified once every check has passed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn

from ._checkpoint import check_fit, load_state_dict_file
from ._hub import WeightsIntegrityError

__all__ = ["AdaptedLoad", "load_pretrained_weights", "band_dependent_layers", "adapted_cfg_changes", "CLASS_LAYERS"]

_logger = logging.getLogger(__name__)

#: the classifier layers re-initialised on a class-count change
CLASS_LAYERS: Tuple[str, ...] = ("head_m1.fc", "head_m2.fc", "head.fc")


@dataclass
class AdaptedLoad:
    """What :func:`load_pretrained_weights` did.

    Attributes:
        reinitialized: names of the model's tensors left freshly initialised, in state-dict order.
        dropped: checkpoint tensors not loaded because their layer was re-initialised or removed
            (e.g. the classifiers when the model is built with ``num_classes=0``).
        changes: human-readable reasons, e.g. ``"modality 1: 5 -> 7 bands"``.
    """

    reinitialized: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    changes: List[str] = field(default_factory=list)


def band_dependent_layers(model: nn.Module, modality: int) -> Tuple[str, ...]:
    """Module names of the layers of ``model`` whose shapes depend on the band count of ``modality`` (0 or 1)."""
    layers = [f"patch_embeds.{modality}.proj"]
    if getattr(model, "clip_encoder", None) is None:
        layers.append(f"fusion_embeds.{modality}.proj")
    else:
        layers += [f"fusion_embeds.{modality}.{n}" for n in ("to_rgb", "expand", "patch_embed.proj")]
    return tuple(layers)


def _under(key: str, layers) -> bool:
    return any(key.startswith(layer + ".") for layer in layers)


def _read(path: Path) -> Dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(path)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # safetensors reports truncated/corrupt files with its own exception type
        raise WeightsIntegrityError(
            f"{path} could not be read as a weights file ({type(exc).__name__}: {exc}); it is truncated or corrupt"
        ) from exc


def load_pretrained_weights(model: nn.Module, path: os.PathLike, name: str = "", adapt: bool = True) -> AdaptedLoad:
    """Load ``path`` into ``model``, re-initialising only the band/class-dependent layers that must change.

    Args:
        model: an :class:`~m3amba.M3amba` (anything else is loaded strictly).
        path: a safetensors (or weights-only torch) file.
        name: the tag's name, for log lines.
        adapt: allow the band/class adaptation; False loads strictly.

    Returns:
        an :class:`AdaptedLoad` (empty lists when everything was loaded).

    Raises:
        CheckpointMismatchError: a tensor mismatches for another reason (different variant, width,
            depth or CLIP tower); the model is left untouched.
        WeightsIntegrityError: the file cannot be parsed (truncated or corrupt).
    """
    path = Path(path)
    state = _read(path)
    own = model.state_dict()
    report = AdaptedLoad()
    label = name or type(model).__name__
    reinit_layers: List[str] = []
    if adapt and hasattr(model, "in_chans") and hasattr(model, "num_classes"):
        for i in (0, 1):
            key = f"patch_embeds.{i}.proj.weight"
            if key in state and state[key].dim() == 4 and state[key].shape[1] != model.in_chans[i]:
                report.changes.append(f"modality {i + 1}: {state[key].shape[1]} -> {model.in_chans[i]} bands")
                reinit_layers += band_dependent_layers(model, i)
        ckpt_classes = state["head.fc.weight"].shape[0] if "head.fc.weight" in state else 0
        if "head.norm.weight" in state and ckpt_classes != model.num_classes:
            report.changes.append(f"classes: {ckpt_classes} -> {model.num_classes}")
            reinit_layers += CLASS_LAYERS
    report.reinitialized = [k for k in own if _under(k, reinit_layers)]
    report.dropped = [k for k in state if _under(k, reinit_layers)]
    kept = {k: v for k, v in state.items() if not _under(k, reinit_layers)}
    _check_fit(model, own, kept, report.reinitialized, path)
    full = {**kept, **{k: own[k] for k in report.reinitialized}}
    model.load_state_dict(full, strict=True)
    if report.changes:
        _logger.info(
            "%s: %s; re-initialised %d tensor(s): %s", label, ", ".join(report.changes),
            len(report.reinitialized), ", ".join(report.reinitialized) or "-",
        )
        gone = [k for k in report.dropped if k not in own]
        if gone:
            _logger.info("%s: checkpoint tensors without a place in the model, not loaded: %s", label, ", ".join(gone))
    return report


def _check_fit(model: nn.Module, own: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor],
               reinit: List[str], path: Path) -> None:
    check_fit(model, own, kept, path, allowed_missing=reinit, hint=(
        "only the band-dependent input layers (in_chans) and the classifiers (num_classes) may differ from the "
        "pretrained model; build the same variant (width, depth, CLIP tower) as the weights"))


def adapted_cfg_changes(model: nn.Module, report: AdaptedLoad, cfg: Mapping) -> Dict:
    """Fields of the model's ``pretrained_cfg`` dict that no longer hold after an adapted load.

    The classes, and the bands and statistics of a changed modality, are cleared; so are the
    metrics (they describe the pretrained task). Where the weights came from is kept.
    """
    if not report.changes:
        return {}
    changes: Dict = {"num_classes": model.num_classes, "in_chans": tuple(model.in_chans),
                     "metrics": {}, "metrics_protocol": None}
    if any(c.startswith("classes") for c in report.changes):
        changes["class_names"] = None
    for i in (0, 1):
        if any(c.startswith(f"modality {i + 1}") for c in report.changes):
            for key in ("band_names", "mean", "std"):
                pair = cfg.get(key)
                if pair is not None:
                    pair = list(pair)
                    pair[i] = None
                    changes[key] = tuple(pair)
    return changes
