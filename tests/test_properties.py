"""Properties (hypothesis): scan backends equal the reference, stitching is exact, save -> load is bit-exact.

* every selective-scan backend that runs on the CPU equals ``reference`` (computed in float64) on
  random shapes and dtypes, L = 1 and lengths that are no power of two included, gradients too;
* ``sliding_window_logits`` predicts every pixel and averages exactly, for random scene, window and
  stride sizes and batch sizes, scenes smaller than one window included (the predict function
  returns a function of each pixel's absolute position, which the test encodes in the input);
* safetensors / weights-only torch files and ``save_pretrained`` folders round-trip bit for bit.

``max_examples`` are kept small: the whole file runs in a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import m3amba
from m3amba.data.windows import sliding_window_logits
from m3amba.ops.selective_scan import available_backends, selective_scan_fn
from test_selective_scan import ARG_NAMES, make_inputs, rel_err

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
CPU_BACKENDS = available_backends("cpu")
#: relative error bounds against the float64 reference: output rounding plus accumulation
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
GRAD_TOL = {torch.float64: 1e-8, torch.float32: 1e-3}


def test_the_cpu_backends_include_torch_and_reference():
    assert {"torch", "reference"} <= set(CPU_BACKENDS)


# -- selective scan ----------------------------------------------------------------------------------
def _scan(backend, inputs, softplus, last):
    args = [inputs[k] for k in ARG_NAMES]
    out = selective_scan_fn(*args, delta_softplus=softplus, return_last_state=last, backend=backend)
    return out if last else (out,)


@settings(max_examples=30, **SETTINGS)
@given(
    backend=st.sampled_from(CPU_BACKENDS),
    batch=st.integers(1, 2),
    groups=st.sampled_from([None, 1, 2]),
    per_group=st.integers(1, 3),
    dstate=st.integers(1, 5),
    length=st.one_of(st.just(1), st.integers(2, 70)),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
    softplus=st.booleans(),
    last=st.booleans(),
    optional=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    seed=st.integers(0, 2**16),
)
@example(backend="torch", batch=1, groups=None, per_group=1, dstate=1, length=1, dtype=torch.float32,
         softplus=True, last=True, optional=(True, True, True), seed=0)
@example(backend="torch", batch=2, groups=2, per_group=3, dstate=4, length=37, dtype=torch.float32,
         softplus=False, last=True, optional=(False, True, False), seed=1)
@example(backend="torch", batch=1, groups=1, per_group=2, dstate=3, length=63, dtype=torch.bfloat16,
         softplus=True, last=False, optional=(True, False, True), seed=2)
def test_every_cpu_scan_backend_equals_the_reference(backend, batch, groups, per_group, dstate, length, dtype,
                                                     softplus, last, optional, seed):
    with_d, with_z, with_bias = optional
    dim = (groups or 1) * per_group
    low = make_inputs(batch, dim, length, dstate, groups, seed=seed, dtype=dtype, softplus=softplus,
                      with_D=with_d, with_z=with_z, with_bias=with_bias)
    exact = {k: None if v is None else v.double() for k, v in low.items()}  # the same values, in float64
    want = _scan("reference", exact, softplus, last)
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(dtype in GRAD_TOL) for k, v in low.items()}
    got = _scan(backend, leaves, softplus, last)
    assert got[0].shape == want[0].shape == (batch, dim, length) and got[0].dtype == dtype
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        assert rel_err(g, w) < TOL[dtype], f"{backend} {dtype}: relative error {rel_err(g, w):.3g}"
    if dtype in GRAD_TOL:  # gradients of a fixed random functional, against the reference's in float64
        exact_leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in exact.items()}
        want = _scan("reference", exact_leaves, softplus, last)
        weights = [torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) for w in want]
        names = [k for k in ARG_NAMES if low[k] is not None]
        g_want = torch.autograd.grad(sum((w * c).sum() for w, c in zip(want, weights)), [exact_leaves[k] for k in names])
        g_got = torch.autograd.grad(sum((g.double() * c).sum() for g, c in zip(got, weights)), [leaves[k] for k in names])
        for name, a, b in zip(names, g_got, g_want):
            assert rel_err(a, b) < GRAD_TOL[dtype], f"{backend} grad {name}: {rel_err(a, b):.3g}"


# -- sliding-window stitching --------------------------------------------------------------------------
K = 3


def _position_model(window: int, batch_size: int, calls: list):
    """logits[0] = 1000 * row + col read from the input (exact), [1] = 1, [2] = the row inside the window."""
    def predict(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        n = b1.shape[0]
        assert 1 <= n <= batch_size and b1.shape[1:] == (2, window, window) and b2.shape[1:] == (1, window, window)
        calls.append(n)
        local = torch.arange(window, dtype=torch.float32)[:, None].expand(window, window)
        return torch.stack([1000 * b1[:, 0] + b1[:, 1], torch.ones_like(b1[:, 0]), local.expand(n, -1, -1)], dim=1)
    return predict


@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 40), w=st.integers(1, 40), window=st.integers(1, 12), data=st.data())
@example(h=1, w=1, window=8, data=None)
@example(h=3, w=20, window=8, data=None)
@example(h=5, w=5, window=12, data=None)
def test_stitching_predicts_every_pixel_and_averages_exactly(h, w, window, data):
    if data is None:  # the explicit examples: stride = half the window, batches of 4
        stride, batch_size = max(1, window // 2), 4
    else:
        stride = data.draw(st.integers(1, window), label="stride")
        batch_size = data.draw(st.integers(1, 9), label="batch_size")
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    x1 = np.stack([rows, cols])       # the absolute position, encoded in the input
    x2 = (rows * 0)[None]
    calls: list = []
    logits, counts = sliding_window_logits(_position_model(window, batch_size, calls), x1, x2, K,
                                           window=window, stride=stride, batch_size=batch_size, device="cpu")
    assert tuple(logits.shape) == (K, h, w) and tuple(counts.shape) == (h, w)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    counts = counts.double()
    assert (counts >= 1).all(), "a pixel was not predicted"
    assert torch.equal(counts, counts.round())
    assert sum(calls) >= 1  # (each call's batch holds 1..batch_size windows: checked in predict)
    # every window agrees on a pixel's value: the average returns it exactly
    assert torch.equal(logits[0], torch.from_numpy(1000 * rows + cols))
    assert torch.equal(logits[1], torch.ones(h, w))
    # window-dependent values: the stitched value times the count is a sum of whole numbers
    total = logits[2].double() * counts
    assert torch.allclose(total, total.round(), atol=1e-3) and (logits[2] >= 0).all() and (logits[2] <= window - 1).all()


@settings(max_examples=10, **SETTINGS)
@given(h=st.integers(1, 25), w=st.integers(1, 25), window=st.integers(2, 10), data=st.data())
def test_stitching_does_not_depend_on_the_batch_size(h, w, window, data):
    stride = data.draw(st.integers(1, window), label="stride")
    rng = np.random.default_rng(h * 100 + w)
    x1, x2 = rng.normal(size=(2, h, w)).astype(np.float32), rng.normal(size=(1, h, w)).astype(np.float32)

    def predict(b1, b2):  # a pixel-wise function of the window contents plus a window-wide term
        return torch.cat([b1, b2, b1.mean(dim=(1, 2, 3), keepdim=True).expand_as(b2)], dim=1)
    one, c1 = sliding_window_logits(predict, x1, x2, 4, window=window, stride=stride, batch_size=1, device="cpu")
    many, c2 = sliding_window_logits(predict, x1, x2, 4, window=window, stride=stride, batch_size=7, device="cpu")
    assert torch.equal(c1, c2)
    torch.testing.assert_close(one, many, rtol=0, atol=1e-6)
    torch.testing.assert_close(one[:2], torch.from_numpy(x1), rtol=0, atol=1e-6)  # pixel-wise terms come back in place


# -- save -> load --------------------------------------------------------------------------------------
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape)) if shape else 1
    raw = torch.randn(n, generator=g, dtype=torch.float64) * 100
    if dtype.is_floating_point:
        t = raw.to(dtype)
        specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
        if n >= 4 and draw(st.booleans()):
            t[:4] = specials
    elif dtype == torch.bool:
        t = raw > 0
    else:
        info = torch.iinfo(dtype)
        t = raw.round().clamp(info.min, info.max).to(dtype)
    t = t.reshape(shape)
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # non-contiguous
    return t


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _assert_bit_exact(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape, k
        assert _bits(b[k]) == _bits(a[k]), k


@settings(max_examples=25, **SETTINGS)
@given(state=st.dictionaries(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12),
                             tensors(), min_size=1, max_size=5))
def test_weights_files_round_trip_bit_exact(tmp_path_factory, state):
    folder = tmp_path_factory.mktemp("rt")
    m3amba.save_state_dict_file(state, folder / "w.safetensors")
    _assert_bit_exact(state, m3amba.load_state_dict_file(folder / "w.safetensors"))
    torch.save({k: v.contiguous() for k, v in state.items()}, folder / "w.pth")
    _assert_bit_exact(state, m3amba.load_state_dict_file(folder / "w.pth"))  # weights_only=True


@settings(max_examples=5, **SETTINGS)
@given(in_chans=st.tuples(st.integers(1, 6), st.integers(1, 3)), num_classes=st.integers(1, 5),
       embed_dim=st.sampled_from([8, 16]), depth=st.integers(1, 2), d_state=st.integers(1, 4), seed=st.integers(0, 99))
def test_save_pretrained_round_trips_bit_exact(tmp_path_factory, in_chans, num_classes, embed_dim, depth, d_state, seed):
    torch.manual_seed(seed)
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
                                depth=depth, d_state=d_state).eval()
    folder = m3amba.save_pretrained(model, tmp_path_factory.mktemp("pretrained") / "m")
    loaded = m3amba.load_pretrained_dir(folder).eval()
    _assert_bit_exact(model.state_dict(), loaded.state_dict())
    x1, x2 = torch.randn(1, in_chans[0], 5, 7), torch.randn(1, in_chans[1], 5, 7)
    with torch.no_grad():
        assert torch.equal(model(x1, x2), loaded(x1, x2))
