"""Conversion of reference-implementation (kaka-Cao/M3amba) checkpoints.

The reference layout is re-created here independently of the converter: an inverse mapping
(ours → reference) for round trips, and a functional forward pass written directly against the
reference's tensor names and semantics (both streams scanned symmetrically, z's result thrown
away), which the converted model must reproduce in float64.
"""
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import m3amba
from m3amba.convert import ConvertedCheckpoint, convert_reference_checkpoint, load_converted, save_converted
from m3amba.ops.selective_scan import selective_scan_fn

#: tiny offline open_clip tower with 32-dim embeddings
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}}
IN_CHANS = (5, 2)
NUM_CLASSES = 4
EMBED_DIM = 32
DEPTH = 2
D_STATE = 8
IMG = 32  # the reference reshapes the CLIP projection to 32 x 32
MODS = ("hsi", "lidar")

# the tiny CLIP tower is 32-dim, not the reference's 512: conversion warns about it (asserted once below)
pytestmark = pytest.mark.filterwarnings("ignore:the CLIP adapters take 32-dim embeddings:UserWarning")


def build_ours(clip=True, **kwargs):
    args = dict(in_chans=IN_CHANS, num_classes=NUM_CLASSES, embed_dim=EMBED_DIM, depth=DEPTH, d_state=D_STATE,
                img_size=IMG, drop_path_rate=0.0)
    if clip:
        args.update(clip_model=dict(TINY_CLIP), clip_pretrained=None)
        name = "m3amba_tiny"
    else:
        name = "m3amba_tiny_noclip"
    args.update(kwargs)
    return m3amba.create_model(name, **args)


# ------------------------------------------------------------------------------------------
# ours → reference, written independently of m3amba.convert
# ------------------------------------------------------------------------------------------
def to_reference(ours, dt_rank, d_state, seed=0):
    """Reference-format checkpoint dict from our state dict; the dead z-scan tensors get random values."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    r, n = dt_rank, d_state
    model_dict, top = {}, {"conv_hsi": {}, "conv_lidar": {}}
    pe = {"proj": "0", "norm": "2"}
    clip = any(".to_rgb." in k for k in ours)
    for key, value in ours.items():
        p = key.split(".")
        if p[0] == "patch_embeds":
            model_dict[f"patch_embed_{MODS[int(p[1])]}.{pe[p[2]]}.{p[3]}"] = value
        elif p[0] == "fusion_embeds":
            mod = MODS[int(p[1])]
            if not clip:
                model_dict[f"patch_embed_{mod}_clip.{pe[p[2]]}.{p[3]}"] = value
            elif p[2] == "to_rgb":
                top[f"conv_{mod}"][p[3]] = value
            elif p[2] == "proj":
                model_dict[f"linear_{mod}.{p[3]}"] = value
            elif p[2] == "expand":
                model_dict[f"conv_{mod}.{p[3]}"] = value
            else:
                model_dict[f"patch_embed_{mod}_clip.{pe[p[3]]}.{p[4]}"] = value
        elif p[0] == "layers":
            i, block, rest = p[1], p[2], ".".join(p[3:])
            if block == "fused":
                model_dict[f"layers_z.0.{i}.{rest}"] = value
                continue
            pre = f"layers_{'x' if block == 'cross1' else 'y'}.0.{i}.op."
            if rest == "op.x_proj_weight":  # (K, R + N, Di): Δ rows then C rows
                k, _, di = value.shape
                model_dict[pre + "x_proj_weight_hsi"] = torch.cat([value[:, :r], rnd(k, n, di), value[:, r:]], 1)
            elif rest == "op.B_proj_weight_fused":  # (K, N, Di)
                k, _, di = value.shape
                model_dict[pre + "x_proj_weight_lidar"] = torch.cat([rnd(k, r, di), value, rnd(k, n, di)], 1)
            elif rest in ("op.dt_projs_weight", "op.dt_projs_bias", "op.Ds"):
                model_dict[pre + rest[3:] + "_hsi"] = value
                model_dict[pre + rest[3:] + "_lidar"] = rnd(*value.shape)
            elif rest == "op.A_logs":
                model_dict[pre + "A_logs_hsi"] = value
            elif rest == "op.A_logs_fused":
                model_dict[pre + "A_logs_lidar"] = value
            else:
                model_dict[pre[: -len("op.")] + rest] = value
        else:
            head = {"head_m1": "classifier_hsi", "head_m2": "classifier_lidar", "head": "classifier_add"}[p[0]]
            model_dict[f"{head}.{ {'norm': 'norm', 'fc': 'head'}[p[1]] }.{p[2]}"] = value
    ckpt = {"model_dict": model_dict}
    if clip:
        ckpt.update(top)
    return ckpt


def randomize(ckpt, seed=1):
    """Replace every reference tensor by random float64 values, scaled sensibly."""
    g = torch.Generator().manual_seed(seed)

    def rand_like(name, t):
        x = torch.randn(t.shape, generator=g, dtype=torch.float64)
        if name.endswith(("norm.weight", "norm2.weight", ".2.weight")):
            x = 1 + 0.2 * x
        elif "A_logs" in name:
            x = torch.log(0.3 + 6 * torch.rand(t.shape, generator=g, dtype=torch.float64))
        elif "dt_projs_bias" in name:
            x = 0.5 * x - 2.5
        elif "Ds" in name or name.endswith("bias"):
            x = 0.5 * x
        elif t.dim() >= 2:
            fan_in = t[0].numel() if t.dim() != 3 else t.shape[-1]
            x = x / math.sqrt(fan_in)
        return x.double()

    out = {"model_dict": {k: rand_like(k, v) for k, v in ckpt["model_dict"].items()}}
    for top in ("conv_hsi", "conv_lidar"):
        if top in ckpt:
            out[top] = {k: rand_like(top + "." + k, v) for k, v in ckpt[top].items()}
    return out


def dead_keys(ckpt):
    return sorted(k for k in ckpt["model_dict"] if k.endswith(("dt_projs_weight_lidar", "dt_projs_bias_lidar", "Ds_lidar")))


# ------------------------------------------------------------------------------------------
# the reference's forward pass, functionally, on the reference-format dict
# ------------------------------------------------------------------------------------------
class ReferenceForward:
    def __init__(self, ckpt):
        self.sd = ckpt["model_dict"]
        self.top = ckpt
        z0 = self.sd["layers_z.0.0.op.dt_projs_weight"]
        self.K, self.Di, self.R = z0.shape
        self.N = self.sd["layers_z.0.0.op.A_logs"].shape[1]

    def ln(self, x, p):
        return F.layer_norm(x, (x.shape[-1],), self.sd[p + ".weight"], self.sd[p + ".bias"], eps=1e-5)

    def linear(self, x, p):
        return F.linear(x, self.sd[p + ".weight"], self.sd.get(p + ".bias"))

    def patch_embed(self, x, p):
        return self.ln(F.conv2d(x, self.sd[p + ".0.weight"], self.sd[p + ".0.bias"]).permute(0, 2, 3, 1), p + ".2")

    @staticmethod
    def _orders(h, w):
        # sequence position -> row-major pixel index, for the 4 scan directions
        rows = torch.arange(h * w)
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cols = (hh * w + ww).t().reshape(-1)  # column-major: position w*H + h holds pixel (h, w)
        return [rows, cols, rows.flip(0), cols.flip(0)]

    def cross_scan(self, x):  # (B, C, H, W) -> (B, 4, C, L)
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        return torch.stack([flat[:, :, idx] for idx in self._orders(h, w)], dim=1)

    def cross_merge(self, ys, h, w):  # (B, 4, C, L) -> (B, C, L) row-major
        out = torch.zeros_like(ys[:, 0])
        for k, idx in enumerate(self._orders(h, w)):
            out.index_add_(2, idx, ys[:, k])
        return out

    def branch(self, op, t):
        u, gate = self.linear(t, op + "in_proj").chunk(2, dim=-1)
        w = self.sd[op + "conv2d.weight"]
        u = F.conv2d(u.permute(0, 3, 1, 2), w, self.sd[op + "conv2d.bias"], padding=(w.shape[-1] - 1) // 2, groups=w.shape[0])
        return F.silu(u), F.silu(gate)

    def scan(self, xs, dt_low, dt_w, dt_b, A, Bs, Cs, Ds):
        b, k, d, length = xs.shape
        dts = torch.einsum("bkrl,kdr->bkdl", dt_low, dt_w)
        y = selective_scan_fn(xs.reshape(b, k * d, length), dts.reshape(b, k * d, length), A, Bs, Cs, Ds,
                              delta_bias=dt_b.reshape(-1), delta_softplus=True, backend="reference")
        return y.reshape(b, k, d, length)

    def finish(self, op, y, gate, h, w):
        b, d, _ = y.shape
        y = y.transpose(1, 2).reshape(b, h, w, d)
        return self.linear(self.ln(y, op + "out_norm") * gate, op + "out_proj")

    def cross_op(self, op, x, z):
        _, h, w, _ = x.shape
        R, N = self.R, self.N
        ux, gx = self.branch(op, x)
        uz, gz = self.branch(op, z)
        xs, zs = self.cross_scan(ux), self.cross_scan(uz)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.sd[op + "x_proj_weight_hsi"])
        z_dbl = torch.einsum("bkdl,kcd->bkcl", zs, self.sd[op + "x_proj_weight_lidar"])
        x_dt, x_B, x_C = torch.split(x_dbl, [R, N, N], dim=2)
        z_dt, z_B, z_C = torch.split(z_dbl, [R, N, N], dim=2)
        # one A for both scans: the mean of the two streams' A = -exp(A_log)
        A = (-torch.exp(self.sd[op + "A_logs_hsi"]) - torch.exp(self.sd[op + "A_logs_lidar"])) / 2
        # the stream's scan takes B from z; z's scan takes B from the stream
        y_x = self.scan(xs, x_dt, self.sd[op + "dt_projs_weight_hsi"], self.sd[op + "dt_projs_bias_hsi"],
                        A, z_B, x_C, self.sd[op + "Ds_hsi"])
        y_z = self.scan(zs, z_dt, self.sd[op + "dt_projs_weight_lidar"], self.sd[op + "dt_projs_bias_lidar"],
                        A, x_B, z_C, self.sd[op + "Ds_lidar"])
        out_x = self.finish(op, self.cross_merge(y_x, h, w), gx, h, w)
        out_z = self.finish(op, self.cross_merge(y_z, h, w), gz, h, w)
        return out_x, out_z

    def plain_op(self, op, x):
        _, h, w, _ = x.shape
        u, g = self.branch(op, x)
        xs = self.cross_scan(u)
        dt, Bs, Cs = torch.split(torch.einsum("bkdl,kcd->bkcl", xs, self.sd[op + "x_proj_weight"]), [self.R, self.N, self.N], 2)
        A = -torch.exp(self.sd[op + "A_logs"])
        y = self.scan(xs, dt, self.sd[op + "dt_projs_weight"], self.sd[op + "dt_projs_bias"], A, Bs, Cs, self.sd[op + "Ds"])
        return self.finish(op, self.cross_merge(y, h, w), g, h, w)

    def mlp(self, p, x):
        return self.linear(F.gelu(self.linear(x, p + "mlp.fc1")), p + "mlp.fc2")

    def cross_block(self, p, x, z):
        ox, oz = self.cross_op(p + "op.", self.ln(x, p + "norm"), self.ln(z, p + "norm"))
        x_mid, z_mid = x + ox, z + oz
        x_out = x_mid + self.mlp(p, self.ln(x_mid, p + "norm2"))
        z_out = z_mid + self.mlp(p, self.ln(z_mid, p + "norm2"))
        return x_out, z_out  # the reference model keeps only x_out

    def fused_block(self, p, z):
        z = z + self.plain_op(p + "op.", self.ln(z, p + "norm"))
        return z + self.mlp(p, self.ln(z, p + "norm2"))

    def head(self, p, x):
        return F.conv2d(self.ln(x, p + ".norm").permute(0, 3, 1, 2), self.sd[p + ".head.weight"], self.sd[p + ".head.bias"])

    def __call__(self, x1, x2, e1, e2):
        b = x1.shape[0]
        side = math.isqrt(self.sd["linear_hsi.weight"].shape[0])
        grids = []
        for mod, e in zip(MODS, (e1, e2)):
            g = self.linear(e, f"linear_{mod}").reshape(b, -1, side, side)
            g = F.conv2d(g, self.sd[f"conv_{mod}.weight"], self.sd[f"conv_{mod}.bias"])
            grids.append(self.patch_embed(g, f"patch_embed_{mod}_clip"))
        x, y = self.patch_embed(x1, "patch_embed_hsi"), self.patch_embed(x2, "patch_embed_lidar")
        z = grids[0] + grids[1]
        blocks = sorted({int(k.split(".")[2]) for k in self.sd if k.startswith("layers_z.0.")})
        for i in blocks:
            x, _ = self.cross_block(f"layers_x.0.{i}.", x, z)
            y, _ = self.cross_block(f"layers_y.0.{i}.", y, z)
            z = self.fused_block(f"layers_z.0.{i}.", x + y)
        return self.head("classifier_hsi", x), self.head("classifier_lidar", y), self.head("classifier_add", z)

    def clip_rgb(self, x1, x2):
        """The C→3 convs of the top-level entries (what feeds CLIP in the reference's test.py)."""
        return tuple(F.conv2d(x, self.top[f"conv_{m}"]["weight"], self.top[f"conv_{m}"]["bias"]) for m, x in zip(MODS, (x1, x2)))


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ours_clip():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_ours(clip=True)


@pytest.fixture(scope="module")
def ref_ckpt(ours_clip):
    op = ours_clip.layers[0].cross1.op
    return to_reference(ours_clip.state_dict(), op.dt_rank, op.d_state)


@pytest.fixture(scope="module")
def random_ref():
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = build_ours(clip=True)
    op = template.layers[0].cross1.op
    return randomize(to_reference(template.state_dict(), op.dt_rank, op.d_state))


# ------------------------------------------------------------------------------------------
# 1. round trip of our own weights
# ------------------------------------------------------------------------------------------
def test_round_trip_is_exact_and_dead_tensors_are_dropped(ours_clip, ref_ckpt):
    with pytest.warns(UserWarning, match="32-dim embeddings, not the 512"):
        conv = convert_reference_checkpoint(ref_ckpt)
    assert isinstance(conv, ConvertedCheckpoint)
    ours = ours_clip.state_dict()
    assert set(conv.state_dict) == set(ours)
    for k, v in ours.items():
        assert conv.state_dict[k].dtype == v.dtype and torch.equal(conv.state_dict[k], v), k
    # every whole dead tensor is reported, and nothing else whole
    whole = [d for d in conv.dropped if "[" not in d]
    assert sorted(whole) == dead_keys(ref_ckpt) and len(whole) == 2 * DEPTH * 3
    r, n = ours_clip.layers[0].cross1.op.dt_rank, D_STATE
    for s in "xy":
        for i in range(DEPTH):
            p = f"layers_{s}.0.{i}.op."
            assert f"{p}x_proj_weight_hsi[:, {r}:{r + n}]" in conv.dropped
            assert f"{p}x_proj_weight_lidar[:, 0:{r}]" in conv.dropped
            assert f"{p}x_proj_weight_lidar[:, {r + n}:{r + 2 * n}]" in conv.dropped
    assert conv.model_args == {
        "in_chans": list(IN_CHANS), "num_classes": NUM_CLASSES, "embed_dim": EMBED_DIM, "depth": DEPTH,
        "d_state": D_STATE, "ssm_ratio": 2.0, "dt_rank": r, "d_conv": 3, "mlp_ratio": 4.0, "img_size": IMG,
    }
    assert conv.clip_embed_dim == TINY_CLIP["embed_dim"] and conv.uses_clip
    assert conv.architecture == "m3amba_base"  # no registered variant is this small
    # a DataParallel-wrapped state dict converts the same
    wrapped = {"model_dict": {"module." + k: v for k, v in ref_ckpt["model_dict"].items()},
               "conv_hsi": ref_ckpt["conv_hsi"], "conv_lidar": ref_ckpt["conv_lidar"]}
    conv_wrapped = convert_reference_checkpoint(wrapped)
    assert all(torch.equal(conv_wrapped.state_dict[k], v) for k, v in ours.items())
    # the converted tensors do not alias the input
    before = ref_ckpt["model_dict"]["classifier_add.head.weight"].clone()
    conv.state_dict["head.fc.weight"].add_(1)
    assert torch.equal(ref_ckpt["model_dict"]["classifier_add.head.weight"], before)


def test_no_clip_layout_round_trips_and_matches_a_registered_variant():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = build_ours(clip=False, embed_dim=96, d_state=16)
    op = ours.layers[0].cross1.op
    ref = to_reference(ours.state_dict(), op.dt_rank, op.d_state)
    assert "linear_hsi.weight" not in ref["model_dict"] and "conv_hsi" not in ref
    conv = convert_reference_checkpoint(ref)
    assert not conv.uses_clip and conv.model_args["clip_model"] is None
    assert conv.architecture == "m3amba_tiny_noclip"
    sd = ours.state_dict()
    assert set(conv.state_dict) == set(sd) and all(torch.equal(conv.state_dict[k], v) for k, v in sd.items())


# ------------------------------------------------------------------------------------------
# 2. the converted model computes what the reference computes
# ------------------------------------------------------------------------------------------
def _inputs(batch=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, IN_CHANS[0], IMG, IMG, generator=g, dtype=torch.float64)
    x2 = torch.randn(batch, IN_CHANS[1], IMG, IMG, generator=g, dtype=torch.float64)
    e1 = torch.randn(batch, TINY_CLIP["embed_dim"], generator=g, dtype=torch.float64)
    e2 = torch.randn(batch, TINY_CLIP["embed_dim"], generator=g, dtype=torch.float64)
    return x1, x2, e1, e2


@pytest.fixture(scope="module")
def reference_logits(random_ref):
    x1, x2, e1, e2 = _inputs()
    with torch.no_grad():
        return ReferenceForward(random_ref)(x1, x2, e1, e2)


@pytest.fixture(scope="module")
def converted_model(random_ref):
    conv = convert_reference_checkpoint(random_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_ours(clip=True).double()
    model.load_state_dict(conv.state_dict, strict=True)
    return model.eval(), conv


def test_converted_model_matches_the_reference_semantics(converted_model, reference_logits):
    model, _ = converted_model
    x1, x2, e1, e2 = _inputs()
    with torch.no_grad():
        out = model.forward_all(x1, x2, clip_embeds=(e1, e2))
    diffs = [rel_diff(a, b) for a, b in zip(out[:3], reference_logits)]
    print("max relative difference (m1, m2, fused):", diffs)
    for logits in reference_logits:
        assert logits.shape == (2, NUM_CLASSES, IMG, IMG) and logits.abs().max() > 0.1
    assert max(diffs) < 1e-9, diffs


def _mutated(state, kind):
    s = dict(state)
    for i in range(DEPTH):
        p = f"layers.{i}.cross1.op."
        if kind == "swap_B_and_C":  # C taken from z, B from the stream
            r = s[p + "x_proj_weight"].shape[1] - s[p + "B_proj_weight_fused"].shape[1]
            c_rows = s[p + "x_proj_weight"][:, r:].clone()
            s[p + "x_proj_weight"] = torch.cat([s[p + "x_proj_weight"][:, :r], s[p + "B_proj_weight_fused"]], 1)
            s[p + "B_proj_weight_fused"] = c_rows
        elif kind == "A_not_averaged":
            s[p + "A_logs_fused"] = s[p + "A_logs"]
        elif kind == "z_dt_and_D":
            s[p + "dt_projs_bias"] = s[p + "dt_projs_bias"] + 0.5
            s[p + "Ds"] = -s[p + "Ds"]
    return s


@pytest.mark.parametrize("kind", ["swap_B_and_C", "A_not_averaged", "z_dt_and_D"])
def test_the_equivalence_check_catches_a_wrong_mapping(converted_model, reference_logits, kind):
    model, conv = converted_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrong = build_ours(clip=True).double().eval()
    wrong.load_state_dict(_mutated(conv.state_dict, kind), strict=True)
    x1, x2, e1, e2 = _inputs()
    with torch.no_grad():
        out = wrong.forward_all(x1, x2, clip_embeds=(e1, e2))
    # cross1 only feeds m1 and the fused stream
    assert rel_diff(out.logits_m1, reference_logits[0]) > 1e-4
    assert rel_diff(out.logits_fused, reference_logits[2]) > 1e-4


def test_clip_feed_convs_become_to_rgb(converted_model, random_ref):
    model, _ = converted_model
    x1, x2, _, _ = _inputs()
    ref = ReferenceForward(random_ref)
    r1, r2 = ref.clip_rgb(x1, x2)
    torch.testing.assert_close(model.fusion_embeds[0].to_rgb(x1), r1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.fusion_embeds[1].to_rgb(x2), r2, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# 3. files
# ------------------------------------------------------------------------------------------
def _write_sentinel(path):  # would run if the file were unpickled without weights_only
    Path(path).write_text("code ran")
    return {}


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_write_sentinel, (self.path,))


def test_checkpoint_file_is_read_weights_only(tmp_path, ref_ckpt):
    ckpt = dict(ref_ckpt)
    ckpt["optimizer"] = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    ckpt["epoch"] = 17
    path = tmp_path / "best_weights.pth"
    torch.save(ckpt, path)
    from_file = convert_reference_checkpoint(path)
    from_dict = convert_reference_checkpoint(ref_ckpt)
    assert sorted(from_file.ignored) == ["epoch", "optimizer"]
    assert set(from_file.state_dict) == set(from_dict.state_dict)
    assert all(torch.equal(from_file.state_dict[k], v) for k, v in from_dict.state_dict.items())
    assert from_file.model_args == from_dict.model_args and from_file.dropped == from_dict.dropped

    # the same checkpoint as safetensors (nested keys flattened with a prefix)
    from safetensors.torch import save_file
    flat = {f"model_dict.{k}": v.contiguous() for k, v in ref_ckpt["model_dict"].items()}
    flat.update({f"{top}.{k}": v for top in ("conv_hsi", "conv_lidar") for k, v in ref_ckpt[top].items()})
    save_file(flat, str(tmp_path / "ref.safetensors"))
    from_st = convert_reference_checkpoint(tmp_path / "ref.safetensors")
    assert all(torch.equal(from_st.state_dict[k], v) for k, v in from_dict.state_dict.items())


def test_file_needing_arbitrary_unpickling_is_refused(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model_dict": _Payload(sentinel)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_reference_checkpoint(str(path))
    assert not sentinel.exists()
    with pytest.raises(FileNotFoundError):
        convert_reference_checkpoint(tmp_path / "absent.pth")


# ------------------------------------------------------------------------------------------
# 4. errors
# ------------------------------------------------------------------------------------------
def _copy(ckpt):
    out = {"model_dict": dict(ckpt["model_dict"])}
    for top in ("conv_hsi", "conv_lidar"):
        if top in ckpt:
            out[top] = dict(ckpt[top])
    return out


def test_missing_keys_are_named(ref_ckpt):
    bad = _copy(ref_ckpt)
    del bad["model_dict"]["layers_x.0.1.op.A_logs_lidar"]
    del bad["model_dict"]["classifier_lidar.norm.bias"]
    with pytest.raises(ValueError, match="missing 2 expected") as info:
        convert_reference_checkpoint(bad)
    assert "layers_x.0.1.op.A_logs_lidar" in str(info.value) and "classifier_lidar.norm.bias" in str(info.value)

    bad = _copy(ref_ckpt)
    del bad["conv_lidar"]
    with pytest.raises(ValueError, match=r"conv_lidar\.weight \(top-level 'conv_lidar'"):
        convert_reference_checkpoint(bad, strict=False)

    bad = _copy(ref_ckpt)
    for k in [k for k in bad["model_dict"] if k.startswith("layers_y.0.1.")]:
        del bad["model_dict"][k]
    with pytest.raises(ValueError, match="layers_y lacks"):
        convert_reference_checkpoint(bad)

    with pytest.raises(ValueError, match="not a reference M3amba checkpoint"):
        convert_reference_checkpoint({"epoch": 3, "weights": [1, 2]})


def test_unknown_keys_fail_when_strict_and_warn_otherwise(ref_ckpt):
    bad = _copy(ref_ckpt)
    bad["model_dict"]["layers_x.0.0.op.x_proj_bias_hsi"] = torch.zeros(4, 10)
    bad["conv_hsi"]["running_mean"] = torch.zeros(3)
    with pytest.raises(ValueError, match="2 reference tensor") as info:
        convert_reference_checkpoint(bad)
    assert "layers_x.0.0.op.x_proj_bias_hsi" in str(info.value)
    assert "conv_hsi.running_mean (top-level" in str(info.value)
    with pytest.warns(UserWarning, match="x_proj_bias_hsi"):
        conv = convert_reference_checkpoint(bad, strict=False)
    good = convert_reference_checkpoint(ref_ckpt)
    assert set(conv.state_dict) == set(good.state_dict)
    assert all(torch.equal(conv.state_dict[k], v) for k, v in good.state_dict.items())


def test_bad_shapes_are_explained(ref_ckpt):
    bad = _copy(ref_ckpt)
    w = bad["model_dict"]["layers_y.0.0.op.x_proj_weight_hsi"]
    bad["model_dict"]["layers_y.0.0.op.x_proj_weight_hsi"] = torch.cat([w, w[:, :1]], 1)
    with pytest.raises(ValueError, match=r"layers_y\.0\.0\.op\.x_proj_weight_hsi.*R\+2N"):
        convert_reference_checkpoint(bad)

    bad = _copy(ref_ckpt)
    bad["model_dict"]["layers_z.0.1.mlp.fc2.weight"] = torch.zeros(EMBED_DIM, 7)
    with pytest.raises(ValueError, match=r"layers_z\.0\.1\.mlp\.fc2\.weight: got \(32, 7\), expected \(32, 128\)"):
        convert_reference_checkpoint(bad)

    bad = _copy(ref_ckpt)
    bad["model_dict"]["patch_embed_hsi.0.weight"] = torch.zeros(EMBED_DIM, IN_CHANS[0], 2, 2)
    with pytest.raises(ValueError, match="patch_size=1"):
        convert_reference_checkpoint(bad)

    bad = _copy(ref_ckpt)
    bad["conv_hsi"]["weight"] = torch.zeros(3, IN_CHANS[0] + 1, 1, 1)
    with pytest.raises(ValueError, match=r"conv_hsi\.weight \(top-level 'conv_hsi' entry\): got \(3, 6, 1, 1\)"):
        convert_reference_checkpoint(bad)


# ------------------------------------------------------------------------------------------
# 5. save / load
# ------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path, random_ref):
    # a float32 checkpoint, as the reference saves them
    ref32 = {"model_dict": {k: v.float() for k, v in random_ref["model_dict"].items()},
             **{top: {k: v.float() for k, v in random_ref[top].items()} for top in ("conv_hsi", "conv_lidar")}}
    conv = convert_reference_checkpoint(ref32)
    assert all(v.dtype == torch.float32 for v in conv.state_dict.values())
    out = save_converted(conv, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == conv.architecture and config["model_args"] == conv.model_args
    assert config["clip_embed_dim"] == TINY_CLIP["embed_dim"] and config["dropped"] == conv.dropped

    stored = m3amba.load_state_dict_file(out / "model.safetensors")
    assert set(stored) == set(conv.state_dict)
    assert all(torch.equal(stored[k], v) for k, v in conv.state_dict.items())

    # the CLIP width is not the reference's 512, so no tower is recorded: a clear error, not a download
    with pytest.raises(ValueError, match="pass clip_model"):
        load_converted(out)
    with pytest.raises(ValueError, match="take 32-dim embeddings"):
        load_converted(out, clip_model={**TINY_CLIP, "embed_dim": 24}, clip_pretrained=None)

    model = load_converted(out, clip_model=dict(TINY_CLIP), clip_pretrained=None)
    assert model.state_dict().keys() == conv.state_dict.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in conv.state_dict.items())
    direct = build_ours(clip=True)
    direct.load_state_dict(conv.state_dict, strict=True)
    x1, x2, e1, e2 = (t.float() for t in _inputs())
    with torch.no_grad():
        out_loaded = model.eval().forward_all(x1, x2, clip_embeds=(e1, e2))
        out_direct = direct.eval().forward_all(x1, x2, clip_embeds=(e1, e2))
    for a, b in zip(out_loaded[:3], out_direct[:3]):
        assert torch.equal(a, b)


def test_reference_sized_clip_checkpoint_records_the_vit_b32_tower(tmp_path, ref_ckpt):
    # the reference's CLIP is OpenAI ViT-B/32: 512-dim embeddings onto a 32 x 32 grid
    bad = _copy(ref_ckpt)
    g = torch.Generator().manual_seed(5)
    for mod in MODS:
        bad["model_dict"][f"linear_{mod}.weight"] = torch.randn(IMG * IMG, 512, generator=g)
    conv = convert_reference_checkpoint(bad)
    assert conv.clip_embed_dim == 512
    assert conv.model_args["clip_model"] == "ViT-B-32-quickgelu" and conv.model_args["clip_pretrained"] == "openai"
    save_converted(conv, tmp_path)
    # offline: a random tower of the same name (the weights file still fits, the tower is not stored)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_converted(tmp_path, clip_pretrained=None)
    assert model.clip_encoder.embed_dim == 512
    assert torch.equal(model.fusion_embeds[1].proj.weight, bad["model_dict"]["linear_lidar.weight"])
    # and the registered variant name + model_args rebuild the same architecture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = m3amba.create_model(conv.architecture, **{**conv.model_args, "clip_pretrained": None})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in conv.state_dict.items()}
