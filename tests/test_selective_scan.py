"""Tests of m3amba.ops.selective_scan: backends, dispatcher and validation (CPU only)."""

from __future__ import annotations

import math
import threading
from typing import Dict, List, Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3amba.ops.selective_scan import (
    BACKEND_ENV_VAR,
    available_backends,
    get_backend_name,
    register_backend,
    resolve_backend,
    selective_scan_chunked,
    selective_scan_fn,
    selective_scan_ref,
    unregister_backend,
    use_backend,
)
from m3amba.ops.selective_scan.chunked import default_chunk_size

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


# --------------------------------------------------------------------------- helpers


def make_inputs(
    batch: int = 2,
    dim: int = 8,
    length: int = 16,
    dstate: int = 4,
    groups: Optional[int] = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    softplus: bool = True,
    groups_c: Optional[int] = -1,
) -> Dict[str, Optional[torch.Tensor]]:
    """Random inputs; ``groups=None`` gives 3-D B/C, ``groups_c=-1`` copies ``groups``."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def bc(gr: Optional[int]) -> torch.Tensor:
        return randn(batch, dstate, length) if gr is None else randn(batch, gr, dstate, length)

    groups_c = groups if groups_c == -1 else groups_c
    # without softplus keep dt > 0 so that every decay exp(dt * A) is < 1
    delta = randn(batch, dim, length) * 0.7 if softplus else torch.rand(batch, dim, length, generator=g, dtype=torch.float64)
    inputs = {
        "u": randn(batch, dim, length),
        "delta": delta,
        "A": -torch.exp(randn(dim, dstate) * 0.7),
        "B": bc(groups),
        "C": bc(groups_c),
        "D": randn(dim) if with_D else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": torch.rand(dim, generator=g, dtype=torch.float64) * 0.3 if with_bias else None,
    }
    return {k: (None if v is None else v.to(dtype)) for k, v in inputs.items()}


def leaves(inputs: Dict[str, Optional[torch.Tensor]]) -> Dict[str, Optional[torch.Tensor]]:
    return {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}


def run(backend: str, inputs, *, softplus: bool = True, last: bool = False, chunk_size: Optional[int] = None):
    args = [inputs[k] for k in ARG_NAMES]
    if chunk_size is not None:
        assert backend == "torch"
        return selective_scan_chunked(*args, softplus, last, chunk_size=chunk_size)
    return selective_scan_fn(*args, delta_softplus=softplus, return_last_state=last, backend=backend)


def outputs_and_grads(backend: str, inputs, *, softplus: bool, last: bool, chunk_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Outputs and gradients of a fixed random linear functional of them."""
    x = leaves(inputs)
    out = run(backend, x, softplus=softplus, last=last, chunk_size=chunk_size)
    y, h_last = out if last else (out, None)
    g = torch.Generator().manual_seed(1234)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum()
    result = {"y": y}
    if last:
        loss = loss + (h_last.double() * torch.randn(h_last.shape, generator=g, dtype=torch.float64)).sum()
        result["h_last"] = h_last
    names = [k for k in ARG_NAMES if x[k] is not None]
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    result.update({f"grad_{k}": gr for k, gr in zip(names, grads)})
    return result


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_close_to_reference(inputs, *, softplus: bool, last: bool, tol: float, chunk_size: Optional[int] = None) -> None:
    ref = outputs_and_grads("reference", inputs, softplus=softplus, last=last)
    got = outputs_and_grads("torch", inputs, softplus=softplus, last=last, chunk_size=chunk_size)
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key].shape == ref[key].shape, key
        assert got[key].dtype == ref[key].dtype, key
        err = rel_err(got[key], ref[key])
        assert err < tol, f"{key}: relative error {err:.3g} >= {tol:g}"


# ------------------------------------------------------------ torch vs reference


@pytest.mark.parametrize("length", [1, 7, 33, 64, 100])
@pytest.mark.parametrize("groups", [None, 1, 2, 4])
def test_torch_matches_reference_all_features(length: int, groups: Optional[int]) -> None:
    inputs = make_inputs(length=length, groups=groups, seed=100 * length + (groups or 0))
    assert_close_to_reference(inputs, softplus=True, last=True, tol=1e-10)


@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("last", [False, True])
def test_torch_matches_reference_optional_features(with_D, with_z, with_bias, softplus, last) -> None:
    seed = 16 * with_D + 8 * with_z + 4 * with_bias + 2 * softplus + last
    inputs = make_inputs(
        length=33, groups=2, seed=seed, with_D=with_D, with_z=with_z, with_bias=with_bias, softplus=softplus
    )
    assert_close_to_reference(inputs, softplus=softplus, last=last, tol=1e-10)


@pytest.mark.parametrize("groups_b,groups_c", [(None, 2), (4, None), (2, 4), (8, 1)])
def test_torch_matches_reference_different_groups_for_B_and_C(groups_b, groups_c) -> None:
    inputs = make_inputs(length=29, groups=groups_b, groups_c=groups_c, seed=7)
    assert_close_to_reference(inputs, softplus=True, last=True, tol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 24, 40, 200])
def test_torch_any_chunk_size_matches_reference(chunk_size: int) -> None:
    inputs = make_inputs(length=40, groups=2, seed=chunk_size)
    assert_close_to_reference(inputs, softplus=True, last=True, tol=1e-10, chunk_size=chunk_size)


def test_chunked_rejects_bad_chunk_size() -> None:
    inputs = make_inputs(length=5)
    with pytest.raises(ValueError, match="chunk_size"):
        run("torch", inputs, chunk_size=0)


def test_default_chunk_size_is_ceil_sqrt() -> None:
    for length in [1, 2, 3, 4, 5, 99, 100, 101, 1000, 1024, 1025, 4096]:
        assert default_chunk_size(length) == math.ceil(math.sqrt(length)), length


def test_torch_backward_passes_gradcheck() -> None:
    x = leaves(make_inputs(batch=1, dim=4, length=6, dstate=2, groups=2, seed=3))
    args = tuple(x[k] for k in ARG_NAMES)

    def f(*a):
        y, h = selective_scan_chunked(*a, True, True, chunk_size=4)
        return y, h

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_only_last_state_used_in_loss() -> None:
    # the output gradient is None inside the custom backward in this case
    x_t = leaves(make_inputs(length=21, seed=5))
    x_r = leaves(make_inputs(length=21, seed=5))
    _, h_t = run("torch", x_t, last=True)
    _, h_r = run("reference", x_r, last=True)
    h_t.square().sum().backward()
    h_r.square().sum().backward()
    for k in ARG_NAMES:
        if k in ("C", "D", "z"):  # they do not influence the state
            for grad in (x_t[k].grad, x_r[k].grad):
                assert grad is None or torch.count_nonzero(grad) == 0, k
            continue
        assert rel_err(x_t[k].grad, x_r[k].grad) < 1e-10, k


# ------------------------------------------------------- reference vs definition


def direct_scan(inp, softplus: bool):
    """Triple loop over (b, d, t, n) in Python floats: the definition, verbatim."""
    u, delta, A, B, C = (inp[k].tolist() for k in ("u", "delta", "A", "B", "C"))
    D, z, bias = (inp[k].tolist() for k in ("D", "z", "delta_bias"))
    batch, dim, length = inp["u"].shape
    dstate = inp["A"].shape[1]
    groups = inp["B"].shape[1]
    ys = [[[0.0] * length for _ in range(dim)] for _ in range(batch)]
    last = [[[0.0] * dstate for _ in range(dim)] for _ in range(batch)]
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = [0.0] * dstate
            for t in range(length):
                dt = delta[b][d][t] + bias[d]
                if softplus:
                    dt = math.log1p(math.exp(dt))
                for n in range(dstate):
                    h[n] = math.exp(dt * A[d][n]) * h[n] + dt * B[b][g][n][t] * u[b][d][t]
                y = sum(C[b][g][n][t] * h[n] for n in range(dstate)) + D[d] * u[b][d][t]
                zz = z[b][d][t]
                ys[b][d][t] = y * zz / (1.0 + math.exp(-zz))
            last[b][d] = h
    return torch.tensor(ys, dtype=torch.float64), torch.tensor(last, dtype=torch.float64)


@pytest.mark.parametrize("softplus", [False, True])
def test_reference_matches_hand_written_definition(softplus: bool) -> None:
    inp = make_inputs(batch=2, dim=4, length=5, dstate=3, groups=2, seed=11, softplus=softplus)
    y_ref, h_ref = selective_scan_ref(*(inp[k] for k in ARG_NAMES), softplus, True)
    y_dir, h_dir = direct_scan(inp, softplus)
    torch.testing.assert_close(y_ref, y_dir, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_ref, h_dir, rtol=1e-12, atol=1e-12)


def test_reference_ungrouped_equals_single_group() -> None:
    inp = make_inputs(length=9, groups=None, seed=2)
    grouped = dict(inp, B=inp["B"][:, None], C=inp["C"][:, None])
    y3 = run("reference", inp)
    y4 = run("reference", grouped)
    torch.testing.assert_close(y3, y4, rtol=0, atol=0)


# ------------------------------------------------------------- property test


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 2),
    groups=st.sampled_from([None, 1, 2]),
    per_group=st.integers(1, 3),
    dstate=st.integers(1, 4),
    length=st.one_of(st.just(1), st.integers(1, 12).map(lambda k: 2 * k + 1), st.integers(1, 40)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    softplus=st.booleans(),
    last=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_torch_equals_reference(batch, groups, per_group, dstate, length, dtype, softplus, last, seed) -> None:
    dim = (groups or 1) * per_group
    inputs = make_inputs(batch, dim, length, dstate, groups, seed=seed, dtype=dtype, softplus=softplus)
    ref = run("reference", inputs, softplus=softplus, last=last)
    got = run("torch", inputs, softplus=softplus, last=last)
    ref, got = (ref, got) if last else ((ref,), (got,))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype
        assert rel_err(g, r) < tol


# ------------------------------------------------------- low precision & stability


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(backend: str, dtype: torch.dtype) -> None:
    low = make_inputs(length=37, groups=2, seed=21, dtype=dtype)
    as_fp32 = {k: (None if v is None else v.float()) for k, v in low.items()}
    x = leaves(low)
    y, h_last = run(backend, x, last=True)
    assert y.dtype == dtype
    assert h_last.dtype == torch.float32  # state is accumulated in fp32
    assert torch.isfinite(y).all()
    y32 = run(backend, as_fp32)
    assert rel_err(y.float(), y32) < 1e-2
    y.float().square().sum().backward()
    for k in ARG_NAMES:
        assert x[k].grad is not None and x[k].grad.dtype == dtype, k
        assert torch.isfinite(x[k].grad).all(), k


def test_mixed_dtypes_compute_in_float64_when_any_is_float64() -> None:
    inp = make_inputs(length=10, seed=4, dtype=torch.float32)
    inp["A"] = inp["A"].double()
    y, h_last = run("torch", inp, last=True)
    assert y.dtype == torch.float32
    assert h_last.dtype == torch.float64


@pytest.mark.parametrize("length", [1, 50, 130])
def test_large_decays_are_stable(length: int) -> None:
    inp = make_inputs(length=length, groups=2, seed=9, softplus=False, with_bias=False)
    g = torch.Generator().manual_seed(0)
    inp["delta"] = 20.0 + torch.rand(inp["delta"].shape, generator=g, dtype=torch.float64)  # dt ~ 20
    inp["A"] = -50.0 * (1.0 + torch.rand(inp["A"].shape, generator=g, dtype=torch.float64))  # dt*A ~ -1000..-2000
    # keep a few slow channels so the carried state matters too
    inp["A"][::3] = -1e-3
    inp["delta"][:, ::3] = 0.01
    for dtype in (torch.float32, torch.float64):
        cast = {k: (None if v is None else v.to(dtype)) for k, v in inp.items()}
        ref = outputs_and_grads("reference", cast, softplus=False, last=True)
        got = outputs_and_grads("torch", cast, softplus=False, last=True)
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        for key in ref:
            assert torch.isfinite(got[key]).all(), key
            assert rel_err(got[key], ref[key]) < tol, key


# ---------------------------------------------------------------- dispatcher


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    return monkeypatch


@pytest.fixture
def spy_backend():
    """A CPU backend that records its calls and delegates to the reference."""
    calls: List[str] = []

    def spy(*args, **kwargs):
        calls.append("spy")
        return selective_scan_ref(*args, **kwargs)

    register_backend("spy", spy, supports=lambda device: True, priority=-100)
    try:
        yield calls
    finally:
        unregister_backend("spy")


@pytest.fixture
def cuda_only_backend():
    def never_called(*args, **kwargs):
        raise AssertionError("must not run on CPU")

    register_backend("cuda_dummy", never_called, supports=lambda device: device.type == "cuda", priority=1000)
    try:
        yield "cuda_dummy"
    finally:
        unregister_backend("cuda_dummy")


def small_args():
    inp = make_inputs(length=6, seed=0)
    return [inp[k] for k in ARG_NAMES]


def test_builtin_backends_registered() -> None:
    assert available_backends("cpu")[:2] == ["torch", "reference"]
    assert set(available_backends()) >= {"torch", "reference"}


def test_default_backend_on_cpu_is_torch(clean_env) -> None:
    assert get_backend_name("cpu") == "torch"
    assert get_backend_name() == "torch"
    assert resolve_backend() == "torch"
    assert resolve_backend("auto", "cpu") == "torch"


@pytest.mark.parametrize("value", ["", "auto", "  auto "])
def test_env_var_auto_or_empty_means_default(clean_env, value: str) -> None:
    clean_env.setenv(BACKEND_ENV_VAR, value)
    assert get_backend_name("cpu") == "torch"


def test_env_var_selects_backend(clean_env, spy_backend) -> None:
    clean_env.setenv(BACKEND_ENV_VAR, "spy")
    assert get_backend_name("cpu") == "spy"
    y = selective_scan_fn(*small_args())
    assert spy_backend == ["spy"]
    assert y.shape == (2, 8, 6)
    clean_env.setenv(BACKEND_ENV_VAR, "reference")
    assert get_backend_name("cpu") == "reference"


def test_explicit_argument_beats_env_var(clean_env, spy_backend) -> None:
    clean_env.setenv(BACKEND_ENV_VAR, "spy")
    selective_scan_fn(*small_args(), backend="torch")
    assert spy_backend == []
    assert resolve_backend("reference", "cpu") == "reference"
    selective_scan_fn(*small_args(), backend="auto")  # auto falls back to the env var
    assert spy_backend == ["spy"]


def test_unknown_backend_name(clean_env) -> None:
    with pytest.raises(ValueError, match="nope") as info:
        selective_scan_fn(*small_args(), backend="nope")
    assert "'torch'" in str(info.value) and "'reference'" in str(info.value)
    clean_env.setenv(BACKEND_ENV_VAR, "nope")
    with pytest.raises(ValueError, match=BACKEND_ENV_VAR):
        selective_scan_fn(*small_args())
    with pytest.raises(ValueError, match="known backends"):
        resolve_backend("also-nope")


def test_use_backend_context(clean_env, spy_backend) -> None:
    assert get_backend_name() == "torch"
    with use_backend("spy"):
        assert get_backend_name() == "spy"
        selective_scan_fn(*small_args())
        with use_backend("reference"):
            assert get_backend_name() == "reference"
        with use_backend("auto"):
            assert get_backend_name() == "torch"
        assert get_backend_name() == "spy"
        selective_scan_fn(*small_args(), backend="torch")  # explicit argument wins
    assert spy_backend == ["spy"]
    assert get_backend_name() == "torch"
    clean_env.setenv(BACKEND_ENV_VAR, "reference")
    with use_backend("spy"):  # the block beats the environment variable
        assert get_backend_name() == "spy"
    assert get_backend_name() == "reference"


def test_use_backend_restores_after_exception(clean_env) -> None:
    with pytest.raises(KeyError):
        with use_backend("reference"):
            raise KeyError("boom")
    assert get_backend_name() == "torch"


def test_use_backend_unknown_name() -> None:
    with pytest.raises(ValueError, match="nope"):
        with use_backend("nope"):
            pass


def test_use_backend_is_thread_local(clean_env) -> None:
    seen: List[str] = []
    with use_backend("reference"):
        worker = threading.Thread(target=lambda: seen.append(get_backend_name()))
        worker.start()
        worker.join()
        assert get_backend_name() == "reference"
    assert seen == ["torch"]


def test_backend_not_supporting_device(clean_env, cuda_only_backend) -> None:
    assert cuda_only_backend in available_backends()
    assert cuda_only_backend not in available_backends("cpu")
    assert get_backend_name("cpu") == "torch"  # its high priority does not matter on CPU
    assert get_backend_name("cuda") == cuda_only_backend  # no GPU needed to resolve
    with pytest.raises(RuntimeError, match="does not support device cpu") as info:
        selective_scan_fn(*small_args(), backend=cuda_only_backend)
    assert "'torch'" in str(info.value)
    clean_env.setenv(BACKEND_ENV_VAR, cuda_only_backend)
    with pytest.raises(RuntimeError, match="cuda_dummy"):
        get_backend_name("cpu")


def test_unregistered_backend_disappears() -> None:
    register_backend("temp", selective_scan_ref, priority=-5)
    assert "temp" in available_backends("cpu")
    unregister_backend("temp")
    assert "temp" not in available_backends()
    with pytest.raises(ValueError, match="temp"):
        resolve_backend("temp")
    with pytest.raises(ValueError):
        unregister_backend("temp")


def test_priority_decides_default(clean_env) -> None:
    calls: List[int] = []

    def preferred(*args, **kwargs):
        calls.append(1)
        return selective_scan_chunked(*args, **kwargs)

    register_backend("preferred", preferred, priority=50)
    try:
        assert get_backend_name("cpu") == "preferred"
        selective_scan_fn(*small_args())
        assert calls == [1]
    finally:
        unregister_backend("preferred")
    assert get_backend_name("cpu") == "torch"


def test_register_backend_rejects_duplicates_and_reserved_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backend("torch", selective_scan_ref)
    with pytest.raises(ValueError, match="invalid"):
        register_backend("auto", selective_scan_ref)
    with pytest.raises(ValueError, match="invalid"):
        register_backend("", selective_scan_ref)
    register_backend("dup", selective_scan_ref)
    try:
        register_backend("dup", selective_scan_chunked, replace=True, priority=-1)
        assert "dup" in available_backends("cpu")
    finally:
        unregister_backend("dup")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_every_backend_differentiates_all_inputs(backend: str) -> None:
    x = leaves(make_inputs(length=12, groups=2, seed=8, dtype=torch.float32))
    y = selective_scan_fn(*(x[k] for k in ARG_NAMES), delta_softplus=True, backend=backend)
    y.sum().backward()
    for k in ARG_NAMES:
        assert x[k].grad is not None, k
        assert x[k].grad.shape == x[k].shape, k
        assert torch.count_nonzero(x[k].grad) > 0, k


# ---------------------------------------------------------------- validation


def shapes_error(**overrides):
    inp = make_inputs(batch=2, dim=4, length=10, dstate=3, groups=None, seed=0)
    inp.update(overrides)
    return [inp[k] for k in ARG_NAMES]


@pytest.mark.parametrize("fn", [selective_scan_fn, selective_scan_ref, selective_scan_chunked])
def test_wrong_rank_of_u(fn) -> None:
    with pytest.raises(ValueError) as info:
        fn(*shapes_error(u=torch.zeros(4, 10, dtype=torch.float64)))
    msg = str(info.value)
    assert "'u'" in msg and "(batch, Dm, L)" in msg and "(4, 10)" in msg


@pytest.mark.parametrize(
    "name,value,fragments",
    [
        ("delta", torch.zeros(2, 4, 9), ["'delta'", "(2, 4, 10)", "got shape (2, 4, 9)"]),
        ("A", torch.zeros(5, 3), ["'A'", "(Dm, N) = (4, N)", "(5, 3)"]),
        ("A", torch.zeros(4), ["'A'", "got shape (4,)"]),
        ("B", torch.zeros(2, 3, 9), ["'B'", "(batch, N, L) = (2, 3, 10)", "(2, 3, 9)"]),
        ("B", torch.zeros(2, 3), ["'B'", "3-D or 4-D", "(2, 3)"]),
        ("C", torch.zeros(2, 2, 4, 10), ["'C'", "(batch, G, N, L) = (2, G, 3, 10)", "(2, 2, 4, 10)"]),
        ("D", torch.zeros(3), ["'D'", "(Dm,) = (4,)", "(3,)"]),
        ("delta_bias", torch.zeros(4, 1), ["'delta_bias'", "(4, 1)"]),
        ("z", torch.zeros(2, 4, 11), ["'z'", "(2, 4, 10)", "(2, 4, 11)"]),
    ],
)
def test_wrong_shapes_name_argument_and_shapes(name, value, fragments) -> None:
    with pytest.raises(ValueError) as info:
        selective_scan_fn(*shapes_error(**{name: value.double()}))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize("name", ["B", "C"])
def test_groups_must_divide_channels(name: str) -> None:
    with pytest.raises(ValueError) as info:
        selective_scan_fn(*shapes_error(**{name: torch.zeros(2, 3, 3, 10, dtype=torch.float64)}))
    msg = str(info.value)
    assert f"'{name}'" in msg and "G = 3" in msg and "Dm = 4" in msg and "Dm % G" in msg


def test_device_mismatch() -> None:
    with pytest.raises(ValueError, match="same device") as info:
        selective_scan_fn(*shapes_error(A=torch.zeros(4, 3, dtype=torch.float64, device="meta")))
    assert "'A'" in str(info.value) and "meta" in str(info.value)


def test_non_float_and_non_tensor_inputs() -> None:
    with pytest.raises(ValueError, match="'u'.*floating"):
        selective_scan_fn(*shapes_error(u=torch.zeros(2, 4, 10, dtype=torch.int64)))
    with pytest.raises(TypeError, match="'B'"):
        selective_scan_fn(*shapes_error(B=[[0.0]]))


def test_triton_mamba_computes_float64_with_the_exact_chunked_scan():
    """Neither kernel of the triton_mamba pairing computes in float64: such calls take the torch scan."""
    from m3amba.ops.selective_scan.hybrid import selective_scan_triton_mamba

    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 6, 9, generator=g, dtype=torch.float64)
    delta = torch.rand(2, 6, 9, generator=g, dtype=torch.float64)
    A = -torch.rand(6, 4, generator=g, dtype=torch.float64)
    B, C = (torch.randn(2, 2, 4, 9, generator=g, dtype=torch.float64) for _ in range(2))
    got = selective_scan_triton_mamba(u, delta, A, B, C, delta_softplus=True)
    ref = selective_scan_fn(u, delta, A, B, C, delta_softplus=True, backend="reference")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
