"""Input validation and normalisation shared by the selective-scan backends.

Every backend receives the raw ``selective_scan_fn`` arguments.  The helpers
here turn them into one canonical form so that backends only implement the
recurrence itself:

* :func:`validate_inputs` checks ranks, shapes, devices and dtypes and raises
  :class:`ValueError` (or :class:`TypeError` for non-tensors) naming the
  offending argument together with the expected and the received shape.
* :func:`prepare_inputs` casts to the compute dtype, applies ``delta_bias``
  and ``softplus`` to obtain the effective step ``dt`` and brings ``B``/``C``
  into the grouped layout ``(batch, G, N, L)``.
* :func:`expand_groups` / :func:`split_channels` map between per-group and
  per-channel tensors.
* :func:`finish_output` adds the ``D`` skip connection, applies the ``z`` gate
  and casts back to the dtype of ``u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ScanDims",
    "PreparedScan",
    "validate_inputs",
    "compute_dtype",
    "prepare_inputs",
    "expand_groups",
    "split_channels",
    "finish_output",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class ScanDims:
    """Sizes of one selective-scan problem.

    ``groups_b`` / ``groups_c`` are 1 for ungrouped (3-D) ``B`` / ``C``.
    """

    batch: int
    dim: int
    length: int
    dstate: int
    groups_b: int
    groups_c: int


@dataclass(frozen=True)
class PreparedScan:
    """Canonical, compute-dtype inputs of a selective scan.

    Attributes:
        u: ``(batch, Dm, L)`` input sequence.
        dt: ``(batch, Dm, L)`` effective step, i.e. ``delta`` after
            ``delta_bias`` and the optional softplus.
        A: ``(Dm, N)`` state matrix (diagonal per channel).
        B: ``(batch, G_B, N, L)`` input projection (``G_B = 1`` if ungrouped).
        C: ``(batch, G_C, N, L)`` output projection (``G_C = 1`` if ungrouped).
        D: ``(Dm,)`` skip weights or ``None``.
        z: ``(batch, Dm, L)`` gate or ``None``.
        dims: problem sizes.
        dtype: compute dtype (float32, or float64 if any input is float64).
        out_dtype: dtype of the returned ``y`` (the dtype of ``u``).
    """

    u: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Optional[Tensor]
    z: Optional[Tensor]
    dims: ScanDims
    dtype: torch.dtype
    out_dtype: torch.dtype


def _fail(name: str, expected: str, got: Tensor) -> None:
    raise ValueError(
        f"selective_scan: argument '{name}' must have shape {expected}; "
        f"got shape {tuple(got.shape)}"
    )


def _check_tensor(name: str, x: object, device: Optional[torch.device]) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(
            f"selective_scan: argument '{name}' must be a torch.Tensor, got {type(x).__name__}"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"selective_scan: argument '{name}' must be a real floating-point tensor "
            f"(float16, bfloat16, float32 or float64); got dtype {x.dtype}"
        )
    if device is not None and x.device != device:
        raise ValueError(
            f"selective_scan: all inputs must be on the same device; 'u' is on {device} "
            f"but '{name}' is on {x.device}"
        )
    return x


def _check_bc(name: str, x: Tensor, batch: int, dim: int, dstate: int, length: int) -> int:
    """Validate ``B``/``C`` and return its number of groups."""
    if x.dim() == 3:
        if tuple(x.shape) != (batch, dstate, length):
            _fail(
                name,
                f"(batch, N, L) = {(batch, dstate, length)} "
                f"or (batch, G, N, L) = ({batch}, G, {dstate}, {length})",
                x,
            )
        return 1
    if x.dim() == 4:
        groups = x.shape[1]
        if (x.shape[0], x.shape[2], x.shape[3]) != (batch, dstate, length) or groups < 1:
            _fail(name, f"(batch, G, N, L) = ({batch}, G, {dstate}, {length})", x)
        if dim % groups != 0:
            raise ValueError(
                f"selective_scan: the number of groups of '{name}' (G = {groups}) must divide "
                f"the number of channels Dm = {dim} (Dm % G == 0); got shape {tuple(x.shape)}"
            )
        return groups
    _fail(
        name,
        f"(batch, N, L) = {(batch, dstate, length)} "
        f"or (batch, G, N, L) = ({batch}, G, {dstate}, {length}) (3-D or 4-D)",
        x,
    )
    raise AssertionError("unreachable")


def validate_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
) -> ScanDims:
    """Check the arguments of a selective scan and return the problem sizes.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: wrong rank or shape (the message names the argument, the
            expected and the received shape), a group count that does not
            divide ``Dm``, a non-floating dtype or tensors on different devices.
    """
    _check_tensor("u", u, None)
    device = u.device
    if u.dim() != 3:
        _fail("u", "(batch, Dm, L) (3-D)", u)
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError(f"selective_scan: sequence length L must be >= 1; got u of shape {tuple(u.shape)}")
    _check_tensor("delta", delta, device)
    if tuple(delta.shape) != (batch, dim, length):
        _fail("delta", f"(batch, Dm, L) = {(batch, dim, length)} (same as 'u')", delta)
    _check_tensor("A", A, device)
    if A.dim() != 2 or A.shape[0] != dim:
        _fail("A", f"(Dm, N) = ({dim}, N)", A)
    dstate = A.shape[1]
    _check_tensor("B", B, device)
    groups_b = _check_bc("B", B, batch, dim, dstate, length)
    _check_tensor("C", C, device)
    groups_c = _check_bc("C", C, batch, dim, dstate, length)
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None:
            _check_tensor(name, vec, device)
            if tuple(vec.shape) != (dim,):
                _fail(name, f"(Dm,) = ({dim},)", vec)
    if z is not None:
        _check_tensor("z", z, device)
        if tuple(z.shape) != (batch, dim, length):
            _fail("z", f"(batch, Dm, L) = {(batch, dim, length)} (same as 'u')", z)
    return ScanDims(batch, dim, length, dstate, groups_b, groups_c)


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """Return float64 if any given tensor is float64, else float32."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def prepare_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
) -> PreparedScan:
    """Validate the raw arguments and bring them into the canonical form.

    All tensors are cast to the compute dtype (differentiably, so autograd
    reaches the original inputs), ``dt = softplus(delta + delta_bias)`` (bias
    and softplus optional) is formed and ``B``/``C`` are given a group axis.
    """
    dims = validate_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)

    def cast(x: Optional[Tensor]) -> Optional[Tensor]:
        return None if x is None else x.to(dtype)

    dt = cast(delta)
    if delta_bias is not None:
        dt = dt + cast(delta_bias)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bg = cast(B) if B.dim() == 4 else cast(B).unsqueeze(1)
    Cg = cast(C) if C.dim() == 4 else cast(C).unsqueeze(1)
    return PreparedScan(
        u=cast(u),
        dt=dt,
        A=cast(A),
        B=Bg,
        C=Cg,
        D=cast(D),
        z=cast(z),
        dims=dims,
        dtype=dtype,
        out_dtype=u.dtype,
    )


def expand_groups(x: Tensor, dim: int) -> Tensor:
    """Repeat a grouped ``(batch, G, ...)`` tensor to per-channel ``(batch, dim, ...)``.

    Channel ``d`` receives group ``d // (dim // G)``.
    """
    groups = x.shape[1]
    if groups == dim:
        return x
    per_group = dim // groups
    return x.repeat_interleave(per_group, dim=1)


def split_channels(x: Tensor, groups: int) -> Tensor:
    """View a per-channel ``(batch, Dm, ...)`` tensor as ``(batch, G, Dm // G, ...)``.

    Broadcasting a grouped tensor ``(batch, G, 1, ...)`` against the result
    applies group ``d // (Dm // G)`` to channel ``d`` without copying it.
    """
    return x.unflatten(1, (groups, x.shape[1] // groups))


def finish_output(y: Tensor, prep: PreparedScan) -> Tensor:
    """Add ``D * u``, gate with ``silu(z)`` and cast ``y`` to the dtype of ``u``."""
    if prep.D is not None:
        y = y + prep.D[:, None] * prep.u
    if prep.z is not None:
        y = y * F.silu(prep.z)
    return y.to(prep.out_dtype)
