"""The SS2D core ``selective_scan_2d``: its fused Triton path against the composition that defines it.

* CPU: the position table, argument checks, and the fused kernels under Triton's interpreter.
* GPU (``@pytest.mark.gpu``): the fused kernels against the float64 composition, poisoned output
  buffers, ``torch.compile`` with fullgraph, and an SS2D layer with and without fusion.
"""
from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch

from _triton_interp import SCRIPT_PREAMBLE, run_under_interpreter
from m3amba.ops.cross_scan import cross_scan
from m3amba.ops.selective_scan.scan2d import FUSED_ENV_VAR, cross_scan_positions, selective_scan_2d
from test_selective_scan_triton import rel_err

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
ARGS = ("feats", "dt_low", "dt_weight", "A", "Bs", "Cs", "D", "delta_bias")


def make_inputs(batch, height, width, di, dstate, rank, *, seed=0, with_D=True, with_bias=True, dtype=torch.float64,
                device="cpu"):
    """Random arguments of ``selective_scan_2d`` (made in float64 on the CPU, then cast)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    length = height * width
    x = dict(
        feats=randn(batch, height, width, di), dt_low=randn(batch, 4, rank, length) * 0.5,
        dt_weight=randn(4, di, rank) * 0.5, A=-torch.exp(randn(4 * di, dstate) * 0.5),
        Bs=randn(batch, 4, dstate, length), Cs=randn(batch, 4, dstate, length),
        D=randn(4 * di) if with_D else None, delta_bias=randn(4 * di) * 0.3 if with_bias else None,
    )
    return {k: (None if v is None else v.to(device=device, dtype=dtype)) for k, v in x.items()}


def output_and_grads(fn, inputs, dtype=None):
    """``fn(**tensors)``'s output and the gradients of a fixed random functional of it (float64 loss)."""
    x = {k: (None if v is None else (v.to(dtype) if dtype else v).detach().clone().requires_grad_(True))
         for k, v in inputs.items()}
    y = fn(**x)
    g = torch.Generator().manual_seed(1234)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    names = [k for k in ARGS if x[k] is not None]
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    return {"y": y, **{f"grad_{k}": gr for k, gr in zip(names, grads)}}


# ----------------------------------------------------------------------------- CPU


def test_positions_index_the_cross_scan() -> None:
    h, w = 3, 5
    m = torch.randn(2, 6, h, w)
    perm = cross_scan_positions(h, w, torch.device("cpu"))
    assert perm.shape == (4, h * w) and perm.dtype == torch.int32
    xs = cross_scan(m)
    for k in range(4):
        assert torch.equal(xs[:, k], m.flatten(2)[:, :, perm[k].long()])


def test_selective_scan_2d_checks_its_arguments() -> None:
    x = make_inputs(1, 3, 4, 8, 4, 2)
    with pytest.raises(ValueError, match="dt_low must be"):
        selective_scan_2d(**dict(x, dt_low=x["dt_low"].transpose(-1, -2)))
    with pytest.raises(ValueError, match="Bs must be"):
        selective_scan_2d(**dict(x, Bs=x["Bs"][:, :2]))
    with pytest.raises(ValueError, match="feats must be"):
        selective_scan_2d(**dict(x, feats=x["feats"][0]))
    with pytest.raises(ValueError, match="fused=True needs"):
        selective_scan_2d(**x, fused=True)  # CPU: no fused kernels


def test_composition_is_what_the_backends_compute() -> None:
    """The composition gives one answer whichever CPU backend scans (and ignores fused=None/False)."""
    x = make_inputs(2, 3, 4, 8, 4, 2, seed=3)
    ref = selective_scan_2d(**x, backend="reference")
    torch.testing.assert_close(selective_scan_2d(**x, backend="torch", fused=False), ref, rtol=1e-10, atol=1e-10)


_INTERPRETER_SCRIPT = SCRIPT_PREAMBLE + textwrap.dedent(
    """
    from test_scan2d import make_inputs, output_and_grads, rel_err
    from m3amba.ops.selective_scan.scan2d import cross_scan_positions, selective_scan_2d
    from m3amba.ops.selective_scan.triton_scan2d import selective_scan_2d_triton
    triton_scan.POISON_OUTPUTS = True

    def fused(feats, dt_low, dt_weight, A, Bs, Cs, D, delta_bias):
        dts = torch.matmul(dt_low.transpose(-1, -2), dt_weight.transpose(-1, -2))
        perm = cross_scan_positions(feats.shape[1], feats.shape[2], feats.device)
        return selective_scan_2d_triton(feats, dts, A, Bs, Cs, D, delta_bias, perm, True, chunk=16)

    results = []
    # 3 x 5: L = 15, a ragged last sub-chunk and masked loads; 4 x 6 with N 16: the unmasked path
    for shape, opts in [((2, 3, 5, 32, 4, 3), {}), ((1, 4, 6, 64, 16, 2), dict(with_D=False))]:
        x = make_inputs(*shape, seed=sum(shape), **opts)
        got = output_and_grads(fused, x, torch.float32)
        ref = output_and_grads(lambda **a: selective_scan_2d(**a, backend="reference"), x)
        results.append({"case": [shape, sorted(opts)], "errs": {k: rel_err(got[k], ref[k]) for k in ref},
                        "finite": all(bool(torch.isfinite(v).all()) for v in got.values())})
    print(json.dumps({"results": results}))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_fused_kernels_under_interpreter(tmp_path) -> None:
    """Output and every gradient of the fused path, run by Triton's CPU interpreter (~40 s)."""
    payload = run_under_interpreter(_INTERPRETER_SCRIPT, tmp_path, __file__, timeout=300)
    for res in payload["results"]:
        assert res["finite"], f"{res['case']}: non-finite output (unwritten element?)"
        for key, err in res["errs"].items():
            assert err <= 1e-5, f"{res['case']} {key}: relative error {err:.3g}"


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")


SHAPES = [  # batch, H, W, Di, N, R
    (2, 3, 5, 32, 4, 3),
    (1, 7, 9, 64, 16, 4),
    (2, 32, 32, 768, 16, 24),  # M3amba-base's layer shape (batch 2)
    (1, 16, 12, 96, 5, 6),  # N not a power of two, Di = 3 x 32
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("features", ["all", "none"])
def test_fused_matches_composition(poisoned, dtype, tol, shape, features) -> None:
    opts = {} if features == "all" else dict(with_D=False, with_bias=False)
    x = make_inputs(*shape, seed=sum(shape), device="cuda", **opts)
    got = output_and_grads(lambda **a: selective_scan_2d(**a, backend="triton", fused=True), x, dtype)
    ref = output_and_grads(lambda **a: selective_scan_2d(**a, backend="reference"), x)
    for key in ref:
        assert got[key].shape == ref[key].shape, key
        assert torch.isfinite(got[key]).all(), f"{key}: non-finite values (unwritten output?)"
        err = rel_err(got[key], ref[key])
        assert err <= tol, f"{key}: relative error {err:.3g} > {tol:g}"


@pytest.mark.gpu
@gpu
def test_fused_compiles_fullgraph() -> None:
    torch._dynamo.reset()

    def f(**a):
        return selective_scan_2d(**a, backend="triton", fused=True)

    x = make_inputs(2, 8, 8, 64, 16, 4, seed=5, device="cuda", dtype=torch.float32)
    got = output_and_grads(torch.compile(f, fullgraph=True), x)
    ref = output_and_grads(f, x)
    for key in ref:
        assert rel_err(got[key], ref[key]) <= 1e-5, key


@pytest.mark.gpu
@gpu
def test_ss2d_layer_same_with_and_without_fusion(monkeypatch) -> None:
    from m3amba.layers import CrossSS2D

    torch.manual_seed(0)
    layer = CrossSS2D(96, scan_backend="triton").cuda()
    s, z = torch.randn(2, 2, 16, 16, 96, device="cuda").unbind(0)
    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv(FUSED_ENV_VAR, flag)
        layer.zero_grad()
        y = layer(s, z)
        y.square().sum().backward()
        outs.append((y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}))
    (y1, g1), (y0, g0) = outs
    assert rel_err(y1, y0) <= 1e-5
    for name in g0:
        assert rel_err(g1[name], g0[name]) <= 1e-4, name
