"""Selective scan (Mamba's S6 recurrence) with pluggable backends.

Use :func:`selective_scan_fn`; it dispatches to a registered backend:

* ``"torch"`` – chunked pure-PyTorch scan, fast and stable on any device
  (the default on CPU);
* ``"reference"`` – the sequential definition, used to test the others;
* ``"mamba"`` – mamba-ssm's CUDA kernel, when its extension can be imported;
* ``"triton"`` – fused Triton kernels (CUDA; the default there);
* ``"triton_mamba"`` – the Triton forward with mamba-ssm's backward (CUDA, both needed; it keeps
  no states for the backward, where ``"triton"`` saves one every 64 steps).

SS2D calls :func:`.scan2d.selective_scan_2d`, which runs fused 2-D kernels with ``"triton"`` and the
composition (cross-scan, :func:`selective_scan_fn`, merge) with every other backend.

Other modules add GPU kernels with :func:`register_backend`.  Choose a
backend per call (``backend=``), per block (:func:`use_backend`) or per
process (environment variable ``M3AMBA_SCAN_BACKEND``).
"""

from ._dispatch import (
    BACKEND_ENV_VAR,
    available_backends,
    get_backend_name,
    register_backend,
    resolve_backend,
    selective_scan_fn,
    unregister_backend,
    use_backend,
)
from .chunked import selective_scan_chunked
from .mamba_cuda import mamba_available, selective_scan_mamba
from .reference import selective_scan_ref

register_backend("reference", selective_scan_ref, priority=0, replace=True)
register_backend("torch", selective_scan_chunked, priority=10, replace=True)

from .triton_scan import selective_scan_triton, triton_supported  # noqa: E402  (imports triton lazily/defensively)

# the automatic choice on CUDA (priority 40): on an H100, in one run, the compiled training step of
# m3amba_base took 690 ms with it and 719 ms with triton_mamba (docs/benchmarks.md)
register_backend("triton", selective_scan_triton, supports=triton_supported, priority=40, replace=True)
# mamba-ssm's kernel when it can be imported (checked lazily, on the first CUDA call), and its
# backward paired with the Triton forward
register_backend("mamba", selective_scan_mamba, supports=mamba_available, priority=30, replace=True)

from .hybrid import selective_scan_triton_mamba, triton_mamba_supported  # noqa: E402

register_backend("triton_mamba", selective_scan_triton_mamba, supports=triton_mamba_supported, priority=35,
                 replace=True)

__all__ = [
    "BACKEND_ENV_VAR",
    "available_backends",
    "get_backend_name",
    "register_backend",
    "resolve_backend",
    "selective_scan_chunked",
    "selective_scan_fn",
    "selective_scan_ref",
    "unregister_backend",
    "use_backend",
]
