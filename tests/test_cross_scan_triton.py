"""The Triton cross-scan / cross-merge kernels against the torch functions they replace.

* CPU: the kernels under Triton's interpreter (``TRITON_INTERPRET=1``), odd sizes that leave
  partial tiles, a strided input, outputs poisoned first.
* GPU (``@pytest.mark.gpu``): fp32 and bf16, autograd (each op's backward is the other), and
  ``torch.compile(fullgraph=True)`` through the custom ops.
"""
from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch

from _triton_interp import run_under_interpreter
from m3amba.ops.cross_scan import cross_merge, cross_scan

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None

# (B, C, H, W): partial spatial tiles (16 x 16) and a partial channel block (32)
SHAPES = [(2, 40, 5, 19), (1, 32, 16, 16), (1, 8, 1, 33)]


def torch_scan_cl(x):
    return cross_scan(x.permute(0, 3, 1, 2))


def torch_merge_cl(ys, h, w):
    b, _, c, _ = ys.shape
    return cross_merge(ys.float(), h, w).transpose(1, 2).reshape(b, h, w, c)


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, os.path.dirname(sys.argv[2]))
    import torch
    from _triton_interp import patch_interpreter
    patch_interpreter()
    from m3amba.ops import cross_scan_triton as k
    if not k.HAS_TRITON:
        print(json.dumps({"skip": "triton not importable"})); sys.exit(0)
    from test_cross_scan_triton import SHAPES, torch_merge_cl, torch_scan_cl

    torch.manual_seed(0)
    errors = []
    for b, c, h, w in SHAPES:
        # a (B, H, W, C) view of an NCHW tensor: the kernel must follow the strides
        x = torch.randn(b, c, h, w).permute(0, 2, 3, 1)
        got = k.launch_scan_cl(x)
        if not torch.equal(got, torch_scan_cl(x)):
            errors.append(f"scan {(b, c, h, w)}: max diff {(got - torch_scan_cl(x)).abs().max().item()}")
        ys = torch.randn(b, 4, c, h * w)
        got = k.launch_merge_cl(ys, h, w)
        ref = torch_merge_cl(ys, h, w)
        if not got.is_contiguous() or not torch.allclose(got, ref, rtol=1e-6, atol=1e-6):
            errors.append(f"merge {(b, c, h, w)}: max diff {(got - ref).abs().max().item()}")
    print(json.dumps({"errors": errors}))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_cross_scan_kernels_under_interpreter(tmp_path):
    payload = run_under_interpreter(_INTERPRETER_SCRIPT, tmp_path, __file__)
    assert payload["errors"] == []


gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and Triton")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES + [(64, 768, 32, 32)])
def test_kernels_match_torch_on_gpu(shape, dtype):
    from m3amba.ops.cross_scan_triton import cross_merge_cl, cross_scan_cl

    b, c, h, w = shape
    x = torch.randn(b, c, h, w, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    x = x.permute(0, 2, 3, 1)  # contiguous (B, H, W, C), as SS2D's conv leaves it
    assert torch.equal(cross_scan_cl(x), torch_scan_cl(x))
    ys = torch.randn(b, 4, c, h * w, device="cuda").to(dtype)
    got = cross_merge_cl(ys, h, w)
    assert got.dtype == dtype and got.is_contiguous()
    # the kernel sums in fp32 and rounds once
    torch.testing.assert_close(got, torch_merge_cl(ys, h, w).to(dtype))


@pytest.mark.gpu
@gpu
def test_backward_of_each_is_the_other():
    from m3amba.ops.cross_scan_triton import cross_merge_cl, cross_scan_cl

    b, c, h, w = 2, 40, 5, 19
    x = torch.randn(b, h, w, c, device="cuda", dtype=torch.float64).float().requires_grad_(True)
    g = torch.randn(b, 4, c, h * w, device="cuda")
    (dx,) = torch.autograd.grad(cross_scan_cl(x), x, g)
    torch.testing.assert_close(dx, torch_merge_cl(g, h, w))
    ys = torch.randn(b, 4, c, h * w, device="cuda", requires_grad=True)
    gm = torch.randn(b, h, w, c, device="cuda")
    (dys,) = torch.autograd.grad(cross_merge_cl(ys, h, w), ys, gm)
    assert torch.equal(dys, torch_scan_cl(gm))


@pytest.mark.gpu
@gpu
def test_compiles_without_graph_breaks():
    from m3amba.ops.cross_scan import cross_merge_channels_last, cross_scan_channels_last

    def f(x):
        ys = cross_scan_channels_last(torch.sigmoid(x))
        return cross_merge_channels_last(ys * 2, x.shape[1], x.shape[2]).sum()

    x = torch.randn(2, 5, 19, 40, device="cuda", requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    (g1,) = torch.autograd.grad(compiled(x), x)
    (g2,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g1, g2)
