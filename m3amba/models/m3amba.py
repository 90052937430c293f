"""The M3amba model: CLIP-driven modality adapters + a three-stream Mamba (SS2D) fusion trunk.

Streams: x (modality 1, e.g. hyperspectral), y (modality 2, e.g. LiDAR / SAR) and z (fused).
x and y start from their own patch embeddings; z starts from the sum of the two modalities'
CLIP-adapted embeddings (or, in the no-CLIP ablation, of two further patch embeddings).
Each trunk layer runs x ← CrossBlock(x, z), y ← CrossBlock(y, z), z ← FusedBlock(x + y).
Three per-pixel heads classify x, y and z; the fused head is the model's prediction.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import ClipAdapter, FrozenClipImageEncoder, M3ambaLayer, PatchEmbed, PixelHead, SS2D
from ..layers.clip_adapter import ClipModelSpec

__all__ = ["M3amba", "M3ambaFeatureExtractor", "M3ambaFeatures", "M3ambaOutput"]


class M3ambaFeatures(NamedTuple):
    """Channels-last feature maps (B, H, W, D) of the three streams."""

    m1: torch.Tensor
    m2: torch.Tensor
    fused: torch.Tensor


class M3ambaOutput(NamedTuple):
    """Everything the training objective needs: the three heads' logits (B, K, H, W) and the features."""

    logits_m1: torch.Tensor
    logits_m2: torch.Tensor
    logits_fused: torch.Tensor
    features: M3ambaFeatures


def _as_pair(in_chans: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(in_chans, int) or len(in_chans) != 2:
        raise ValueError(
            f"in_chans must give the band count of each of the two modalities, e.g. (144, 1); got {in_chans!r}"
        )
    c1, c2 = (int(c) for c in in_chans)
    if c1 < 1 or c2 < 1:
        raise ValueError(f"in_chans must be positive band counts, got {in_chans!r}")
    return c1, c2


class M3amba(nn.Module):
    """CLIP-driven three-stream Mamba for per-pixel classification of two co-registered modalities.

    Args:
        in_chans: band counts (C1, C2) of modality 1 and modality 2.
        num_classes: classes K of the per-pixel heads; 0 builds a feature extractor.
        img_size: side of the square input patch (the CLIP adapter maps onto this grid).
        embed_dim: trunk width D.
        depth: number of trunk layers (each = two Cross blocks + one Fused block).
        d_state, ssm_ratio, dt_rank, d_conv: SS2D settings (N, Di/D, Δ rank, conv kernel).
        mlp_ratio: hidden/width ratio of the blocks' MLPs.
        drop_rate: dropout in MLPs and after SS2D.
        drop_path_rate: stochastic depth, linearly increasing over the layers to this value.
        clip_model: open_clip model name or config dict for the frozen CLIP tower; None = no-CLIP ablation.
        clip_pretrained: open_clip pretrained tag or local weights file; None = random tower (tests only).
        clip_normalize: apply CLIP's mean/std normalisation before the tower (the reference does not).
        clip_embed_trainable: let gradients flow through the frozen tower into the C→3 linear
            embeddings; False (the reference's behaviour) freezes those embeddings and allows
            caching CLIP embeddings.
        scan_backend: selective-scan backend for every SS2D (None = automatic).
    """

    def __init__(
        self,
        in_chans: Sequence[int] = (144, 1),
        num_classes: int = 15,
        img_size: int = 32,
        embed_dim: int = 384,
        depth: int = 9,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: Union[int, str] = "auto",
        d_conv: int = 3,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        clip_model: Optional[ClipModelSpec] = "ViT-B-32-quickgelu",
        clip_pretrained: Optional[str] = "openai",
        clip_normalize: bool = False,
        clip_embed_trainable: bool = False,
        scan_backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        c1, c2 = _as_pair(in_chans)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = feature extractor), got {num_classes}")
        if depth < 1 or embed_dim < 1:
            raise ValueError(f"depth and embed_dim must be positive, got depth={depth}, embed_dim={embed_dim}")
        self.in_chans = (c1, c2)
        self.num_classes = num_classes
        self.img_size = img_size
        self.embed_dim = self.num_features = embed_dim
        self.clip_embed_trainable = clip_embed_trainable
        self.grad_checkpointing = 0  # number of leading trunk layers recomputed in the backward
        self.pretrained_cfg: Dict[str, Any] = {}

        self.patch_embeds = nn.ModuleList([PatchEmbed(c1, embed_dim), PatchEmbed(c2, embed_dim)])
        if clip_model is None:
            self.clip_encoder = None
            self.fusion_embeds = nn.ModuleList([PatchEmbed(c1, embed_dim), PatchEmbed(c2, embed_dim)])
        else:
            self.clip_encoder = FrozenClipImageEncoder(clip_model, clip_pretrained, normalize=clip_normalize)
            e = self.clip_encoder.embed_dim
            self.fusion_embeds = nn.ModuleList(
                [ClipAdapter(c1, e, img_size, embed_dim), ClipAdapter(c2, e, img_size, embed_dim)]
            )
        ssm_kwargs = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                          dropout=drop_rate, scan_backend=scan_backend)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            [M3ambaLayer(embed_dim, mlp_ratio, drop_path=r, drop=drop_rate, **ssm_kwargs) for r in rates]
        )
        self.head_m1 = PixelHead(embed_dim, num_classes)
        self.head_m2 = PixelHead(embed_dim, num_classes)
        self.head = PixelHead(embed_dim, num_classes)

        for name, module in self.named_modules():
            if not name.startswith("clip_encoder"):
                _init_weights(module)
        if self.clip_encoder is not None and not clip_embed_trainable:
            # no gradient reaches the C→3 embeddings through a no_grad tower: freeze them so that
            # optimisers and DDP see no parameter that never gets a gradient
            for adapter in self.fusion_embeds:
                adapter.to_rgb.requires_grad_(False)
        self.register_load_state_dict_post_hook(_ignore_clip_tower_keys)

    # -- timm vocabulary ------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Names of parameters that should not be weight-decayed (A_log, D)."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: Union[bool, int] = True) -> None:
        """Recompute trunk layers in the backward pass to save activation memory.

        ``True`` recomputes every layer; an int ``n`` only the first ``n`` layers (a memory/speed
        trade-off between the two extremes); ``False`` or 0 none.
        """
        if isinstance(enable, bool):
            self.grad_checkpointing = len(self.layers) if enable else 0
        elif isinstance(enable, int) and enable >= 0:
            self.grad_checkpointing = min(enable, len(self.layers))
        else:
            raise ValueError(f"set_grad_checkpointing takes a bool or a layer count >= 0, got {enable!r}")

    def compile_layers(self, **compile_kwargs: Any) -> "M3amba":
        """``torch.compile`` every trunk layer in place; returns the model.

        All layers share one class and shapes, so the compiled code is built once and reused by every
        layer; checkpoint keys stay unchanged, and gradient checkpointing still applies around each
        compiled layer. Fuses the SS2D's elementwise and layout work (docs/benchmarks.md says what it
        gave, and that its equality with eager on the GPU is still to be verified).
        """
        for layer in self.layers:
            layer.compile(**compile_kwargs)
        return self

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The fused head's classifier (the model's prediction)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Re-initialise all three heads' classifiers for ``num_classes`` classes (0 removes them)."""
        self.num_classes = num_classes
        for head in (self.head_m1, self.head_m2, self.head):
            head.reset(num_classes)

    def set_scan_backend(self, backend: Optional[str]) -> None:
        """Choose the selective-scan backend of every SS2D mixer (None = automatic)."""
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = backend

    # -- inputs ---------------------------------------------------------------------------
    def _check_inputs(self, x1: torch.Tensor, x2: torch.Tensor) -> None:
        """Refuse, with a message saying what to do, inputs the model cannot handle (see docs/reliability.md).

        Checked: (B, C, H, W) tensors with the model's band counts, H and W >= 1, the same batch size
        and H x W in both modalities (and the CLIP patch size), floating point in the weights' dtype (or
        any float under autocast), on the weights' device, and finite: one NaN/Inf would spread through
        the selective scan over the whole map (set ``model.check_finite_inputs = False`` to skip that
        scan of the input). A batch of 0 samples gives an empty output (no-CLIP variants) or a clear
        error (CLIP variants: the open_clip tower cannot run on 0 samples).
        """
        for i, (x, c) in enumerate(((x1, self.in_chans[0]), (x2, self.in_chans[1])), start=1):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"modality {i} must be a (B, C, H, W) tensor, got {shape}")
            if x.shape[1] != c:
                raise ValueError(
                    f"modality {i} has {x.shape[1]} bands but the model was built for {c}; build it with "
                    f"in_chans={self._suggest_in_chans(i, x.shape[1])} (pretrained weights load except the band-dependent layers)"
                )
            if x.shape[2] < 1 or x.shape[3] < 1:
                raise ValueError(f"modality {i} is {x.shape[2]}x{x.shape[3]} pixels; H and W must be at least 1")
            if not x.is_floating_point():
                raise TypeError(f"modality {i} must be a floating-point tensor, got {x.dtype}; convert with x.float()")
        if x1.shape[0] != x2.shape[0] or x1.shape[-2:] != x2.shape[-2:]:
            raise ValueError(
                f"the two modalities must share batch size and H x W, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        if self.clip_encoder is not None and x1.shape[0] == 0:
            raise ValueError("an empty batch (B=0) cannot go through the CLIP tower (open_clip fails on 0 samples); "
                             "skip the call for empty batches (the no-CLIP variants return an empty output)")
        if self.clip_encoder is not None and tuple(x1.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"this CLIP-driven model takes {self.img_size}x{self.img_size} patches, got "
                f"{tuple(x1.shape[-2:])}; tile larger scenes into windows (or build with img_size=...)"
            )
        weight = self.patch_embeds[0].proj.weight if hasattr(self.patch_embeds[0], "proj") else next(self.parameters())
        for i, x in enumerate((x1, x2), start=1):
            if x.device != weight.device:
                raise ValueError(f"modality {i} is on {x.device} but the model is on {weight.device}; "
                                 f"move the input with x.to({str(weight.device)!r}) (or the model with model.to(...))")
            try:
                autocast = torch.is_autocast_enabled(x.device.type)
            except TypeError:  # pragma: no cover  (older torch: no device argument)
                autocast = torch.is_autocast_enabled()
            if x.dtype != weight.dtype and not autocast:
                raise TypeError(
                    f"modality {i} is {x.dtype} but the model's weights are {weight.dtype}; convert the input with "
                    f"x.to({weight.dtype}) or the model with model.to({x.dtype}) (both work on CPU and GPU)"
                )
        compiler = getattr(torch, "compiler", None)
        tracing = (torch.jit.is_tracing() or torch.jit.is_scripting()
                   or bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()))
        if getattr(self, "check_finite_inputs", True) and not tracing:  # no data-dependent branch when compiled
            for i, x in enumerate((x1, x2), start=1):
                if x.numel() and not bool(torch.isfinite(x).all()):
                    bad = ~torch.isfinite(x)
                    per_band = bad.sum(dim=(0, 2, 3)).tolist()
                    listing = ", ".join(f"band {b}: {n}" for b, n in enumerate(per_band) if n)
                    raise ValueError(
                        f"modality {i} holds {int(bad.sum())} NaN/Inf values ({listing}); one would spread through "
                        "the selective scan over the whole output map. Clean the scene first: "
                        "Scene(..., nonfinite='mask' or 'fill', nodata=...) or torch.nan_to_num "
                        "(model.check_finite_inputs = False skips this check)"
                    )

    def _suggest_in_chans(self, modality: int, bands: int) -> Tuple[int, int]:
        return (bands, self.in_chans[1]) if modality == 1 else (self.in_chans[0], bands)

    # -- CLIP -----------------------------------------------------------------------------
    def encode_clip(self, x1: torch.Tensor, x2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """CLIP image embeddings (B, E) of both modalities, as ``forward(..., clip_embeds=...)`` takes them."""
        if self.clip_encoder is None:
            raise RuntimeError("this model has no CLIP tower (clip_model=None)")
        self._check_inputs(x1, x2)
        grad = nullcontext() if self.clip_embed_trainable else torch.no_grad()
        with grad:
            rgb = torch.cat([self.fusion_embeds[0].to_rgb(x1), self.fusion_embeds[1].to_rgb(x2)])
            e1, e2 = self.clip_encoder(rgb).chunk(2)
        return e1, e2

    def _fused_stem(self, x1: torch.Tensor, x2: torch.Tensor,
                    clip_embeds: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        if self.clip_encoder is None:
            if clip_embeds is not None:
                raise ValueError("clip_embeds given, but this model has no CLIP adapters (clip_model=None)")
            return self.fusion_embeds[0](x1) + self.fusion_embeds[1](x2)
        if clip_embeds is None:
            clip_embeds = self.encode_clip(x1, x2)
        e1, e2 = clip_embeds
        expected = (x1.shape[0], self.clip_encoder.embed_dim)
        for i, e in enumerate((e1, e2), start=1):
            if tuple(e.shape) != expected:
                raise ValueError(f"clip_embeds[{i - 1}] must have shape {expected}, got {tuple(e.shape)}")
        return self.fusion_embeds[0](e1.to(x1.dtype)) + self.fusion_embeds[1](e2.to(x1.dtype))

    # -- forward --------------------------------------------------------------------------
    def _stems(self, x1, x2, clip_embeds):
        self._check_inputs(x1, x2)
        return self.patch_embeds[0](x1), self.patch_embeds[1](x2), self._fused_stem(x1, x2, clip_embeds)

    def _run_layer(self, index: int, x, y, z):
        layer = self.layers[index]
        if index < self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, x, y, z, use_reentrant=False)
        return layer(x, y, z)

    def forward_features(self, x1: torch.Tensor, x2: torch.Tensor,
                         clip_embeds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> M3ambaFeatures:
        """Trunk output of the three streams, channels-last (B, H, W, D) each."""
        x, y, z = self._stems(x1, x2, clip_embeds)
        for i in range(len(self.layers)):
            x, y, z = self._run_layer(i, x, y, z)
        return M3ambaFeatures(x, y, z)

    def forward_intermediates(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
        clip_embeds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> Union[List[M3ambaFeatures], Tuple[M3ambaFeatures, List[M3ambaFeatures]]]:
        """Features of chosen trunk layers (timm's ``forward_intermediates``).

        Args:
            indices: an int n takes the last n layers; a sequence takes those layer indices
                (negative from the end); None takes all.
            norm: pass each intermediate through the corresponding head's LayerNorm.
            stop_early: stop the trunk after the last requested layer.
            intermediates_only: return only the list of intermediates.
        Returns:
            ``(final_features, intermediates)``, or the list alone; every item is an
            :class:`M3ambaFeatures` of channels-last maps.
        """
        take = self._resolve_indices(indices)
        x, y, z = self._stems(x1, x2, clip_embeds)
        intermediates: List[M3ambaFeatures] = []
        last = max(take) if stop_early else len(self.layers) - 1
        for i in range(last + 1):
            x, y, z = self._run_layer(i, x, y, z)
            if i in take:
                feats = M3ambaFeatures(x, y, z)
                intermediates.append(self._normed(feats) if norm else feats)
        if intermediates_only:
            return intermediates
        return M3ambaFeatures(x, y, z), intermediates

    def _resolve_indices(self, indices) -> Set[int]:
        n = len(self.layers)
        if indices is None:
            return set(range(n))
        if isinstance(indices, int):
            if not 1 <= indices <= n:
                raise ValueError(f"indices={indices}: this model has {n} layers")
            return set(range(n - indices, n))
        take = set()
        for i in indices:
            if not -n <= i < n:
                raise ValueError(f"layer index {i} out of range for {n} layers")
            take.add(i % n)
        return take

    def _normed(self, feats: M3ambaFeatures) -> M3ambaFeatures:
        return M3ambaFeatures(self.head_m1.norm(feats.m1), self.head_m2.norm(feats.m2), self.head.norm(feats.fused))

    def forward_head(self, features: M3ambaFeatures, pre_logits: bool = False) -> torch.Tensor:
        """Fused-head logits (B, K, H, W); with ``pre_logits`` the pooled normalised fused embedding (B, D)."""
        out = self.head(features.fused, pre_logits=pre_logits)
        return out.mean(dim=(2, 3)) if pre_logits else out

    def forward(self, x1: torch.Tensor, x2: torch.Tensor,
                clip_embeds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Per-pixel logits (B, K, H, W) of the fused head."""
        return self.forward_head(self.forward_features(x1, x2, clip_embeds))

    def forward_all(self, x1: torch.Tensor, x2: torch.Tensor,
                    clip_embeds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> M3ambaOutput:
        """Logits of all three heads (M1, M2, fused) plus the stream features, for the training loss."""
        feats = self.forward_features(x1, x2, clip_embeds)
        return M3ambaOutput(self.head_m1(feats.m1), self.head_m2(feats.m2), self.head(feats.fused), feats)


class M3ambaFeatureExtractor(nn.Module):
    """timm's ``features_only`` for M3amba: the maps of chosen trunk layers, nothing after them.

    ``forward(x1, x2, clip_embeds=None)`` returns one :class:`M3ambaFeatures` (channels-last
    (B, H, W, D) maps of the two modality streams and the fused stream) per index in
    ``out_indices``; the trunk stops after the last requested layer and the heads are dropped.
    """

    def __init__(self, model: M3amba, out_indices: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.out_indices = tuple(sorted(model._resolve_indices(list(out_indices) if out_indices is not None else None)))
        model.layers = model.layers[: max(self.out_indices) + 1]
        model.head_m1 = model.head_m2 = model.head = None
        self.model = model
        self.pretrained_cfg = model.pretrained_cfg
        self.feature_info = [dict(num_chs=model.num_features, reduction=1, module=f"layers.{i}") for i in self.out_indices]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor,
                clip_embeds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> List[M3ambaFeatures]:
        return self.model.forward_intermediates(x1, x2, indices=list(self.out_indices), stop_early=True,
                                                intermediates_only=True, clip_embeds=clip_embeds)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _ignore_clip_tower_keys(module: nn.Module, incompatible_keys) -> None:
    # the frozen CLIP tower is rebuilt from its name/tag and never stored in checkpoints
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith("clip_encoder.")]
