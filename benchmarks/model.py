"""End-to-end throughput and memory of M3amba (and, optionally, of the reference implementation).

    python benchmarks/model.py --out model.json [--reference-dir DIR] [--mamba-sdist SDIST]

Measures, on one CUDA device, with CUDA events (median of repeated runs after warm-up):

* inference at batch 64, fp32 and bf16 autocast, CLIP tower included for our model, and the levers
  one at a time: scan backend, ``torch.compile`` of the trunk layers (``M3amba.compile_layers``);
* a training step (three-head cross-entropy + AdamW) at batch 16 and 64, fp32 and bf16, with peak
  memory; for ours also compiled, with 0 / some / all trunk layers gradient-checkpointed;
* batch-1 latency;
* a Houston-2013-sized scene (349 x 1905, 144 + 1 bands) classified densely with overlapping windows
  (streamed band by band, windows cut on the GPU);
* agreement: the fp32 path's logits against every faster path on one fixed batch.

With ``--reference-dir`` (a local checkout of github kaka-Cao/M3amba; never committed here), the same
model-level measurements of the reference, its scan served by mamba-ssm's kernel (forward type v01,
CLIP embeddings given as inputs, as its code takes them), in the same run. Our CLIP tower is a
randomly initialised ViT-B/32 (same cost as the pretrained one; no weights can be downloaded here).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import m3amba  # noqa: E402
from m3amba.ops.selective_scan import available_backends, get_backend_name  # noqa: E402
from scan import time_cuda  # noqa: E402  (benchmarks/scan.py: CUDA-event median)

C1, C2, K, S = 144, 1, 15, 32


def cuda_time(fn, warmup=3, repeats=10):
    return time_cuda(fn, warmup=warmup, repeats=repeats)[0]


def autocast(dtype):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")


def batch(n, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, C1, S, S, device="cuda", generator=g), torch.randn(n, C2, S, S, device="cuda", generator=g),
            torch.randint(0, K, (n, S, S), device="cuda", generator=g))


def log(*items):
    print(*items, flush=True)


def _guard(out, key, fn):
    """Run one measurement; record OOM / errors instead of aborting the whole benchmark."""
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fn()
    except torch.OutOfMemoryError:
        out[f"{key}_error"] = "out of memory"
    except Exception as exc:  # a lever that fails is reported, the rest still runs
        out[f"{key}_error"] = f"{type(exc).__name__}: {exc}"[:500]
        traceback.print_exc()
    finally:
        torch.cuda.empty_cache()
    log(key, {k: v for k, v in out.items() if k.startswith(key)})


def infer(out, key, forward, n=64, repeats=10):
    x1, x2, _ = batch(n)

    def go():
        ms = cuda_time(lambda: forward(x1, x2), repeats=repeats)
        out[f"{key}_ms"] = ms
        out[f"{key}_patches_s"] = n * 1e3 / ms
    _guard(out, key, go)


def train(out, key, forward_all, params, n, dtype, repeats=10):
    # the timed optimiser steps change the weights: put them back afterwards, so that agreement
    # checks made later compare the same model
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)
    x1, x2, y = batch(n)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(dtype):
            logits = forward_all(x1, x2)
            loss = sum(F.cross_entropy(lg.float(), y) for lg in logits)
        loss.backward()
        opt.step()

    def go():
        ms = cuda_time(step, warmup=2, repeats=repeats)
        out[f"{key}_ms"] = ms
        out[f"{key}_patches_s"] = n * 1e3 / ms
        out[f"{key}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    _guard(out, key, go)
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, v in zip(params, saved):
            p.copy_(v)


def measure(name, module, forward_all, repeats=10):
    """Measurements common to ours and the reference; forward_all(x1, x2) -> three logits."""
    out = {"model": name}

    def inference(dtype):
        def fwd(a, b):
            with torch.inference_mode(), autocast(dtype):
                return forward_all(a, b)
        return fwd
    module.eval()
    for dtype in ("fp32", "bf16"):
        infer(out, f"infer_b64_{dtype}", inference(dtype), repeats=repeats)
    infer(out, "infer_b1_fp32", inference("fp32"), n=1, repeats=repeats * 3)
    module.train()
    params = list(module.parameters())
    for n in (16, 64):
        for dtype in ("fp32", "bf16"):
            train(out, f"train_b{n}_{dtype}", forward_all, params, n, dtype, repeats)
    return out


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def ours(args):
    """Our model, eager, default settings: the measurements the reference also gets."""
    model = m3amba.create_model(args.model, in_chans=(C1, C2), num_classes=K, clip_pretrained=None).cuda()
    res = measure(args.model, model, lambda a, b: model.forward_all(a, b)[:3], args.repeats)
    res["scan_backend"] = get_backend_name(torch.device("cuda"))
    res["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return res, model


def levers(model, args):
    """Each speed lever on its own, and agreement of every faster path with the fp32 eager path."""
    res, agreement = {}, {}
    model.eval()
    ref_x1, ref_x2, _ = batch(64, seed=7)
    with torch.inference_mode():
        reference_logits = model(ref_x1, ref_x2).float()  # the fp32 path, default backend

    def bf16_forward(a, b):
        with torch.inference_mode(), autocast("bf16"):
            return model(a, b)

    def train_all(a, b):
        return model.forward_all(a, b)[:3]

    for backend in [b for b in ("triton", "triton_mamba", "mamba", "torch") if b in available_backends(torch.device("cuda"))]:
        model.set_scan_backend(backend)
        if backend != "torch":  # the pure-PyTorch scan is the fallback, not a lever (see scan table)
            infer(res, f"infer_b64_bf16_scan_{backend}", bf16_forward, repeats=args.repeats)
        with torch.inference_mode():
            agreement[f"fp32_scan_{backend}"] = rel_l2(model(ref_x1, ref_x2), reference_logits)
        agreement[f"bf16_scan_{backend}"] = rel_l2(bf16_forward(ref_x1, ref_x2), reference_logits)
    model.set_scan_backend(None)
    model.train()
    model.set_grad_checkpointing(True)
    train(res, "train_b64_bf16_ckpt9", train_all, list(model.parameters()), 64, "bf16", args.repeats)
    model.set_grad_checkpointing(False)

    # torch.compile, one trunk layer compiled and shared by all layers
    model.compile_layers()
    model.eval()
    t0 = time.perf_counter()
    bf16_forward(ref_x1, ref_x2)
    res["compile_inference_s"] = time.perf_counter() - t0
    infer(res, "infer_b64_bf16_compiled", bf16_forward, repeats=args.repeats)
    agreement["bf16_compiled"] = rel_l2(bf16_forward(ref_x1, ref_x2), reference_logits)
    with torch.inference_mode(), autocast("fp32"):
        agreement["fp32_compiled"] = rel_l2(model(ref_x1, ref_x2), reference_logits)
    res["bf16_compiled_argmax_agreement"] = float(
        (bf16_forward(ref_x1, ref_x2).float().argmax(1) == reference_logits.argmax(1)).float().mean())
    model.train()
    train(res, "train_b16_bf16_compiled", train_all, list(model.parameters()), 16, "bf16", args.repeats)
    for ckpt in args.ckpt_layers:
        model.set_grad_checkpointing(ckpt)
        train(res, f"train_b64_bf16_compiled_ckpt{ckpt}", train_all, list(model.parameters()), 64, "bf16",
              args.repeats)
    model.set_grad_checkpointing(False)
    res["agreement_rel_l2_vs_fp32"] = agreement
    log("agreement", agreement)
    return res


def profile(model, forward, path):
    """Top CUDA kernels of one bf16 forward at batch 64 (for finding what to optimise next)."""
    from torch.profiler import ProfilerActivity, profile as prof
    x1, x2, _ = batch(64)
    forward(x1, x2)
    with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        forward(x1, x2)
        torch.cuda.synchronize()
    Path(path).write_text(p.key_averages().table(sort_by="cuda_time_total", row_limit=40))


def reference(args):
    """Load the reference VSSM from a local checkout (fvcore, only used for FLOP counting there, is stubbed)."""
    for mod in ("fvcore", "fvcore.nn"):
        stub = types.ModuleType(mod)
        stub.FlopCountAnalysis = stub.flop_count_str = stub.flop_count = stub.parameter_count = None
        sys.modules.setdefault(mod, stub)
    net = Path(args.reference_dir) / "net"
    sys.path.insert(0, str(net))
    spec = importlib.util.spec_from_file_location("ref_net", net / "net_vmamba_v4.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    model = ref.VSSM(input_shape=(S, S), patch_size=1, in_chans_hsi=C1, in_chans_lidar=C2, num_classes=K,
                     forward_type="v01").cuda()
    g = torch.Generator(device="cuda").manual_seed(1)
    e1, e2 = (torch.randn(64, 512, device="cuda", generator=g) for _ in range(2))

    def forward_all(a, b):
        n = a.shape[0]
        return model(a, b, e1[:n], e2[:n])

    res = measure("reference (mamba-ssm v01, CLIP embeddings given)", model, forward_all, repeats=args.repeats)
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


def full_scene(model, args):
    """Dense classification of a Houston-2013-sized random scene with overlapping windows (bf16 autocast)."""
    import numpy as np

    from m3amba.data.windows import sliding_window_logits
    rng = np.random.default_rng(0)
    h, w = 349, 1905
    x1 = rng.standard_normal((C1, h, w), dtype=np.float32)
    x2 = rng.standard_normal((C2, h, w), dtype=np.float32)
    model.eval()

    def predict(a, b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(a, b)

    def run(a, b):
        return sliding_window_logits(predict, a, b, K, window=S, stride=args.stride,
                                     batch_size=args.scene_batch, device="cuda", pad_last_batch=True)
    with torch.inference_mode():
        run(x1[:, :96, :96], x2[:, :96, :96])  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        logits, counts = run(x1, x2)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert logits.shape == (K, h, w) and int(counts.min()) >= 1
    n_windows = int(counts.sum()) // (S * S)
    return {"scene": f"{h}x{w}, {C1}+{C2} bands", "window": S, "stride": args.stride, "windows": n_windows,
            "batch": args.scene_batch, "seconds": seconds, "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
            "scene_input_gib": (x1.nbytes + x2.nbytes) / 2**30}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="m3amba_base")
    p.add_argument("--reference-dir", default=None)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--stride", type=int, default=24)
    p.add_argument("--scene-batch", type=int, default=64, help="windows per batch (64: the compiled shape)")
    p.add_argument("--ckpt-layers", type=lambda t: [int(v) for v in t.split(",")], default=[0, 3, 9],
                   help="gradient-checkpointed layer counts to try at batch 64 (compiled)")
    p.add_argument("--profile", default=None, help="write a kernel profile of one bf16 forward to this file")
    p.add_argument("--mamba-sdist", default=None, help="build mamba-ssm's scan kernel first")
    p.add_argument("--out", default="model_benchmark.json")
    args = p.parse_args()
    if args.mamba_sdist:
        from build_mamba_scan import build
        build(args.mamba_sdist)
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "args": vars(args)}
    save = lambda: Path(args.out).write_text(json.dumps(result, indent=1))
    ours_res, model = ours(args)
    result["ours"] = ours_res
    save()
    if args.reference_dir:
        model.cpu()
        torch.cuda.empty_cache()
        result["reference"] = reference(args)
        save()
        model.cuda()
    result["levers"] = levers(model, args)
    save()
    try:
        result["full_scene"] = full_scene(model, args)
    except Exception as exc:
        result["full_scene"] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    log("full_scene", result["full_scene"])
    if args.profile:
        def bf16_forward(a, b):
            with torch.inference_mode(), autocast("bf16"):
                return model(a, b)
        profile(model, bf16_forward, args.profile)
    if args.reference_dir:
        r = result["reference"]
        best = {**ours_res, **result["levers"]}
        result["ratios_same_setting"] = {k: ours_res[k] / r[k] for k in ours_res if k.endswith("patches_s") and r.get(k)}
        ref_infer = max(v for k, v in r.items() if k.startswith("infer_b64") and k.endswith("patches_s"))
        ref_train = max((v for k, v in r.items() if k.startswith("train") and k.endswith("patches_s")), default=None)
        ours_infer = max(v for k, v in best.items() if k.startswith("infer_b64") and k.endswith("patches_s"))
        ours_train = max(v for k, v in best.items() if k.startswith("train") and k.endswith("patches_s"))
        result["ratios_best"] = {"inference": ours_infer / ref_infer,
                                 "training": ours_train / ref_train if ref_train else None}
        log(json.dumps({"same_setting": result["ratios_same_setting"], "best": result["ratios_best"]}, indent=1))
    save()


if __name__ == "__main__":
    main()
