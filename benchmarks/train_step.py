"""One training step of M3amba on a GPU: time, peak memory and, optionally, a kernel table.

    python benchmarks/train_step.py --backends triton triton_mamba --profile-dir prof/

For each scan backend: the model (default ``m3amba_base``, Houston shapes: 144 + 1 bands, 15
classes, 32 x 32 patches, random CLIP tower) with compiled trunk layers, a batch of 64 under bf16
autocast, the three-head cross-entropy and AdamW. Median of CUDA-event timings after warm-up; with
``--profile-dir``, the CUDA kernels of one more step sorted by time. Each backend runs in a fresh
process, so one backend's compiled graphs and memory never affect the next. ``benchmarks/model.py``
makes the same measurement among many others; this script isolates it for the step's profile.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F

    import m3amba
    from m3amba._bench import time_fn

    torch.manual_seed(0)
    model = m3amba.create_model(args.model, in_chans=(144, 1), num_classes=15, clip_pretrained=None,
                                scan_backend=args.backend).cuda().train()
    if not args.eager:
        model.compile_layers()
    model.set_grad_checkpointing(args.ckpt)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = args.batch
    x1, x2 = torch.randn(n, 144, 32, 32, device="cuda"), torch.randn(n, 1, 32, 32, device="cuda")
    y = torch.randint(0, 15, (n, 32, 32), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(F.cross_entropy(lg.float(), y) for lg in model.forward_all(x1, x2)[:3])
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    ms, all_ms = time_fn(step, torch.device("cuda"), warmup=2, repeats=args.repeats)
    res = {"model": args.model, "backend": args.backend, "compiled": not args.eager, "ckpt_layers": args.ckpt,
           "batch": n, "step_ms": ms, "patches_s": n * 1e3 / ms, "first_step_s": first_s, "all_ms": all_ms,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "device": torch.cuda.get_device_name()}
    if args.profile_dir:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        out = Path(args.profile_dir) / f"train_step_{args.model}_{args.backend}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=70,
                                                 max_name_column_width=110))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="m3amba_base")
    p.add_argument("--backends", nargs="+", default=["triton", "triton_mamba"])
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)  # one backend, in the child process
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ckpt", type=int, default=0, help="trunk layers recomputed in backward")
    p.add_argument("--eager", action="store_true", help="do not compile the trunk layers")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile-dir", default=None)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args()
    if args.backend:
        print(json.dumps(one(args)), flush=True)
        return
    import torch
    if not torch.cuda.is_available():
        sys.exit("benchmarks/train_step.py times a GPU training step: no CUDA device is visible here")
    results = []
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--backend", backend, "--model", args.model, "--batch", str(args.batch),
               "--ckpt", str(args.ckpt), "--repeats", str(args.repeats)]
        cmd += ["--eager"] if args.eager else []
        cmd += ["--profile-dir", args.profile_dir] if args.profile_dir else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            results.append({"backend": backend, "error": (proc.stderr or proc.stdout)[-2000:]})
        else:
            results.append(json.loads(lines[-1]))
    for r in results:
        if "error" in r:
            print(f"{r['backend']:>14}: failed\n{r['error']}")
        else:
            print(f"{r['backend']:>14}: {r['step_ms']:8.1f} ms  {r['patches_s']:6.1f} patches/s  "
                  f"peak {r['peak_gib']:5.1f} GiB  ({r['device']})")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
