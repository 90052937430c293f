"""Tests of the Triton selective-scan backend ("triton").

* GPU tests (``@pytest.mark.gpu``, skipped without CUDA): forward and gradients
  against the float64 reference for fp32 / bf16, several shapes, optional
  inputs on and off, output buffers poisoned with NaN; ``torch.compile``
  (``fullgraph=True``) of a function that calls ``selective_scan_fn``.
* CPU test: the same kernels under Triton's interpreter
  (``TRITON_INTERPRET=1``) in a subprocess, at tiny shapes.
"""

from __future__ import annotations

import importlib.util
import textwrap
from typing import Dict, Optional

import pytest
import torch

from _triton_interp import SCRIPT_PREAMBLE, run_under_interpreter
from m3amba.ops.selective_scan import available_backends, selective_scan_fn

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None


def make_inputs(batch, dim, length, dstate, groups, *, dtype, device, seed=0, with_D=True, with_z=True,
                with_bias=True, softplus=True) -> Dict[str, Optional[torch.Tensor]]:
    """Random inputs (created in float64 on the CPU, then cast); ``groups=None``: 3-D B/C."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def bc():
        return randn(batch, dstate, length) if groups is None else randn(batch, groups, dstate, length)

    delta = randn(batch, dim, length) * 0.7 if softplus else torch.rand(batch, dim, length, generator=g, dtype=torch.float64)
    x = {
        "u": randn(batch, dim, length),
        "delta": delta,
        "A": -torch.exp(randn(dim, dstate) * 0.7),
        "B": bc(),
        "C": bc(),
        "D": randn(dim) if with_D else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": torch.rand(dim, generator=g, dtype=torch.float64) * 0.3 if with_bias else None,
    }
    return {k: (None if v is None else v.to(device=device, dtype=dtype)) for k, v in x.items()}


def outputs_and_grads(backend, inputs, *, softplus, last=True, upcast=False, **launch):
    """Outputs and the gradients of a fixed random functional of them (loss in float64).

    ``launch``: keyword options of ``selective_scan_triton`` (then called directly; backend "triton").
    """
    x = {k: (None if v is None else (v.double() if upcast else v).detach().clone().requires_grad_(True))
         for k, v in inputs.items()}
    args = [x[k] for k in ARG_NAMES]
    if launch:
        from m3amba.ops.selective_scan.triton_scan import selective_scan_triton

        assert backend == "triton", "launch options are the Triton backend's"
        out = selective_scan_triton(*args, softplus, last, **launch)
    else:
        out = selective_scan_fn(*args, delta_softplus=softplus, return_last_state=last, backend=backend)
    y, h_last = out if last else (out, None)
    g = torch.Generator().manual_seed(1234)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    res = {"y": y}
    if last:
        loss = loss + (h_last.double() * torch.randn(h_last.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
        res["h_last"] = h_last
    names = [k for k in ARG_NAMES if x[k] is not None]
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    res.update({f"grad_{k}": gr for k, gr in zip(names, grads)})
    return res


def rel_err(a, b) -> float:
    a, b = a.double(), b.double().to(a.device)
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")


SHAPES = [  # batch, Dm, L, N, G
    (2, 64, 1, 16, 4),
    (2, 64, 37, 16, 1),
    (1, 128, 129, 16, 4),
    (2, 256, 1024, 16, 4),
    (1, 96, 65, 5, 3),  # N not a power of two, Dm / G = 32
    (2, 24, 50, 8, None),  # 3-D B/C, Dm not a multiple of 32
]


def _check_against_reference(dtype, tol, shape, features) -> None:
    batch, dim, length, dstate, groups = shape
    opts = dict(all={}, none=dict(with_D=False, with_z=False, with_bias=False),
                z_only=dict(with_D=False, with_bias=False), no_softplus=dict(softplus=False))[features]
    softplus = opts.get("softplus", True)
    inputs = make_inputs(batch, dim, length, dstate, groups, dtype=dtype, device="cuda",
                         seed=length + dim, **opts)
    got = outputs_and_grads("triton", inputs, softplus=softplus)
    ref = outputs_and_grads("reference", inputs, softplus=softplus, upcast=True)
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key].shape == ref[key].shape, key
        expected_dtype = inputs[key[5:]].dtype if key.startswith("grad_") else (
            dtype if key == "y" else torch.float32)
        assert got[key].dtype == expected_dtype, key
        assert torch.isfinite(got[key]).all(), f"{key}: non-finite values (unwritten output?)"
        err = rel_err(got[key], ref[key])
        assert err <= tol, f"{key}: relative error {err:.3g} > {tol:g}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_reference(poisoned, dtype, tol, shape) -> None:
    _check_against_reference(dtype, tol, shape, "all")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("features", ["none", "z_only", "no_softplus"])
def test_triton_matches_reference_optional_inputs(poisoned, dtype, tol, features) -> None:
    _check_against_reference(dtype, tol, (2, 128, 77, 16, 4), features)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("chunk,bwd_v", [(16, 2), (32, 4), (128, 4)])
def test_triton_launch_parameters(poisoned, chunk, bwd_v) -> None:
    from m3amba.ops.selective_scan.triton_scan import selective_scan_triton

    inputs = make_inputs(2, 128, 300, 16, 2, dtype=torch.float32, device="cuda", seed=3)
    ref = outputs_and_grads("reference", inputs, softplus=True, upcast=True)
    x = {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}
    y = selective_scan_triton(*[x[k] for k in ARG_NAMES], True, False, chunk=chunk, bwd_v=bwd_v,
                              fwd_num_warps=2, bwd_num_warps=2)
    assert rel_err(y, ref["y"]) <= 1e-5


LANE_SHAPES = [  # batch, Dm, L, N, G: every one has 32 | Dm / G
    (2, 128, 77, 16, 4),
    (1, 96, 65, 5, 3),
    (2, 256, 1024, 16, 4),
    (3, 64, 200, 16, 1),
    (2, 64, 50, 8, None),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", LANE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("features", ["all", "none", "no_softplus"])
def test_triton_lane_backward_matches_reference(poisoned, dtype, tol, shape, features) -> None:
    """The lane backward (forced) against the float64 reference; gate-free calls only."""
    batch, dim, length, dstate, groups = shape
    opts = dict(all={}, none=dict(with_D=False, with_bias=False), no_softplus=dict(softplus=False))[features]
    softplus = opts.pop("softplus", True)
    inputs = make_inputs(batch, dim, length, dstate, groups, dtype=dtype, device="cuda", seed=length + dim,
                         with_z=False, softplus=softplus, **opts)
    got = outputs_and_grads("triton", inputs, softplus=softplus, bwd_kernel="lane")
    ref = outputs_and_grads("reference", inputs, softplus=softplus, upcast=True)
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key].shape == ref[key].shape, key
        assert torch.isfinite(got[key]).all(), f"{key}: non-finite values (unwritten output?)"
        err = rel_err(got[key], ref[key])
        assert err <= tol, f"{key}: relative error {err:.3g} > {tol:g}"


@pytest.mark.gpu
@gpu
def test_triton_backward_kernel_choice() -> None:
    """auto = the lane backward for a gate-free call with 32 | Dm / G (bitwise), the tile one with a gate."""
    inputs = make_inputs(2, 128, 100, 16, 4, dtype=torch.bfloat16, device="cuda", seed=11, with_z=False)
    auto, lane, tile = (outputs_and_grads("triton", inputs, softplus=True, bwd_kernel=k)
                        for k in ("auto", "lane", "tile"))
    for key in auto:
        assert torch.equal(auto[key], lane[key]), key
    assert rel_err(lane["grad_B"], tile["grad_B"]) <= 1e-2
    gated = make_inputs(2, 128, 100, 16, 4, dtype=torch.float32, device="cuda", seed=12)
    by_default = outputs_and_grads("triton", gated, softplus=True)
    by_tile = outputs_and_grads("triton", gated, softplus=True, bwd_kernel="tile")
    assert all(torch.equal(by_default[k], by_tile[k]) for k in by_default)
    with pytest.raises(ValueError, match="lane backward"):
        outputs_and_grads("triton", gated, softplus=True, bwd_kernel="lane")


@pytest.mark.gpu
@gpu
def test_triton_registered_above_torch_on_cuda() -> None:
    names = available_backends("cuda")
    assert "triton" in names and names.index("triton") < names.index("torch")
    assert "triton" not in available_backends("cpu")


def _compile_and_compare(scan) -> None:
    torch._dynamo.reset()

    def f(u, delta, A, B, C, D, z, bias):
        y, h = scan(u, delta, A, B, C, D, z, bias)
        return (y * 2).sum() + h.sum()

    inputs = make_inputs(2, 64, 40, 16, 2, dtype=torch.float32, device="cuda", seed=7)
    args = [inputs[k].detach().clone().requires_grad_(True) for k in ARG_NAMES]
    loss = torch.compile(f, fullgraph=True)(*args)
    loss.backward()
    eager_args = [a.detach().clone().requires_grad_(True) for a in args]
    ref = f(*eager_args)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(args, eager_args):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@gpu
def test_triton_torch_compile_fullgraph_custom_op() -> None:
    """The kernels are opaque custom ops with fake implementations: no graph break."""
    from m3amba.ops.selective_scan.triton_scan import selective_scan_triton

    _compile_and_compare(lambda *a: selective_scan_triton(*a, delta_softplus=True, return_last_state=True))


@pytest.mark.gpu
@gpu
@pytest.mark.xfail(
    raises=torch._dynamo.exc.Unsupported, strict=False,
    reason="dispatching (environment variable, context variable) inside a compiled region may still "
           "graph-break; the registry lock that certainly did is gone (XPASS = no graph break)",
)
def test_triton_torch_compile_fullgraph_dispatcher() -> None:
    _compile_and_compare(lambda *a: selective_scan_fn(*a, delta_softplus=True, return_last_state=True,
                                                      backend="triton"))


# ----------------------------------------------------------------------------- CPU (interpreter)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_bwd_kernel_argument_checked() -> None:
    """A misspelt backward kernel, or the lane kernel where it cannot serve, fails at the call."""
    from m3amba.ops.selective_scan.triton_bwd_lane import lane_bwd_supported
    from m3amba.ops.selective_scan.triton_scan import selective_scan_triton

    args = [v for v in make_inputs(1, 64, 16, 4, 2, dtype=torch.float32, device="cpu").values()]
    with pytest.raises(ValueError, match="bwd_kernel must be one of"):
        selective_scan_triton(*args, bwd_kernel="fast")
    with pytest.raises(ValueError, match="gate-free"):
        selective_scan_triton(*args, bwd_kernel="lane")  # these inputs have a gate z
    assert lane_bwd_supported(3072, 4, 4, False, 64)
    assert not lane_bwd_supported(3072, 4, 4, True, 64)  # gate
    assert not lane_bwd_supported(64, 4, 4, False, 64)  # 16 channels a group
    assert not lane_bwd_supported(128, 4, 4, False, 20)  # chunk not a multiple of 8

# shared start of this file's interpreter scripts
_SCRIPT_PREAMBLE = SCRIPT_PREAMBLE + "from test_selective_scan_triton import ARG_NAMES, make_inputs, rel_err\n"

_INTERPRETER_SCRIPT = _SCRIPT_PREAMBLE + textwrap.dedent(
    """
    from m3amba.ops.selective_scan.reference import selective_scan_ref
    triton_scan.POISON_OUTPUTS = True

    def run(fn, inputs, softplus, upcast):
        x = {k: (None if v is None else (v.double() if upcast else v).detach().clone().requires_grad_(True))
             for k, v in inputs.items()}
        y, h = fn(*[x[k] for k in ARG_NAMES], softplus, True)
        g = torch.Generator().manual_seed(5)
        loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum()
        loss = loss + (h.double() * torch.randn(h.shape, generator=g, dtype=torch.float64)).sum()
        names = [k for k in ARG_NAMES if x[k] is not None]
        res = dict(zip(["grad_" + k for k in names], torch.autograd.grad(loss, [x[k] for k in names])))
        res.update(y=y, h_last=h)
        return res

    results = []
    cases = [
        # (L, groups, options, softplus, launch parameters)
        (5, 2, {}, True, dict(chunk=16, fwd_j=2, bwd_j=2, bwd_v=2)),
        (37, 2, {}, True, dict(chunk=16, fwd_j=2, bwd_j=2, bwd_v=2)),
        (37, None, dict(with_D=False, with_z=False, with_bias=False), False, dict(chunk=8, fwd_j=1, bwd_v=4)),
        (37, 1, dict(with_D=False, with_bias=False), True, dict()),
    ]
    # the lane backward (one lane a channel: 32 | Dm / G), with Dm = 64: N 5 (masked states) and
    # L 24 (a ragged last sub-chunk), N 4 and L 32 (the unmasked EVEN path), 3-D B/C
    lane = dict(chunk=16, bwd_kernel="lane")
    cases += [
        (24, 2, dict(with_z=False, dim=64, dstate=5), True, lane),
        (32, 1, dict(with_z=False, with_D=False, dim=64, batch=2), True, lane),
        (21, None, dict(with_z=False, with_bias=False, dim=64), False, lane),
    ]
    for length, groups, opts, softplus, cfg in cases:
        opts = dict(opts)
        shape = dict(batch=opts.pop("batch", 1), dim=opts.pop("dim", 8), dstate=opts.pop("dstate", 4))
        inputs = make_inputs(shape["batch"], shape["dim"], length, shape["dstate"], groups, dtype=torch.float32,
                             device="cpu", seed=length, softplus=softplus, **opts)
        fn = lambda *a: triton_scan.selective_scan_triton(*a, **cfg)
        got = run(fn, inputs, softplus, False)
        ref = run(selective_scan_ref, inputs, softplus, True)
        errs = {k: rel_err(got[k], ref[k]) for k in ref}
        finite = all(bool(torch.isfinite(v).all()) for v in got.values())
        results.append({"case": [length, groups, sorted(opts), shape, softplus, cfg.get("bwd_kernel", "auto")],
                        "errs": errs, "finite": finite})
    print(json.dumps({"results": results}))
    """
)


_COMPILE_SCRIPT = _SCRIPT_PREAMBLE + textwrap.dedent(
    """
    def f(u, delta, A, B, C, D, bias):
        y = triton_scan.selective_scan_triton(u, delta, A, B, C, D, None, bias, True, chunk=16)
        return (y * y).sum()

    inputs = make_inputs(1, 64, 32, 4, 2, dtype=torch.float32, device="cpu", seed=9, with_z=False)
    names = [k for k in ARG_NAMES if k != "z"]
    args = [inputs[k].clone().requires_grad_(True) for k in names]
    torch.compile(f, fullgraph=True)(*args).backward()
    eager = [inputs[k].clone().requires_grad_(True) for k in names]
    f(*eager).backward()
    print(json.dumps({"errs": {k: rel_err(a.grad, b.grad) for k, a, b in zip(names, args, eager)}}))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_custom_ops_compile_under_interpreter(tmp_path) -> None:
    """torch.compile (fullgraph) lowers the forward and backward custom ops (inductor's fallback
    kernels) and gives eager's gradients; the kernels run under the interpreter on CPU (~15 s)."""
    payload = run_under_interpreter(_COMPILE_SCRIPT, tmp_path, __file__, timeout=300)
    for key, err in payload["errs"].items():
        assert err <= 1e-5, f"grad {key}: relative error {err:.3g}"


@pytest.mark.timeout(120) if importlib.util.find_spec("pytest_timeout") else (lambda f: f)
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_under_interpreter(tmp_path) -> None:
    """Forward and all gradients of the kernels (both backwards), run by Triton's CPU interpreter (~20-30 s)."""
    payload = run_under_interpreter(_INTERPRETER_SCRIPT, tmp_path, __file__)
    for res in payload["results"]:
        assert res["finite"], f"{res['case']}: non-finite output (unwritten element?)"
        for key, err in res["errs"].items():
            assert err <= 1e-5, f"{res['case']} {key}: relative error {err:.3g}"
