"""CLIP-driven modality adapters: a frozen open_clip image tower and the trainable adapters around it.

Per modality (C bands): a "linear embedding" 1x1 conv C→3 makes a pseudo-RGB image, which
is resized (bicubic) to the tower's input size and encoded by the frozen CLIP image encoder
into an E-dim embedding. The adapter maps the embedding back onto the patch grid
(Linear E→H·W, reshape to (B, 1, H, W), 1x1 conv 1→C) and embeds it with its own patch
embedding. The two modalities' adapted embeddings are summed into the initial fused stream.

The frozen tower is not part of the model's ``state_dict``: it is rebuilt from its name and
pretrained tag, which keeps checkpoints small (88 M CLIP parameters for ViT-B/32).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .patch_embed import PatchEmbed

__all__ = ["FrozenClipImageEncoder", "ClipAdapter", "ClipModelSpec", "ClipUnavailableError"]

#: a registered open_clip model name, or an open_clip model config dict
#: (``embed_dim``, ``vision_cfg`` and optionally ``quick_gelu``, ``text_cfg``)
ClipModelSpec = Union[str, Dict[str, Any]]

# a text tower is required by open_clip's CLIP class; we discard it at once, so keep it minimal
_TINY_TEXT_CFG = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}


class ClipUnavailableError(RuntimeError):
    """The CLIP image tower (or its pretrained weights) could not be obtained."""


def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - open_clip is a hard dependency
        raise ClipUnavailableError(
            "open_clip_torch is required for CLIP-driven M3amba variants: `pip install open_clip_torch`, "
            "or use a no-CLIP variant (clip_model=None)."
        ) from exc
    return open_clip


def _build_visual(clip_model: ClipModelSpec, clip_pretrained: Optional[str]) -> nn.Module:
    open_clip = _import_open_clip()
    if isinstance(clip_model, dict):
        if clip_pretrained is not None:
            raise ValueError("clip_pretrained must be None when clip_model is a config dict "
                             "(load a state dict into model.clip_encoder.visual yourself).")
        cfg = dict(clip_model)
        cfg.setdefault("text_cfg", _TINY_TEXT_CFG)
        return open_clip.model.CLIP(**cfg).visual
    if clip_model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {clip_model!r}; see open_clip.list_models()")
    if clip_pretrained is None:
        warnings.warn(
            f"CLIP tower {clip_model!r} is randomly initialised (clip_pretrained=None): fine for tests and "
            "architecture checks, but such a model is not CLIP-driven; never publish weights trained with it.",
            stacklevel=4,
        )
    try:
        model = open_clip.create_model(clip_model, pretrained=clip_pretrained)
    except Exception as exc:  # download/cache failures surface as many exception types
        raise ClipUnavailableError(
            f"could not obtain pretrained CLIP weights {clip_model!r}/{clip_pretrained!r}: {exc}\n"
            "Three ways to provide the CLIP image tower offline:\n"
            "  1. put the weights in the Hugging Face cache (HF_HOME) on a connected machine and set HF_HUB_OFFLINE=1;\n"
            "  2. pass clip_pretrained='/path/to/open_clip_weights.bin' (a local open_clip checkpoint file);\n"
            "  3. skip the tower: pass precomputed embeddings (forward(..., clip_embeds=...)), or use a no-CLIP "
            "variant (clip_model=None)."
        ) from exc
    return model.visual


class FrozenClipImageEncoder(nn.Module):
    """A frozen open_clip image tower: (B, 3, h, w) pseudo-RGB → (B, E) float32 embeddings.

    Always in eval mode, never trained, excluded from ``state_dict``.
    """

    def __init__(self, clip_model: ClipModelSpec, clip_pretrained: Optional[str] = None, normalize: bool = False) -> None:
        super().__init__()
        self.visual = _build_visual(clip_model, clip_pretrained)
        self.visual.requires_grad_(False)
        self.visual.eval()
        size = self.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.embed_dim = int(self.visual.output_dim)
        self.normalize = normalize
        mean = getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FrozenClipImageEncoder":
        # the tower stays in eval mode whatever the model around it does
        super().train(False)
        return self

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):  # type: ignore[override]
        # rebuilt from (clip_model, clip_pretrained), so nothing of it is saved
        if destination is None:
            from collections import OrderedDict
            destination = OrderedDict()
        return destination

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Resize to the tower's input size (bicubic), optionally normalise, and encode."""
        x = F.interpolate(rgb, size=self.image_size, mode="bicubic", align_corners=False)
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        dtype = next(self.visual.parameters()).dtype
        return self.visual(x.to(dtype)).float()



class ClipAdapter(nn.Module):
    """Trainable adapter of one modality around the frozen CLIP tower.

    ``to_rgb`` is the 1x1 "linear embedding" C→3 that feeds CLIP; ``forward`` maps a CLIP
    embedding (B, E) to channels-last tokens (B, H, W, D).
    """

    def __init__(self, in_chans: int, clip_embed_dim: int, img_size: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.to_rgb = nn.Conv2d(in_chans, 3, kernel_size=1)
        self.proj = nn.Linear(clip_embed_dim, img_size * img_size)
        self.expand = nn.Conv2d(1, in_chans, kernel_size=1)
        self.patch_embed = PatchEmbed(in_chans, embed_dim)

    def forward(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        b = clip_embedding.shape[0]
        grid = self.proj(clip_embedding).reshape(b, 1, self.img_size, self.img_size)
        return self.patch_embed(self.expand(grid))
