"""Throughput of a model variant on this machine: ``m3amba bench`` (inference or training steps).

For the full end-to-end comparison with the reference implementation, see ``benchmarks/model.py``.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["time_fn", "bench_model"]


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10) -> Tuple[float, List[float]]:
    """Median milliseconds of ``fn()`` after ``warmup`` calls, and every timing.

    CUDA: CUDA events around each call (the GPU's time, launch queue included); CPU: wall clock.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), times


def bench_model(
    name: str,
    batch_size: int = 64,
    device: Optional[str] = None,
    amp: bool = True,
    train: bool = False,
    compile: bool = False,
    grad_checkpointing: int = 0,
    in_chans: Sequence[int] = (144, 1),
    num_classes: int = 15,
    repeats: int = 10,
    warmup: int = 3,
) -> Dict[str, Any]:
    """Time inference (or a training step: three-head cross-entropy + AdamW) of a randomly initialised variant.

    CLIP variants get a randomly initialised tower (same cost as the pretrained one; timing only).
    ``amp`` = bf16 autocast (CUDA only). Returns ms per batch, patches/s and, on CUDA, peak GiB.
    """
    import m3amba
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs = {"in_chans": tuple(in_chans), "num_classes": num_classes}
    if m3amba.get_pretrained_cfg(name).clip_model is not None:
        kwargs["clip_pretrained"] = None
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-tower warning: this model is only timed
        model = m3amba.create_model(name, **kwargs).to(device)
    size = model.img_size
    g = torch.Generator(device="cpu").manual_seed(0)
    x1 = torch.randn(batch_size, in_chans[0], size, size, generator=g).to(device)
    x2 = torch.randn(batch_size, in_chans[1], size, size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size, size, size), generator=g).to(device)
    use_amp = amp and device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)  # noqa: E731
    if grad_checkpointing:
        model.set_grad_checkpointing(grad_checkpointing)
    if compile:
        model.compile_layers()
    if train:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = model.forward_all(x1, x2)
                loss = sum(F.cross_entropy(lg.float(), y) for lg in out[:3])
            loss.backward()
            opt.step()
        fn = step
    else:
        model.eval()

        def fn():
            with torch.inference_mode(), autocast():
                model(x1, x2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms, _ = time_fn(fn, device, warmup=warmup, repeats=repeats)
    result = {"model": name, "mode": "train" if train else "inference", "device": str(device),
              "batch_size": batch_size, "dtype": "bf16 autocast" if use_amp else "fp32", "compiled": compile,
              "grad_checkpointing": grad_checkpointing, "scan_backend": m3amba.ops.selective_scan.get_backend_name(device),
              "ms": ms, "patches_per_s": batch_size * 1e3 / ms}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["card"] = torch.cuda.get_device_name(device)
    return result
