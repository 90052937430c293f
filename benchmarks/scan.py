"""Selective-scan backends side by side: agreement with ``reference`` and CUDA-event timings.

    python benchmarks/scan.py --out results.json [--mamba-sdist mamba_ssm-2.3.2.post1.tar.gz]

For every available backend: relative L2 error of y and of all gradients against the float64
``reference`` on fresh random inputs (outputs poisoned with NaN first), then the median time of
forward and forward+backward over repeated runs after warm-up, at the M3amba-base shapes
(4 directions x 768 channels, G = 4, N = 16) for L = 1024 (batch 64 and 16) and L = 64*64.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m3amba._bench import time_fn  # noqa: E402
from m3amba.ops.selective_scan import available_backends, selective_scan_fn  # noqa: E402

SHAPES = [  # (batch, Dm, L, N, G)
    (64, 3072, 1024, 16, 4),
    (16, 3072, 1024, 16, 4),
    (4, 3072, 4096, 16, 4),
]


def make_inputs(batch, dim, length, dstate, groups, dtype, device, seed, requires_grad=False):
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

    u = rnd(batch, dim, length)
    delta = rnd(batch, dim, length, scale=0.5)
    A = -torch.exp(rnd(dim, dstate, scale=0.5, dt=torch.float32))
    B = rnd(batch, groups, dstate, length)
    C = rnd(batch, groups, dstate, length)
    D = rnd(dim, dt=torch.float32)
    z = rnd(batch, dim, length)
    bias = rnd(dim, scale=0.5, dt=torch.float32) - 2.0
    args = [u, delta, A, B, C, D, z, bias]
    if requires_grad:
        for t in args:
            t.requires_grad_(True)
    return args


def run(backend, args):
    u, delta, A, B, C, D, z, bias = args
    return selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)


def rel_err(x, ref):
    """Relative L2 error; absolute where the reference is exactly zero (dA at L = 1, since h_0 = 0)."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("nan")
    diff, norm = torch.linalg.vector_norm(x - ref), torch.linalg.vector_norm(ref)
    return (diff / norm).item() if norm > 0 else diff.item()


def agreement(backend, dtype, device, shape, seed):
    """Max relative L2 error of y and every gradient vs float64 reference."""
    args = make_inputs(*shape, dtype=dtype, device=device, seed=seed, requires_grad=True)
    ref_args = [a.detach().double().requires_grad_(True) for a in args]
    y_ref = run("reference", ref_args)
    dy = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, ref_args, dy)
    y = run(backend, args)
    grads = torch.autograd.grad(y, args, dy.to(y.dtype))
    errs = {"y": rel_err(y, y_ref)}
    for name, gx, gr in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"], grads, grads_ref):
        errs[name] = rel_err(gx, gr)
    return errs


def time_cuda(fn, warmup=3, repeats=20):
    """Median ms of fn() over CUDA-event timings after warm-up, and every timing."""
    return time_fn(fn, torch.device("cuda"), warmup=warmup, repeats=repeats)


def bench(backend, dtype, device, shape, repeats):
    args = make_inputs(*shape, dtype=dtype, device=device, seed=1, requires_grad=True)
    dy = torch.randn(shape[0], shape[1], shape[2], device=device, dtype=dtype)
    out = {}
    try:
        with torch.no_grad():
            out["fwd_ms"], out["fwd_all"] = time_cuda(lambda: run(backend, args), repeats=repeats)

        def fwd_bwd():
            y = run(backend, args)
            torch.autograd.grad(y, args, dy)

        out["fwd_bwd_ms"], out["fwd_bwd_all"] = time_cuda(fwd_bwd, repeats=repeats)
    except torch.OutOfMemoryError:
        out.setdefault("fwd_ms", None)
        out["fwd_bwd_ms"] = out.get("fwd_bwd_ms")
        out["error"] = "out of memory"
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="scan_benchmark.json")
    parser.add_argument("--mamba-sdist", default=None, help="build mamba-ssm's kernel from this sdist first")
    parser.add_argument("--backends", default=None, help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reference-repeats", type=int, default=2)
    parser.add_argument("--shapes", default=None, help="indices into SHAPES, e.g. 0,1")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    if args.mamba_sdist:
        from build_mamba_scan import build
        build(args.mamba_sdist)
    device = torch.device("cuda")
    backends = args.backends.split(",") if args.backends else available_backends(device)
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "backends": backends,
        "agreement": {}, "timings": [],
    }
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError:
        pass
    for backend in backends:
        if backend == "reference":
            continue
        for dtype in (torch.float32, torch.bfloat16):
            errs = {}
            for seed, shape in enumerate([(2, 96, 1024, 16, 4), (1, 64, 37, 16, 2), (2, 32, 1, 16, 1)]):
                for k, v in agreement(backend, dtype, device, shape, seed).items():
                    errs[k] = max(errs.get(k, 0.0), v) if v == v else float("nan")
            result["agreement"][f"{backend}/{str(dtype).split('.')[-1]}"] = errs
            print(f"agreement {backend:<9} {str(dtype):<15} max rel L2 over y and grads: {max(errs.values()):.2e}", flush=True)
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for backend in backends:
                reps = args.reference_repeats if backend == "reference" else args.repeats
                if backend == "reference" and dtype != torch.float32:
                    continue
                r = bench(backend, dtype, device, shape, reps)
                r.update(backend=backend, dtype=str(dtype).split(".")[-1], shape=shape)
                result["timings"].append(r)
                fmt = lambda v: f"{v:9.2f}" if v is not None else "      n/a"
                print(f"B={shape[0]:<3} Dm={shape[1]} L={shape[2]:<5} {r['dtype']:<9} {backend:<9} "
                      f"fwd {fmt(r.get('fwd_ms'))} ms  fwd+bwd {fmt(r.get('fwd_bwd_ms'))} ms {r.get('error', '')}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
