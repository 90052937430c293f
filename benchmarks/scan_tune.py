"""Launch-parameter sweep of the Triton selective-scan kernels, forward and backward timed apart.

    python benchmarks/scan_tune.py --dtype bf16 --out tune.json [--configs bwd]

At one shape (default: the M3amba-base SS2D at batch 64, Dm 3072, L 1024, N 16, G 4) every
configuration in the chosen grid is first checked against a reference configuration on a fresh small
input (relative L2 of y and of all gradients, so that a fast but wrong configuration is flagged), then
timed: median of CUDA-event timings after warm-up, for the forward kernel alone and the backward kernel
alone (the kernels' launchers called directly). Prints a table, best
first, and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from m3amba.ops.selective_scan import triton_scan  # noqa: E402
from scan import make_inputs, rel_err, time_cuda  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# the configurations tried, as (field names, rows): a curated list rather than a full product, since
# every configuration costs a kernel compilation
BWD_GRID = (("chunk", "block_d", "num_warps", "maxnreg"), [
    (64, 32, 1, 0), (64, 64, 1, 168), (64, 64, 1, 0), (64, 64, 1, 232), (64, 32, 1, 168), (64, 32, 1, 128),
    (64, 128, 2, 168), (64, 128, 4, 128), (128, 32, 1, 0), (32, 32, 1, 0),
])
FWD_GRID = (("block_d", "num_warps", "j", "maxnreg"), [
    (64, 2, 2, 0), (256, 8, 2, 0), (128, 4, 1, 0), (128, 4, 2, 128), (64, 4, 2, 0), (256, 4, 2, 0),
])


def _bwd_call(args, y_dy, hs, hl, cfg):
    u, delta, A, B, C, D, z, bias = args
    return torch.ops.m3amba.selective_scan_bwd(
        y_dy, torch.zeros_like(hl), u, delta, A, B, C, D, z, bias, hs, True,
        cfg["chunk"], cfg["block_d"], cfg["num_warps"], triton_scan.BWD_DEFAULTS["j"], triton_scan.BWD_DEFAULTS["v"],
        cfg["maxnreg"], triton_scan.BWD_TILE,
    )


def _fwd_call(args, cfg, chunk):
    u, delta, A, B, C, D, z, bias = args
    return torch.ops.m3amba.selective_scan_fwd(
        u, delta, A, B, C, D, z, bias, True, chunk, cfg["block_d"], cfg["num_warps"], cfg["j"],
        triton_scan.FWD_DEFAULTS["v"], cfg["maxnreg"],
    )


def _kwargs(kind, cfg):
    if kind == "bwd":
        return dict(chunk=cfg["chunk"], bwd_block_d=cfg["block_d"], bwd_num_warps=cfg["num_warps"],
                    bwd_maxnreg=cfg["maxnreg"], bwd_kernel="tile")
    return dict(fwd_block_d=cfg["block_d"], fwd_num_warps=cfg["num_warps"], fwd_j=cfg["j"], fwd_maxnreg=cfg["maxnreg"])


def check(kind, cfg, dtype):
    """Max relative L2 (y and all gradients) of this configuration against the default one."""
    args = make_inputs(2, 256, 300, 16, 4, dtype=dtype, device="cuda", seed=11, requires_grad=True)
    dy = torch.randn(2, 256, 300, device="cuda", dtype=dtype)

    def go(**kw):
        y = triton_scan.selective_scan_triton(*args[:5], args[5], args[6], args[7], True, **kw)
        return [y, *torch.autograd.grad(y, args, dy)]
    ref = go()
    got = go(**_kwargs(kind, cfg))
    return max(rel_err(a, b) for a, b in zip(got, ref))


def _compiled_variants(jit_fn):
    """Every compiled variant of a Triton kernel, as (cache key, compiled kernel) (best effort)."""
    for entry in getattr(jit_fn, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        yield from getattr(cache, "items", lambda: [])()


def compiled_kernels(jit_fn) -> list:
    """Registers, spills and shared memory of every compiled variant of a Triton kernel."""
    found = []
    for key, kernel in _compiled_variants(jit_fn):
        meta = getattr(kernel, "metadata", None)
        found.append({"key": str(key)[-300:], "n_regs": getattr(kernel, "n_regs", None),
                      "n_spills": getattr(kernel, "n_spills", None),
                      "shared": getattr(meta, "shared", None), "num_warps": getattr(meta, "num_warps", None)})
    return found


def dump_asm(jit_fn, folder: Path, stem: str) -> None:
    """Write the TTGIR and PTX of the first compiled variant (the default configuration, checked first)."""
    for _, kernel in _compiled_variants(jit_fn):
        for ext in ("ttgir", "ptx"):
            text = kernel.asm.get(ext) if hasattr(kernel, "asm") else None
            if text:
                (folder / f"{stem}.{ext}").write_text(text if isinstance(text, str) else text.decode())
        return


def default_config(kind: str, dtype: torch.dtype) -> dict:
    """The launch parameters ``selective_scan_triton`` uses by default, in this script's grid fields."""
    if kind == "bwd":
        d = triton_scan.BWD_DEFAULTS_16BIT if dtype.itemsize == 2 else triton_scan.BWD_DEFAULTS
        return dict(chunk=triton_scan.CHUNK_DEFAULT, block_d=d["block_d"], num_warps=d["num_warps"],
                    maxnreg=d["maxnreg"])
    d = triton_scan.FWD_DEFAULTS
    return dict(block_d=d["block_d"] or 0, num_warps=d["num_warps"], j=d["j"], maxnreg=d["maxnreg"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--shape", default="64,3072,1024,16,4", help="batch,Dm,L,N,G")
    p.add_argument("--configs", default="bwd", choices=["bwd", "fwd"])
    p.add_argument("--limit", type=int, default=None, help="time at most this many configurations")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="scan_tune.json")
    p.add_argument("--asm-dir", default=None, help="write TTGIR/PTX of the default configuration here")
    args = p.parse_args()
    dtype = DTYPES[args.dtype]
    shape = tuple(int(v) for v in args.shape.split(","))
    grid, rows_of_grid = BWD_GRID if args.configs == "bwd" else FWD_GRID
    configs = [dict(zip(grid, values)) for values in rows_of_grid]
    default = default_config(args.configs, dtype)  # first, so that the asm dump is the default's
    fwd_default = default_config("fwd", dtype)
    configs = [default] + [c for c in configs if c != default]
    if args.limit:
        configs = configs[: args.limit]
    data = make_inputs(*shape, dtype=dtype, device="cuda", seed=1)
    with torch.no_grad():
        y, hl, hs = _fwd_call(data, fwd_default, triton_scan.CHUNK_DEFAULT)
    dy = torch.randn_like(y)
    rows = []
    for cfg in configs:
        row = dict(cfg)
        t0 = time.perf_counter()
        try:
            row["max_rel_err"] = check(args.configs, cfg, dtype)
            with torch.no_grad():
                if args.configs == "bwd":
                    if cfg["chunk"] != triton_scan.CHUNK_DEFAULT:
                        _, hl_c, hs_c = _fwd_call(data, fwd_default, cfg["chunk"])
                    else:
                        hl_c, hs_c = hl, hs
                    row["ms"] = time_cuda(lambda: _bwd_call(data, dy, hs_c, hl_c, cfg), repeats=args.repeats)[0]
                else:
                    row["ms"] = time_cuda(lambda: _fwd_call(data, cfg, triton_scan.CHUNK_DEFAULT),
                                          repeats=args.repeats)[0]
        except Exception as exc:  # a configuration that fails to compile or run is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    kernel_fn = triton_scan._ss_bwd_kernel if args.configs == "bwd" else triton_scan._ss_fwd_kernel
    kernels = compiled_kernels(kernel_fn)
    for k in kernels:
        print(f"compiled: regs {k['n_regs']} spills {k['n_spills']} shared {k['shared']} warps {k['num_warps']}")
    if args.asm_dir:
        Path(args.asm_dir).mkdir(parents=True, exist_ok=True)
        dump_asm(kernel_fn, Path(args.asm_dir), f"{args.configs}_{args.dtype}")
    ok = sorted((r for r in rows if "ms" in r), key=lambda r: r["ms"])
    print(f"\n{args.configs} {args.dtype} shape {shape} on {torch.cuda.get_device_name()}  (best first)")
    for r in ok:
        print(f"  {r['ms']:8.2f} ms  err {r['max_rel_err']:.1e}  "
              + " ".join(f"{k}={r[k]}" for k in grid))
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "dtype": args.dtype,
                                          "shape": shape, "kind": args.configs, "rows": rows,
                                          "compiled": kernels}, indent=1))


if __name__ == "__main__":
    main()
