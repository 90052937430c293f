"""Pretrained-weight metadata: one :class:`PretrainedCfg` per ``model_name.tag``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["PretrainedCfg"]

PAPER_ID = "arXiv:2503.06446"


@dataclass(frozen=True)
class PretrainedCfg:
    """What a pretrained tag is: where its weights live and what they were trained on.

    A cfg without ``file`` or ``hf_hub_id`` carries metadata only (``has_weights`` is False).
    Field names are stable (they are the keys of ``weights/manifest.json`` entries and of
    ``config.json["pretrained_cfg"]`` written by :func:`m3amba.save_pretrained`); see
    ``docs/pretrained.md`` for the meaning of each.

    Where the weights are: ``hf_hub_id`` / ``hf_hub_filename`` / ``hf_hub_revision`` (the Hub
    repo, file and revision, ``None`` = ``"main"``), ``file`` (a local file; bundled tags and
    ``pretrained_cfg_overlay=dict(file=...)``), ``sha256`` and ``file_size`` of the weights file
    (checked before any tensor is read).

    What the model expects and predicts: ``num_classes``, ``in_chans`` (bands of modality 1
    and 2), ``img_size`` (the patch size: side of the square input window, alias
    :attr:`patch_size`), ``modalities`` (e.g. ``("HSI", "LiDAR")``), ``band_names``, ``mean`` /
    ``std`` (per-band normalisation of each modality, applied by the user before the model),
    ``class_names``, ``clip_model`` / ``clip_pretrained`` (the frozen CLIP tower it was trained
    with) and ``model_kwargs`` (constructor arguments applied when the tag is built).

    Provenance: ``license``, ``dataset``, ``metrics`` (e.g. ``{"OA": 91.2, "AA": 92.0,
    "kappa": 90.5}``, in percent), ``metrics_protocol`` (how they were measured: split,
    samples per class, runs), ``paper_ids`` and ``notes``.
    """

    architecture: str = ""
    tag: str = ""
    # where the weights are
    hf_hub_id: Optional[str] = None
    hf_hub_filename: str = "model.safetensors"
    hf_hub_revision: Optional[str] = None
    file: Optional[str] = None
    sha256: Optional[str] = None
    file_size: Optional[int] = None
    # what the model expects and predicts
    num_classes: Optional[int] = None
    in_chans: Optional[Tuple[int, int]] = None
    img_size: int = 32
    modalities: Optional[Tuple[str, str]] = None
    band_names: Optional[Tuple[Optional[Sequence[str]], Optional[Sequence[str]]]] = None
    mean: Optional[Tuple[Optional[Sequence[float]], Optional[Sequence[float]]]] = None
    std: Optional[Tuple[Optional[Sequence[float]], Optional[Sequence[float]]]] = None
    class_names: Optional[Sequence[str]] = None
    clip_model: Optional[str] = None
    clip_pretrained: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # provenance
    license: Optional[str] = None
    dataset: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    metrics_protocol: Optional[str] = None
    paper_ids: Tuple[str, ...] = (PAPER_ID,)
    notes: Optional[str] = None

    @property
    def patch_size(self) -> int:
        """Side of the square input patch the model takes (the ``img_size`` field)."""
        return self.img_size

    @property
    def has_weights(self) -> bool:
        """Whether this tag points at real weights (a file or a Hub repo)."""
        return bool(self.file or self.hf_hub_id)

    def overlay(self, **changes: Any) -> "PretrainedCfg":
        """A copy with ``changes`` applied (unknown keys raise TypeError)."""
        return replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-dict form, as stored in ``model.pretrained_cfg``."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        """Names of all fields (the keys :meth:`from_dict` accepts)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PretrainedCfg":
        """Build a cfg from a plain dict (e.g. JSON); unknown keys raise a ValueError naming them.

        JSON lists become the tuples the fields hold (``in_chans``, ``modalities``, ``paper_ids``,
        and the per-modality pairs ``band_names`` / ``mean`` / ``std``).
        """
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown PretrainedCfg field(s): {', '.join(unknown)}; known: {', '.join(cls.field_names())}"
            )
        out = dict(data)
        for key in ("in_chans", "modalities", "paper_ids"):
            if out.get(key) is not None:
                out[key] = tuple(out[key])
        for key in ("band_names", "mean", "std"):
            if out.get(key) is not None:
                out[key] = tuple(None if v is None else tuple(v) for v in out[key])
        if out.get("class_names") is not None:
            out["class_names"] = tuple(out["class_names"])
        return cls(**out)
