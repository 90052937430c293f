"""Build mamba-ssm's selective-scan CUDA extension alone, for one GPU architecture.

For side-by-side benchmarks on a machine without mamba-ssm: reads ``csrc/selective_scan`` out of
the mamba-ssm sdist (``pip download --no-deps --no-binary=:all: mamba-ssm==2.3.2.post1``), builds it
with ``torch.utils.cpp_extension.load`` (nothing of mamba-ssm is vendored in this repository) and
leaves ``selective_scan_cuda`` importable in the current process, so the ``mamba`` backend uses it.

    python benchmarks/build_mamba_scan.py path/to/mamba_ssm-2.3.2.post1.tar.gz --arch 9.0
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

_SOURCES = [
    "selective_scan.cpp",
    *(f"selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")),
    *(f"selective_scan_bwd_{t}_{k}.cu" for t in ("fp32", "fp16", "bf16") for k in ("real", "complex")),
]
_NVCC_FLAGS = [
    "-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda", "-lineinfo",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
]


def build(sdist: str, arch: str = "9.0", build_dir: str | None = None, verbose: bool = False):
    """Extract the selective-scan sources from ``sdist`` and build them; returns the loaded module."""
    from torch.utils.cpp_extension import load

    work = Path(build_dir or tempfile.mkdtemp(prefix="mamba_scan_"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/csrc/selective_scan/" in m.name and m.isfile()]
        if not members:
            raise SystemExit(f"{sdist} has no csrc/selective_scan: is it the mamba-ssm sdist?")
        for m in members:
            m.name = Path(m.name).name
            tar.extract(m, src)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", arch)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    start = time.time()
    module = load(
        name="selective_scan_cuda",
        sources=[str(src / s) for s in _SOURCES],
        extra_include_paths=[str(src)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=_NVCC_FLAGS,
        build_directory=str(work),
        verbose=verbose,
    )
    sys.modules["selective_scan_cuda"] = module
    print(f"built selective_scan_cuda for sm_{arch.replace('.', '')} in {time.time() - start:.0f} s ({work})")
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdist")
    parser.add_argument("--arch", default="9.0", help="CUDA compute capability, e.g. 9.0 for H100")
    parser.add_argument("--build-dir", default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    build(args.sdist, args.arch, args.build_dir, args.verbose)


if __name__ == "__main__":
    main()
