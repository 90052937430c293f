"""GPU checks (skipped without CUDA): the mamba-ssm backend and the whole model on the device.

Run on a GPU machine with ``python -m pytest -m gpu``.
"""
import pytest
import torch

from m3amba.ops.selective_scan import available_backends, selective_scan_fn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _inputs(batch, dim, length, dstate, groups, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, scale=1.0, dt=dtype: (torch.randn(*s, generator=g, device="cuda") * scale).to(dt).requires_grad_(True)
    A = (-torch.exp(torch.randn(dim, dstate, generator=g, device="cuda") * 0.5)).requires_grad_(True)
    return [r(batch, dim, length), r(batch, dim, length, scale=0.5), A, r(batch, groups, dstate, length),
            r(batch, groups, dstate, length), r(dim, dt=torch.float32), r(batch, dim, length),
            r(dim, scale=0.5, dt=torch.float32)]


def _rel(x, ref):
    # a gradient that is exactly zero in the reference (dA at L = 1: h_0 = 0) is compared absolutely
    diff = (x.double() - ref).norm()
    return (diff / ref.norm()).item() if ref.norm() > 0 else diff.item()


@pytest.mark.parametrize("backend", ["mamba", "triton", "triton_mamba", "torch"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("length", [1, 37, 1024])
@pytest.mark.parametrize("with_z", [True, False])
def test_gpu_backend_matches_reference(backend, dtype, tol, length, with_z):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} backend not available here")
    args = _inputs(2, 64, length, 16, 4, dtype, seed=length)
    if not with_z:  # without a gate: the path where triton_mamba pairs the two kernels
        args[6] = None
    ref_args = [None if a is None else a.detach().double().requires_grad_(True) for a in args]
    call = lambda b, a: selective_scan_fn(a[0], a[1], a[2], a[3], a[4], a[5], z=a[6], delta_bias=a[7],
                                          delta_softplus=True, backend=b)
    y_ref = call("reference", ref_args)
    dy = torch.randn_like(y_ref)
    names = [n for n, a in zip("u delta A B C D z bias".split(), args) if a is not None]
    g_ref = torch.autograd.grad(y_ref, [a for a in ref_args if a is not None], dy)
    y = call(backend, args)
    assert torch.isfinite(y).all()
    g = torch.autograd.grad(y, [a for a in args if a is not None], dy.to(y.dtype))
    assert _rel(y, y_ref) < tol
    for name, a, b in zip(names, g, g_ref):
        assert _rel(a, b) < tol, name


def test_model_forward_backward_on_gpu():
    import m3amba
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=(13, 1), num_classes=6).cuda()
    x1, x2 = torch.randn(4, 13, 32, 32, device="cuda"), torch.randn(4, 1, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.forward_all(x1, x2)
    loss = sum(o.float().square().mean() for o in out[:3])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _tiny_model_and_batch(backend, batch):
    """A tiny eval-mode model on ``backend`` (skips when it is unavailable) and a fixed random batch.

    eval(): no drop-path or dropout draws, so eager and compiled runs compute one function.
    """
    import m3amba
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} backend not available here")
    torch.manual_seed(0)
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=(13, 1), num_classes=6, scan_backend=backend).cuda().eval()
    return model, torch.randn(batch, 13, 32, 32, device="cuda"), torch.randn(batch, 1, 32, 32, device="cuda")


@pytest.mark.parametrize("backend", ["mamba", "triton", "triton_mamba", "torch"])
def test_compiled_layers_match_eager(backend):
    """compile_layers must not change what the model computes (fp32, every GPU scan backend)."""
    model, x1, x2 = _tiny_model_and_batch(backend, 8)
    with torch.no_grad():
        eager = model(x1, x2)
        model.compile_layers()
        compiled = model(x1, x2)
    rel = ((compiled - eager).norm() / eager.norm()).item()
    assert rel < 1e-4, f"compiled layers differ from eager by {rel:.3e} (relative L2) with the {backend} scan"


@pytest.mark.parametrize("backend", ["mamba", "triton", "triton_mamba"])
def test_compiled_layers_match_eager_gradients(backend):
    """Training through compile_layers gives eager's gradients (fp32)."""
    model, x1, x2 = _tiny_model_and_batch(backend, 4)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads():
        loss = sum(o.square().mean() for o in model.forward_all(x1, x2)[:3])
        return torch.autograd.grad(loss, params)
    eager = grads()
    model.compile_layers()
    compiled = grads()
    num = sum((a - b).square().sum() for a, b in zip(compiled, eager)).sqrt()
    den = sum(b.square().sum() for b in eager).sqrt()
    assert (num / den).item() < 1e-4
