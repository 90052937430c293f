"""Building blocks of M3amba: patch embedding, SS2D mixers, residual blocks, CLIP adapters, heads."""
from .blocks import CrossBlock, FusedBlock, M3ambaLayer
from .clip_adapter import ClipAdapter, ClipUnavailableError, FrozenClipImageEncoder
from .heads import PixelHead
from .patch_embed import PatchEmbed
from .ss2d import SS2D, CrossSS2D

__all__ = [
    "ClipAdapter", "ClipUnavailableError", "CrossBlock", "CrossSS2D", "FrozenClipImageEncoder",
    "FusedBlock", "M3ambaLayer", "PatchEmbed", "PixelHead", "SS2D",
]
