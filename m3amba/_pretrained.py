"""Pretrained-weight metadata: one :class:`PretrainedCfg` per ``model_name.tag``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["PretrainedCfg"]

PAPER_ID = "arXiv:2503.06446"


@dataclass(frozen=True)
class PretrainedCfg:
    """What a pretrained tag is: where its weights live and what they were trained on.

    A cfg without ``file`` or ``hf_hub_id`` carries metadata only (``has_weights`` is False).
    """

    architecture: str = ""
    tag: str = ""
    # where the weights are
    hf_hub_id: Optional[str] = None
    hf_hub_filename: str = "model.safetensors"
    file: Optional[str] = None
    sha256: Optional[str] = None
    # what the model expects and predicts
    num_classes: Optional[int] = None
    in_chans: Optional[Tuple[int, int]] = None
    img_size: int = 32
    band_names: Optional[Tuple[Sequence[str], Sequence[str]]] = None
    mean: Optional[Tuple[Sequence[float], Sequence[float]]] = None
    std: Optional[Tuple[Sequence[float], Sequence[float]]] = None
    class_names: Optional[Sequence[str]] = None
    clip_model: Optional[str] = None
    clip_pretrained: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # provenance
    license: Optional[str] = None
    dataset: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    paper_ids: Tuple[str, ...] = (PAPER_ID,)
    notes: Optional[str] = None

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
