"""Convert checkpoints of the reference implementation (github.com/kaka-Cao/M3amba) to this package.

The reference training script saves one ``torch.save`` file holding

* ``"model_dict"``: the ``state_dict`` of its ``VSSM`` network;
* ``"conv_hsi"`` / ``"conv_lidar"``: the ``state_dict`` of the two 1x1 convolutions C→3 that
  turn each modality into the pseudo-RGB image fed to CLIP (they live outside the network);
* possibly more entries (optimiser state, epoch, ...), which are ignored.

Parameter layout, reference → this package:

======================================================  =============================================
reference                                               ours
======================================================  =============================================
``patch_embed_{hsi,lidar}.{0,2}``                       ``patch_embeds.{0,1}.{proj,norm}``
top-level ``conv_{hsi,lidar}`` (C→3)                    ``fusion_embeds.{0,1}.to_rgb``
``linear_{hsi,lidar}`` (E→H·W)                          ``fusion_embeds.{0,1}.proj``
``conv_{hsi,lidar}`` inside ``model_dict`` (1→C)        ``fusion_embeds.{0,1}.expand``
``patch_embed_{hsi,lidar}_clip.{0,2}``                  ``fusion_embeds.{0,1}.patch_embed.{proj,norm}``
``layers_x.j.b.*`` / ``layers_y.j.b.*``                 ``layers.i.cross1.*`` / ``layers.i.cross2.*``
``layers_z.j.b.*``                                      ``layers.i.fused.*``
``classifier_{hsi,lidar,add}.{norm,head}``              ``head_m1`` / ``head_m2`` / ``head`` ``.{norm,fc}``
======================================================  =============================================

(blocks ``(j, b)`` of the reference's stages are numbered ``i`` in execution order.)

Inside a cross block the reference mixer holds two parameter sets: ``*_hsi`` for the block's
own stream and ``*_lidar`` for the fused stream z it is called with. Its scan of the own stream
uses Δ and C projected from the stream (rows ``[0:R]`` and ``[R+N:R+2N]`` of
``x_proj_weight_hsi``), B projected from z (rows ``[R:R+N]`` of ``x_proj_weight_lidar``), the
mean of ``exp(A_logs_hsi)`` and ``exp(A_logs_lidar)``, and ``dt_projs_*_hsi`` / ``Ds_hsi``. The
symmetric scan of z is computed and then discarded by the reference, so every tensor only it
reads is dropped here (and listed in :attr:`ConvertedCheckpoint.dropped`): rows ``[R:R+N]`` of
``x_proj_weight_hsi``, rows ``[0:R]`` and ``[R+N:]`` of ``x_proj_weight_lidar``,
``dt_projs_weight_lidar``, ``dt_projs_bias_lidar`` and ``Ds_lidar``.

The reference always uses CLIP; a reference-style dict without ``linear_*`` but with
``patch_embed_*_clip`` is converted into the no-CLIP layout (those patch embeddings become
``fusion_embeds``).

Checkpoint files are read only with ``torch.load(weights_only=True)`` or safetensors: nothing
in a file can run code.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .._checkpoint import load_checkpoint, read_torch_file, save_state_dict_file

__all__ = [
    "ConvertedCheckpoint",
    "convert_reference_checkpoint",
    "save_converted",
    "load_converted",
    "REFERENCE_CLIP_MODEL",
    "REFERENCE_CLIP_PRETRAINED",
    "FALLBACK_ARCHITECTURE",
]

PathLike = Union[str, os.PathLike]

#: the CLIP tower of the reference (OpenAI ViT-B/32, QuickGELU) in open_clip's naming, and its width
REFERENCE_CLIP_MODEL = "ViT-B-32-quickgelu"
REFERENCE_CLIP_PRETRAINED = "openai"
_REFERENCE_CLIP_EMBED_DIM = 512

#: the variant used, with explicit overrides, when no registered variant matches a checkpoint
FALLBACK_ARCHITECTURE = "m3amba_base"

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_MODALITIES = ("hsi", "lidar")  # reference names of modality 1 and modality 2
_NUM_DIRECTIONS = 4
_TOP = "@"  # internal prefix of the top-level conv_hsi / conv_lidar entries
_TOP_LEVEL_CONVS = ("conv_hsi", "conv_lidar")
_BLOCK_KEY = re.compile(r"^layers_([xyz])\.(\d+)\.(\d+)\.(.+)$")


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------
@dataclass
class ConvertedCheckpoint:
    """A reference checkpoint in this package's layout.

    Attributes:
        state_dict: tensors named as in :class:`m3amba.M3amba` (the CLIP tower is never stored).
        model_args: keyword arguments that rebuild the matching model with
            ``m3amba.create_model(architecture, **model_args)``: ``in_chans``, ``num_classes``,
            ``embed_dim``, ``depth``, ``d_state``, ``ssm_ratio``, ``dt_rank``, ``d_conv``,
            ``mlp_ratio``, and for CLIP checkpoints ``img_size`` plus, when the embeddings are
            512-dimensional as the reference's ViT-B/32, ``clip_model``/``clip_pretrained``
            (no-CLIP checkpoints carry ``clip_model=None``).
        dropped: reference tensors intentionally left out (those only the discarded scan of
            the fused stream reads); a partly used tensor is listed with the dropped slice, e.g.
            ``layers_x.0.0.op.x_proj_weight_hsi[:, 2:18]``.
        architecture: the registered variant whose config matches ``model_args``, else
            ``"m3amba_base"`` (``model_args`` always overrides the variant's settings).
        clip_embed_dim: width E of the CLIP embeddings the adapters take; None without CLIP.
        ignored: top-level checkpoint entries that are not weights of the model (optimiser, epoch, ...).
    """

    state_dict: Dict[str, Tensor]
    model_args: Dict[str, Any]
    dropped: List[str] = field(default_factory=list)
    architecture: str = FALLBACK_ARCHITECTURE
    clip_embed_dim: Optional[int] = None
    ignored: List[str] = field(default_factory=list)

    @property
    def uses_clip(self) -> bool:
        """Whether the checkpoint has CLIP adapters (every real reference checkpoint has)."""
        return self.clip_embed_dim is not None


@dataclass(frozen=True)
class _Dims:
    c1: int
    c2: int
    embed_dim: int
    d_inner: int
    d_state: int
    dt_rank: int
    d_conv: int
    mlp_hidden: int
    num_classes: int
    depth: int
    clip_embed_dim: Optional[int]
    img_size: Optional[int]

    @property
    def ssm_ratio(self) -> float:
        return self.d_inner / self.embed_dim

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_hidden / self.embed_dim


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _read_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        flat = load_file(str(path))
        if any(k.startswith("model_dict.") for k in flat):
            # nested layout stored flat: "model_dict.<key>", "conv_hsi.<key>", "conv_lidar.<key>"
            nested: Dict[str, Dict[str, Tensor]] = {}
            for key, value in flat.items():
                head, _, rest = key.partition(".")
                nested.setdefault(head, {})[rest] = value
            return nested
        return flat
    obj = read_torch_file(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())


def _split_checkpoint(ckpt: Mapping[str, Any]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Flatten a reference checkpoint to {key: tensor}; top-level convs get the '@' prefix."""
    if "model_dict" in ckpt:
        model_dict = ckpt["model_dict"]
        if not _is_tensor_dict(model_dict):
            raise ValueError("checkpoint['model_dict'] must map parameter names to tensors")
        flat: Dict[str, Tensor] = dict(model_dict)
        ignored = []
        for name, value in ckpt.items():
            if name == "model_dict":
                continue
            if name in _TOP_LEVEL_CONVS:
                if not _is_tensor_dict(value):
                    raise ValueError(f"checkpoint[{name!r}] must be a state dict of tensors")
                flat.update({f"{_TOP}{name}.{k}": v for k, v in value.items()})
            else:
                ignored.append(str(name))
        return _strip_module_prefix(flat), ignored
    if _is_tensor_dict(ckpt) and ckpt:
        # a bare VSSM state dict (without the C→3 convs that feed CLIP)
        return _strip_module_prefix(dict(ckpt)), []
    raise ValueError(
        "not a reference M3amba checkpoint: expected a dict with 'model_dict' (and 'conv_hsi', "
        f"'conv_lidar'), or a bare VSSM state dict; got keys {sorted(map(str, ckpt))[:10]}"
    )


def _strip_module_prefix(flat: Dict[str, Tensor]) -> Dict[str, Tensor]:
    # checkpoints saved from DataParallel / DDP wrappers
    model_keys = [k for k in flat if not k.startswith(_TOP)]
    if model_keys and all(k.startswith("module.") for k in model_keys):
        return {(k[len("module."):] if not k.startswith(_TOP) else k): v for k, v in flat.items()}
    return flat


def _display(key: str) -> str:
    if key.startswith(_TOP):
        name, _, param = key[len(_TOP):].partition(".")
        return f"{name}.{param} (top-level {name!r} entry)"
    return key


# ----------------------------------------------------------------------------------------------
# inferring the architecture
# ----------------------------------------------------------------------------------------------
def _require(ref: Mapping[str, Tensor], *keys: str) -> None:
    missing = [k for k in keys if k not in ref]
    if missing:
        raise ValueError(
            "reference checkpoint is missing expected key(s): " + ", ".join(_display(k) for k in missing)
        )


def _block_layout(ref: Mapping[str, Tensor]) -> List[Tuple[int, int]]:
    """The reference blocks (stage j, block b) in execution order, identical for x, y and z."""
    found: Dict[str, set] = {"x": set(), "y": set(), "z": set()}
    for key in ref:
        m = _BLOCK_KEY.match(key)
        if m:
            found[m.group(1)].add((int(m.group(2)), int(m.group(3))))
    if not found["z"]:
        raise ValueError("reference checkpoint is missing expected key(s): no layers_z.* blocks found")
    layout = sorted(found["z"])
    for stream in "xy":
        if found[stream] != found["z"]:
            only_z = sorted(found["z"] - found[stream])
            extra = sorted(found[stream] - found["z"])
            raise ValueError(
                f"reference checkpoint is missing expected key(s): layers_{stream} and layers_z must have the "
                f"same blocks; layers_{stream} lacks {['%d.%d' % jb for jb in only_z]} and has extra "
                f"{['%d.%d' % jb for jb in extra]}"
            )
    return layout


def _infer_dims(ref: Mapping[str, Tensor], layout: List[Tuple[int, int]]) -> _Dims:
    _require(ref, "patch_embed_hsi.0.weight", "patch_embed_lidar.0.weight")
    pe1, pe2 = ref["patch_embed_hsi.0.weight"], ref["patch_embed_lidar.0.weight"]
    for name, w in (("patch_embed_hsi.0.weight", pe1), ("patch_embed_lidar.0.weight", pe2)):
        if w.dim() != 4 or tuple(w.shape[2:]) != (1, 1):
            raise ValueError(
                f"{name} has shape {tuple(w.shape)}; only patch_size=1 (a 1x1 conv, shape (D, C, 1, 1)) is "
                "supported, as in the reference's test.py"
            )
    embed_dim = pe1.shape[0]
    if pe2.shape[0] != embed_dim:
        raise ValueError(f"patch_embed_lidar.0.weight has width {pe2.shape[0]}, patch_embed_hsi.0.weight {embed_dim}")

    j, b = layout[0]
    z = f"layers_z.{j}.{b}."
    _require(ref, z + "op.in_proj.weight", z + "op.A_logs", z + "op.dt_projs_weight", z + "mlp.fc1.weight")
    in_proj, a_logs, dt_w = ref[z + "op.in_proj.weight"], ref[z + "op.A_logs"], ref[z + "op.dt_projs_weight"]
    if in_proj.dim() != 2 or in_proj.shape[0] % 2 or in_proj.shape[1] != embed_dim:
        raise ValueError(f"{z}op.in_proj.weight has shape {tuple(in_proj.shape)}, expected (2 * d_inner, {embed_dim})")
    d_inner = in_proj.shape[0] // 2
    if dt_w.dim() != 3 or dt_w.shape[:2] != (_NUM_DIRECTIONS, d_inner):
        raise ValueError(
            f"{z}op.dt_projs_weight has shape {tuple(dt_w.shape)}, expected ({_NUM_DIRECTIONS}, {d_inner}, dt_rank)"
        )
    if a_logs.dim() != 2 or a_logs.shape[0] != _NUM_DIRECTIONS * d_inner:
        raise ValueError(
            f"{z}op.A_logs has shape {tuple(a_logs.shape)}, expected ({_NUM_DIRECTIONS * d_inner}, d_state)"
        )
    conv = ref.get(z + "op.conv2d.weight")
    if conv is None:
        d_conv = 1  # the reference's d_conv < 2: no depthwise conv
    elif conv.dim() != 4 or conv.shape[2] != conv.shape[3] or conv.shape[2] % 2 == 0:
        raise ValueError(f"{z}op.conv2d.weight has shape {tuple(conv.shape)}, expected (d_inner, 1, k, k) with odd k")
    else:
        d_conv = conv.shape[2]

    head = ref.get("classifier_add.head.weight")
    num_classes = head.shape[0] if head is not None else 0

    clip_embed_dim = img_size = None
    if "linear_hsi.weight" in ref or "linear_lidar.weight" in ref:
        _require(ref, "linear_hsi.weight", "linear_lidar.weight")
        lin = ref["linear_hsi.weight"]
        if lin.dim() != 2:
            raise ValueError(f"linear_hsi.weight has shape {tuple(lin.shape)}, expected (H*W, E)")
        img_size = math.isqrt(lin.shape[0])
        if img_size * img_size != lin.shape[0]:
            raise ValueError(
                f"linear_hsi.weight maps onto {lin.shape[0]} values, which is not a square H*W grid"
            )
        clip_embed_dim = lin.shape[1]
    elif not any(k.startswith("patch_embed_hsi_clip.") for k in ref):
        raise ValueError(
            "reference checkpoint is missing expected key(s): neither the CLIP adapters (linear_hsi, "
            "linear_lidar, conv_hsi, conv_lidar, patch_embed_*_clip) nor, for a no-CLIP layout, "
            "patch_embed_hsi_clip / patch_embed_lidar_clip were found"
        )

    dims = _Dims(
        c1=pe1.shape[1], c2=pe2.shape[1], embed_dim=embed_dim, d_inner=d_inner, d_state=a_logs.shape[1],
        dt_rank=dt_w.shape[2], d_conv=d_conv, mlp_hidden=ref[z + "mlp.fc1.weight"].shape[0],
        num_classes=num_classes, depth=len(layout), clip_embed_dim=clip_embed_dim, img_size=img_size,
    )
    if int(dims.ssm_ratio * embed_dim) != d_inner or int(embed_dim * dims.mlp_ratio) != dims.mlp_hidden:
        raise ValueError(
            f"cannot express d_inner={d_inner} / MLP width {dims.mlp_hidden} as a ratio of embed_dim={embed_dim}"
        )
    return dims


def _expected_shapes(d: _Dims) -> Dict[str, torch.Size]:
    """Names and shapes of the state dict of the model that ``d`` describes (built on the meta device)."""
    from ..layers import ClipAdapter, M3ambaLayer, PatchEmbed, PixelHead

    with torch.device("meta"):
        top = {
            "patch_embeds.0": PatchEmbed(d.c1, d.embed_dim),
            "patch_embeds.1": PatchEmbed(d.c2, d.embed_dim),
            "head_m1": PixelHead(d.embed_dim, d.num_classes),
            "head_m2": PixelHead(d.embed_dim, d.num_classes),
            "head": PixelHead(d.embed_dim, d.num_classes),
        }
        for m, c in enumerate((d.c1, d.c2)):
            top[f"fusion_embeds.{m}"] = (
                ClipAdapter(c, d.clip_embed_dim, d.img_size, d.embed_dim)
                if d.clip_embed_dim is not None else PatchEmbed(c, d.embed_dim)
            )
        layer = M3ambaLayer(d.embed_dim, d.mlp_ratio, d_state=d.d_state, ssm_ratio=d.ssm_ratio,
                            dt_rank=d.dt_rank, d_conv=d.d_conv)
    shapes = {f"{prefix}.{k}": v.shape for prefix, module in top.items() for k, v in module.state_dict().items()}
    layer_shapes = {k: v.shape for k, v in layer.state_dict().items()}
    for i in range(d.depth):
        shapes.update({f"layers.{i}.{k}": v for k, v in layer_shapes.items()})
    return shapes


# ----------------------------------------------------------------------------------------------
# the mapping
# ----------------------------------------------------------------------------------------------
Transform = Callable[[Tensor], Tensor]

# cross-block mixer parameters that are renamed (all others keep their name)
_CROSS_RENAMES = {
    "op.dt_projs_weight": "op.dt_projs_weight_hsi",
    "op.dt_projs_bias": "op.dt_projs_bias_hsi",
    "op.A_logs": "op.A_logs_hsi",
    "op.A_logs_fused": "op.A_logs_lidar",
    "op.Ds": "op.Ds_hsi",
}
_HEADS = {"head_m1": "classifier_hsi", "head_m2": "classifier_lidar", "head": "classifier_add"}
_HEAD_PARTS = {"norm": "norm", "fc": "head"}
_PATCH_EMBED_PARTS = {"proj": "0", "norm": "2"}


def _x_proj_rows(key: str, d: _Dims, keep: List[Tuple[int, int]]) -> Transform:
    r, n, rows = d.dt_rank, d.d_state, d.dt_rank + 2 * d.d_state

    def take(w: Tensor) -> Tensor:
        expected = (_NUM_DIRECTIONS, rows, d.d_inner)
        if tuple(w.shape) != expected:
            raise ValueError(
                f"{key} has shape {tuple(w.shape)}; expected (K, R+2N, d_inner) = {expected} with "
                f"K={_NUM_DIRECTIONS} scan directions, dt_rank R={r} and d_state N={n} (read from the fused "
                "blocks' dt_projs_weight and A_logs)"
            )
        return torch.cat([w[:, a:b] for a, b in keep], dim=1)

    return take


def _source(key: str, d: _Dims, layout: List[Tuple[int, int]]) -> Tuple[str, Optional[Transform]]:
    """The reference key (and slicing) that our parameter ``key`` comes from."""
    parts = key.split(".")
    if parts[0] == "patch_embeds":
        m, sub, param = int(parts[1]), parts[2], parts[3]
        return f"patch_embed_{_MODALITIES[m]}.{_PATCH_EMBED_PARTS[sub]}.{param}", None
    if parts[0] == "fusion_embeds":
        mod = _MODALITIES[int(parts[1])]
        sub, param = parts[2], parts[-1]
        if d.clip_embed_dim is None:  # no-CLIP layout: fusion_embeds are plain patch embeddings
            return f"patch_embed_{mod}_clip.{_PATCH_EMBED_PARTS[sub]}.{param}", None
        if sub == "to_rgb":
            return f"{_TOP}conv_{mod}.{param}", None
        if sub == "proj":
            return f"linear_{mod}.{param}", None
        if sub == "expand":
            return f"conv_{mod}.{param}", None
        if sub == "patch_embed":
            return f"patch_embed_{mod}_clip.{_PATCH_EMBED_PARTS[parts[3]]}.{param}", None
    if parts[0] == "layers":
        j, b = layout[int(parts[1])]
        block, rest = parts[2], ".".join(parts[3:])
        if block == "fused":
            return f"layers_z.{j}.{b}.{rest}", None
        prefix = f"layers_{'x' if block == 'cross1' else 'y'}.{j}.{b}."
        r, n = d.dt_rank, d.d_state
        if rest == "op.x_proj_weight":  # Δ and C rows of the stream's own projection
            src = prefix + "op.x_proj_weight_hsi"
            return src, _x_proj_rows(src, d, [(0, r), (r + n, r + 2 * n)])
        if rest == "op.B_proj_weight_fused":  # B rows of the fused stream's projection
            src = prefix + "op.x_proj_weight_lidar"
            return src, _x_proj_rows(src, d, [(r, r + n)])
        return prefix + _CROSS_RENAMES.get(rest, rest), None
    if parts[0] in _HEADS:
        return f"{_HEADS[parts[0]]}.{_HEAD_PARTS[parts[1]]}.{parts[2]}", None
    raise AssertionError(f"no reference source known for {key!r}")  # pragma: no cover


def _dead_z_scan(d: _Dims, layout: List[Tuple[int, int]]) -> Tuple[List[str], List[str]]:
    """Reference keys dropped whole, and descriptions of dropped slices, of the discarded z scans."""
    whole, slices = [], []
    r, n = d.dt_rank, d.d_state
    for stream in "xy":
        for j, b in layout:
            p = f"layers_{stream}.{j}.{b}.op."
            whole += [p + "dt_projs_weight_lidar", p + "dt_projs_bias_lidar", p + "Ds_lidar"]
            slices += [
                f"{p}x_proj_weight_hsi[:, {r}:{r + n}]",
                f"{p}x_proj_weight_lidar[:, 0:{r}]",
                f"{p}x_proj_weight_lidar[:, {r + n}:{r + 2 * n}]",
            ]
    return whole, slices


def _model_args(d: _Dims) -> Dict[str, Any]:
    args: Dict[str, Any] = {
        "in_chans": [d.c1, d.c2],
        "num_classes": d.num_classes,
        "embed_dim": d.embed_dim,
        "depth": d.depth,
        "d_state": d.d_state,
        "ssm_ratio": d.ssm_ratio,
        "dt_rank": d.dt_rank,
        "d_conv": d.d_conv,
        "mlp_ratio": d.mlp_ratio,
    }
    if d.clip_embed_dim is None:
        args["clip_model"] = None
    else:
        args["img_size"] = d.img_size
        if d.clip_embed_dim == _REFERENCE_CLIP_EMBED_DIM:
            args["clip_model"] = REFERENCE_CLIP_MODEL
            args["clip_pretrained"] = REFERENCE_CLIP_PRETRAINED
    return args


def _match_architecture(args: Mapping[str, Any], clip_embed_dim: Optional[int]) -> str:
    """The first registered variant whose architecture settings equal ``args``, else the fallback."""
    from ..models import get_model_config, list_model_configs

    for name in list_model_configs():
        cfg = get_model_config(name)["model_args"]
        dt_rank = cfg.get("dt_rank", "auto")
        if dt_rank == "auto":
            dt_rank = math.ceil(cfg.get("embed_dim", 384) / 16)
        same = (
            cfg.get("embed_dim", 384) == args["embed_dim"]
            and cfg.get("depth", 9) == args["depth"]
            and cfg.get("d_state", 16) == args["d_state"]
            and float(cfg.get("ssm_ratio", 2.0)) == args["ssm_ratio"]
            and dt_rank == args["dt_rank"]
            and cfg.get("d_conv", 3) == args["d_conv"]
            and float(cfg.get("mlp_ratio", 4.0)) == args["mlp_ratio"]
        )
        if clip_embed_dim is None:
            same = same and cfg.get("clip_model", REFERENCE_CLIP_MODEL) is None
        else:
            same = (same and cfg.get("clip_model", REFERENCE_CLIP_MODEL) == args.get("clip_model")
                    and cfg.get("img_size", 32) == args["img_size"])
        if same:
            return name
    return FALLBACK_ARCHITECTURE


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def convert_reference_checkpoint(
    checkpoint: Union[PathLike, Mapping[str, Any]], *, strict: bool = True
) -> ConvertedCheckpoint:
    """Convert a checkpoint of the reference implementation to this package's layout.

    Args:
        checkpoint: a path to the reference's ``torch.save`` file (read with
            ``torch.load(weights_only=True)``, never by general unpickling) or to a safetensors
            file (a bare VSSM state dict, or keys prefixed ``model_dict.`` / ``conv_hsi.`` /
            ``conv_lidar.``), or the already-loaded dict: ``{"model_dict": ..., "conv_hsi": ...,
            "conv_lidar": ...}`` (other top-level entries are ignored) or a bare VSSM state dict.
        strict: reference tensors that map to nothing (and are not known dead weights) raise a
            ValueError; with ``strict=False`` they only warn. Missing or mis-shaped tensors
            always raise.

    Returns:
        a :class:`ConvertedCheckpoint` (tensors are copies; the input is not modified).

    Raises:
        ValueError: the file is not a weights-only checkpoint, a tensor is missing or has a
            shape inconsistent with the others, or (strict) there are unknown tensors.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = _read_file(Path(checkpoint))
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path or a dict, got {type(checkpoint).__name__}")
    ref, ignored = _split_checkpoint(checkpoint)

    layout = _block_layout(ref)
    dims = _infer_dims(ref, layout)
    expected = _expected_shapes(dims)

    state: Dict[str, Tensor] = {}
    used, missing, bad_shapes = set(), [], []
    for key, shape in expected.items():
        src, transform = _source(key, dims, layout)
        if src not in ref:
            missing.append(_display(src))
            continue
        used.add(src)
        value = ref[src]
        if transform is not None:
            value = transform(value)  # raises on an inconsistent shape, naming the tensor
        if value.shape != shape:
            bad_shapes.append(f"{_display(src)}: got {tuple(value.shape)}, expected {tuple(shape)} (for {key})")
            continue
        state[key] = value.detach().clone()
    if missing:
        raise ValueError(
            f"reference checkpoint is missing {len(missing)} expected key(s): " + ", ".join(missing)
        )
    if bad_shapes:
        raise ValueError(
            "reference tensors with shapes inconsistent with the inferred architecture "
            f"(embed_dim={dims.embed_dim}, d_inner={dims.d_inner}, d_state={dims.d_state}, "
            f"dt_rank={dims.dt_rank}, in_chans=({dims.c1}, {dims.c2}), num_classes={dims.num_classes}):\n  "
            + "\n  ".join(bad_shapes)
        )

    dead_whole, dead_slices = _dead_z_scan(dims, layout)
    dropped = [k for k in dead_whole if k in ref] + dead_slices
    unknown = sorted(set(ref) - used - set(dead_whole))
    if unknown:
        message = (
            f"{len(unknown)} reference tensor(s) have no counterpart in this package's M3amba: "
            + ", ".join(_display(k) for k in unknown)
        )
        if strict:
            raise ValueError(message + " (pass strict=False to convert anyway, dropping them)")
        warnings.warn(message + "; they are dropped", stacklevel=2)

    args = _model_args(dims)
    if dims.clip_embed_dim is not None and dims.clip_embed_dim != _REFERENCE_CLIP_EMBED_DIM:
        warnings.warn(
            f"the CLIP adapters take {dims.clip_embed_dim}-dim embeddings, not the {_REFERENCE_CLIP_EMBED_DIM} of the "
            "reference's ViT-B/32: the CLIP tower is not known, pass clip_model=... when building the model",
            stacklevel=2,
        )
    return ConvertedCheckpoint(
        state_dict=state, model_args=args, dropped=dropped,
        architecture=_match_architecture(args, dims.clip_embed_dim),
        clip_embed_dim=dims.clip_embed_dim, ignored=ignored,
    )


def save_converted(converted: ConvertedCheckpoint, out_dir: PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (both atomically).

    ``config.json`` holds ``architecture``, ``model_args`` (so that
    ``m3amba.create_model(architecture, **model_args)`` rebuilds the model), ``clip_embed_dim``
    and the list of ``dropped`` reference tensors. Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict_file(converted.state_dict, out / WEIGHTS_FILE, metadata={
        "format": "pt", "architecture": converted.architecture, "converted_from": "kaka-Cao/M3amba",
    })
    config = {
        "architecture": converted.architecture,
        "model_args": converted.model_args,
        "clip_embed_dim": converted.clip_embed_dim,
        "converted_from": "reference implementation github.com/kaka-Cao/M3amba (arXiv 2503.06446)",
        "dropped": converted.dropped,
    }
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{CONFIG_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / CONFIG_FILE)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def load_converted(out_dir: PathLike, **overrides: Any) -> torch.nn.Module:
    """Build the model described by ``out_dir/config.json`` and load ``model.safetensors`` strictly.

    Args:
        out_dir: a folder written by :func:`save_converted`.
        **overrides: keyword arguments for ``m3amba.create_model`` that replace the saved
            ``model_args`` (e.g. ``scan_backend``, ``drop_path_rate``).

    CLIP checkpoints build the frozen CLIP tower named in the config (OpenAI ViT-B/32 via
    open_clip), which needs its pretrained weights: offline, pass ``clip_pretrained`` as a local
    open_clip weights file, or ``clip_model``/``clip_pretrained=None`` for a tower you do not
    use (then always call the model with precomputed ``clip_embeds``). Checkpoints whose CLIP
    width is not 512 require a ``clip_model`` override with that embedding width.

    Returns:
        the model (in training mode, as ``create_model`` returns it).

    Raises:
        ValueError: the CLIP tower would not fit the adapters.
        m3amba.CheckpointMismatchError: the weights do not fit the built model.
    """
    from .._builder import create_model

    out = Path(out_dir)
    config = json.loads((out / CONFIG_FILE).read_text())
    args = {**config["model_args"], **overrides}
    clip_dim = config.get("clip_embed_dim")
    if clip_dim is not None and "clip_model" not in args:
        raise ValueError(
            f"{out / CONFIG_FILE}: the CLIP adapters take {clip_dim}-dim embeddings and no CLIP tower is recorded; "
            "pass clip_model=<open_clip model name or config dict with that embedding width>"
        )
    model = create_model(config["architecture"], **args)
    tower = getattr(model, "clip_encoder", None)
    if clip_dim is not None and (tower is None or tower.embed_dim != clip_dim):
        got = "no CLIP tower" if tower is None else f"a CLIP tower with {tower.embed_dim}-dim embeddings"
        raise ValueError(
            f"the converted CLIP adapters take {clip_dim}-dim embeddings, but clip_model={args.get('clip_model')!r} "
            f"gives {got}"
        )
    if clip_dim is None and tower is not None:
        raise ValueError("the converted checkpoint has no CLIP adapters: do not override clip_model")
    load_checkpoint(model, out / WEIGHTS_FILE)
    return model
