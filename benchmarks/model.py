"""End-to-end throughput and memory of M3amba (and, optionally, of the reference implementation).

    python benchmarks/model.py --out model.json [--reference-dir /path/to/M3amba-checkout]

Measures, on one CUDA device, with CUDA events (median of repeated runs after warm-up):
* inference at batch 64 (fp32 and bf16 autocast), CLIP tower included for our model;
* a training step (three-head cross-entropy + AdamW) at batch 16 and 64, fp32 and bf16, with peak memory;
* batch-1 latency;
* a Houston-2013-sized scene (349 x 1905, 144 + 1 bands) classified densely with overlapping windows.
With ``--reference-dir`` (a local checkout of github kaka-Cao/M3amba; never committed here), the same
model-level measurements of the reference, its scan served by mamba-ssm's kernel (forward type v01,
CLIP embeddings given as inputs, as its code takes them), in the same run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import m3amba  # noqa: E402
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


def measure(name, forward_all, params, batches=(16, 64), repeats=10):
    """forward_all(x1, x2) -> three logits; returns a dict of measurements."""
    out = {"model": name}
    for dtype in ("fp32", "bf16"):
        x1, x2, _ = batch(64)
        with torch.inference_mode(), autocast(dtype):
            ms = cuda_time(lambda: forward_all(x1, x2), repeats=repeats)
        out[f"infer_b64_{dtype}_ms"] = ms
        out[f"infer_b64_{dtype}_patches_s"] = 64e3 / ms
    x1, x2, _ = batch(1)
    with torch.inference_mode():
        out["infer_b1_fp32_ms"] = cuda_time(lambda: forward_all(x1, x2), repeats=repeats * 3)
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)
    for n in batches:
        for dtype in ("fp32", "bf16"):
            x1, x2, y = batch(n)

            def step():
                opt.zero_grad(set_to_none=True)
                with autocast(dtype):
                    logits = forward_all(x1, x2)
                    loss = sum(F.cross_entropy(l.float(), y) for l in logits)
                loss.backward()
                opt.step()

            key = f"train_b{n}_{dtype}"
            try:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                ms = cuda_time(step, warmup=2, repeats=repeats)
                out[f"{key}_ms"] = ms
                out[f"{key}_patches_s"] = n * 1e3 / ms
                out[f"{key}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except torch.OutOfMemoryError:
                out[f"{key}_ms"] = None
                out[f"{key}_error"] = "out of memory"
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
    return out


def ours(args):
    model = m3amba.create_model(args.model, in_chans=(C1, C2), num_classes=K, clip_pretrained=None).cuda()
    model.train()
    res = measure(args.model, lambda a, b: model.forward_all(a, b)[:3], list(model.parameters()), repeats=args.repeats)
    res["scan_backend"] = m3amba.ops.selective_scan.get_backend_name(torch.device("cuda"))
    res["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return res, model


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
                     forward_type="v01").cuda().train()
    g = torch.Generator(device="cuda").manual_seed(1)
    e1, e2 = (torch.randn(64, 512, device="cuda", generator=g) for _ in range(2))

    def forward_all(a, b):
        n = a.shape[0]
        return model(a, b, e1[:n], e2[:n])

    res = measure("reference (mamba-ssm v01, CLIP embeddings given)", forward_all, list(model.parameters()),
                  repeats=args.repeats)
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
            return model(a, b).float()

    run = lambda a, b: sliding_window_logits(predict, a, b, K, window=S, stride=args.stride,
                                             batch_size=args.scene_batch, device="cuda")
    with torch.inference_mode():
        run(x1[:, :64, :64], x2[:, :64, :64])  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        logits, counts = run(x1, x2)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert logits.shape == (K, h, w) and counts.min() >= 1
    return {"scene": f"{h}x{w}, {C1}+{C2} bands", "stride": args.stride, "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="m3amba_base")
    p.add_argument("--reference-dir", default=None)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--stride", type=int, default=24)
    p.add_argument("--scene-batch", type=int, default=256)
    p.add_argument("--mamba-sdist", default=None, help="build mamba-ssm's scan kernel first")
    p.add_argument("--out", default="model_benchmark.json")
    args = p.parse_args()
    if args.mamba_sdist:
        from build_mamba_scan import build
        build(args.mamba_sdist)
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    ours_res, model = ours(args)
    result["ours"] = ours_res
    print(json.dumps(ours_res, indent=1), flush=True)
    try:
        result["full_scene"] = full_scene(model, args)
        print(json.dumps(result["full_scene"]), flush=True)
    except ImportError as exc:
        result["full_scene"] = {"error": str(exc)}
    del model
    torch.cuda.empty_cache()
    if args.reference_dir:
        result["reference"] = reference(args)
        print(json.dumps(result["reference"], indent=1), flush=True)
        r, o = result["reference"], ours_res
        result["ratios"] = {k: o[k] / r[k] for k in o if k.endswith("patches_s") and r.get(k)}
        print(json.dumps(result["ratios"], indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
