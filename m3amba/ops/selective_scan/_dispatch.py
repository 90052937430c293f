"""Backend registry and the :func:`selective_scan_fn` dispatcher.

Backends are plain functions with the signature of :func:`selective_scan_fn`
(without ``backend``).  Modules register them with :func:`register_backend`;
the dispatcher never needs editing to add one.

Resolution order of the backend used for a call (see :func:`resolve_backend`):

1. the explicit ``backend=`` argument,
2. the innermost active :func:`use_backend` block,
3. the environment variable ``M3AMBA_SCAN_BACKEND``,
4. the highest-priority registered backend that supports the tensors' device.

At each level the value ``"auto"`` (and, for the environment variable, an
empty string) means "not set here, fall through to the next level".
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ._common import validate_inputs

__all__ = [
    "BACKEND_ENV_VAR",
    "register_backend",
    "unregister_backend",
    "available_backends",
    "resolve_backend",
    "get_backend_name",
    "use_backend",
    "selective_scan_fn",
]

#: Environment variable that selects the default backend.
BACKEND_ENV_VAR = "M3AMBA_SCAN_BACKEND"

_AUTO = "auto"

DeviceLike = Union[torch.device, str, None]
ScanOutput = Union[Tensor, Tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class _Backend:
    name: str
    fn: Callable[..., ScanOutput]
    supports: Callable[[torch.device], bool]
    priority: int


_registry: dict[str, _Backend] = {}
_registry_lock = threading.RLock()
# Context-local so that concurrent threads / tasks do not see each other's blocks.
_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "m3amba_scan_backend", default=None
)


def _all_devices(device: torch.device) -> bool:
    return True


def register_backend(
    name: str,
    fn: Callable[..., ScanOutput],
    *,
    supports: Callable[[torch.device], bool] = _all_devices,
    priority: int = 0,
    replace: bool = False,
) -> None:
    """Register a selective-scan implementation under ``name``.

    Args:
        name: backend name, used by ``backend=``, :func:`use_backend` and the
            ``M3AMBA_SCAN_BACKEND`` environment variable.  ``"auto"`` is reserved.
        fn: callable with the signature of :func:`selective_scan_fn` minus
            ``backend`` (it receives the raw, unvalidated-by-itself arguments).
        supports: ``supports(device) -> bool``; whether ``fn`` can run on tensors
            of that device (e.g. ``lambda d: d.type == "cuda"``).
        priority: higher wins during automatic selection.
        replace: allow overwriting an existing registration of ``name``.

    Raises:
        ValueError: ``name`` is empty, reserved or already registered (and
            ``replace`` is false).
    """
    if not isinstance(name, str) or not name or name.strip().lower() == _AUTO:
        raise ValueError(f"invalid selective-scan backend name {name!r}")
    with _registry_lock:
        if name in _registry and not replace:
            raise ValueError(
                f"selective-scan backend {name!r} is already registered; pass replace=True"
            )
        _registry[name] = _Backend(name, fn, supports, int(priority))


def unregister_backend(name: str) -> None:
    """Remove a registered backend.

    Raises:
        ValueError: ``name`` is not registered.
    """
    with _registry_lock:
        removed = _registry.pop(name, None)
    if removed is None:
        raise ValueError(_unknown_message(name))


def _by_priority() -> List[_Backend]:
    # reads take no lock: a dict snapshot is atomic in CPython, and torch.compile cannot trace a lock
    backends = list(_registry.values())
    return sorted(backends, key=lambda b: (-b.priority, b.name))


def _unknown_message(name: str) -> str:
    known = ", ".join(repr(b.name) for b in _by_priority()) or "none"
    return f"unknown selective-scan backend {name!r}; known backends: {known} (or 'auto')"


def _as_device(device: DeviceLike) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def available_backends(device: DeviceLike = None) -> List[str]:
    """Names of the registered backends, highest priority first.

    If ``device`` is given, only those whose ``supports(device)`` is true.
    """
    backends = _by_priority()
    if device is None:
        return [b.name for b in backends]
    dev = _as_device(device)
    return [b.name for b in backends if b.supports(dev)]


def _is_set(value: Optional[str]) -> bool:
    return value is not None and value.strip() != "" and value.strip().lower() != _AUTO


def _lookup(name: str, device: torch.device, origin: str) -> _Backend:
    backend = _registry.get(name)  # lock-free read, see _by_priority
    if backend is None:
        raise ValueError(_unknown_message(name) + f" (requested by {origin})")
    if not backend.supports(device):
        available = ", ".join(repr(n) for n in available_backends(device)) or "none"
        raise RuntimeError(
            f"selective-scan backend {name!r} (requested by {origin}) does not support "
            f"device {device}; backends available for it: {available}"
        )
    return backend


def _resolve(name: Optional[str], device: torch.device) -> _Backend:
    if _is_set(name):
        return _lookup(name.strip(), device, "the backend= argument")
    ctx = _context_backend.get()
    if _is_set(ctx):
        return _lookup(ctx, device, "use_backend()")
    env = os.environ.get(BACKEND_ENV_VAR)
    if _is_set(env):
        return _lookup(env.strip(), device, f"${BACKEND_ENV_VAR}")
    for backend in _by_priority():
        if backend.supports(device):
            return backend
    raise RuntimeError(f"no registered selective-scan backend supports device {device}")


def resolve_backend(name: Optional[str] = None, device: DeviceLike = None) -> str:
    """Return the name of the backend a call would use.

    Args:
        name: explicit choice (``None`` or ``"auto"``: default resolution).
        device: device of the tensors (default: CPU).

    Raises:
        ValueError: the chosen name is not registered.
        RuntimeError: the chosen backend does not support ``device``.
    """
    return _resolve(name, _as_device(device)).name


def get_backend_name(device: DeviceLike = None) -> str:
    """Name of the backend that ``selective_scan_fn`` would use on ``device`` now."""
    return resolve_backend(None, device)


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Make ``name`` the default backend inside a ``with`` block.

    The setting is context-local (per thread / asyncio task) and is overridden
    by an explicit ``backend=`` argument; ``None`` or ``"auto"`` restores
    default resolution inside the block.

    Raises:
        ValueError: ``name`` is not a registered backend.
    """
    if _is_set(name):
        name = name.strip()
        with _registry_lock:
            known = name in _registry
        if not known:
            raise ValueError(_unknown_message(name))
    token = _context_backend.set(name)
    try:
        yield
    finally:
        _context_backend.reset(token)


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: Optional[str] = None,
) -> ScanOutput:
    """Selective scan (the S6 recurrence of Mamba), dispatched to a backend.

    With ``dt = softplus(delta + delta_bias)`` (bias and softplus optional),
    ``h_0 = 0`` and group ``g(d) = d // (Dm // G)``::

        h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[g(d), n] * u_t[d]
        y_t[d]    = sum_n C_t[g(d), n] * h_t[d, n] + D[d] * u_t[d]
        y         = y * silu(z)                         # if z is given

    Args:
        u: ``(batch, Dm, L)`` input.
        delta: ``(batch, Dm, L)`` raw step sizes.
        A: ``(Dm, N)`` real state matrix (typically negative).
        B: ``(batch, N, L)`` or grouped ``(batch, G, N, L)`` with ``Dm % G == 0``.
        C: like ``B`` (its own ``G``).
        D: optional ``(Dm,)`` skip weights.
        z: optional ``(batch, Dm, L)`` gate.
        delta_bias: optional ``(Dm,)`` added to ``delta``.
        delta_softplus: apply softplus to ``delta (+ delta_bias)``.
        return_last_state: also return ``h_L``.
        backend: backend name or ``"auto"``/``None`` (see :func:`resolve_backend`).

    Returns:
        ``y`` with the dtype of ``u``; with ``return_last_state`` the pair
        ``(y, h_L)`` where ``h_L`` is ``(batch, Dm, N)`` in float32 (float64 if
        any input is float64).  All float dtypes are accepted; accumulation is
        in float32 or float64.  Differentiable w.r.t. every tensor argument.
    """
    # Validate here so every backend, including external kernels, reports the
    # same clear errors.
    validate_inputs(u, delta, A, B, C, D, z, delta_bias)
    impl = _resolve(backend, u.device)
    return impl.fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
