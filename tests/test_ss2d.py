"""Cross-scan algebra and the SS2D / Cross-SS2D semantics against a direct, loop-by-loop computation."""
import pytest
import torch
import torch.nn.functional as F

from m3amba.layers import SS2D, CrossSS2D
from m3amba.layers.ss2d import _project_directions
from m3amba.ops.cross_scan import (
    cross_merge,
    cross_merge_channels_last,
    cross_scan,
    cross_scan_channels_last,
    reorder_directions,
)

H, W = 3, 4  # non-square on purpose: a swapped transpose cannot pass


def scan_orders(h, w):
    """The four scan orders as explicit lists of (row, col), written out by hand."""
    rows = [(i, j) for i in range(h) for j in range(w)]
    cols = [(i, j) for j in range(w) for i in range(h)]
    return [rows, cols, rows[::-1], cols[::-1]]


def test_cross_scan_follows_the_four_orders():
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, H * W)
    for k, order in enumerate(scan_orders(H, W)):
        for t, (i, j) in enumerate(order):
            assert torch.equal(xs[:, k, :, t], x[:, :, i, j])


def test_cross_merge_is_the_adjoint_of_cross_scan():
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    ys = torch.randn(2, 4, 3, H * W, dtype=torch.float64)
    lhs = (cross_scan(x) * ys).sum()
    rhs = (x.flatten(2) * cross_merge(ys, H, W)).sum()
    torch.testing.assert_close(lhs, rhs)
    # merging a scan of x sums four copies of x
    torch.testing.assert_close(cross_merge(cross_scan(x), H, W), 4 * x.flatten(2))


def test_reorder_directions_reads_each_map_in_its_own_order():
    maps = torch.randn(2, 4, 3, H, W, dtype=torch.float64)  # a different map for every direction
    got = reorder_directions(maps.flatten(3), H, W)
    for k in range(4):
        assert torch.equal(got[:, k], cross_scan(maps[:, k])[:, k])
    with pytest.raises(ValueError, match="reorder_directions"):
        reorder_directions(torch.randn(1, 4, 2, 11), H, W)
    # the in-place writes into one buffer must keep autograd exact
    x = torch.randn(1, 4, 2, H * W, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reorder_directions(t, H, W), (x,))


def test_projecting_before_the_cross_scan_equals_projecting_each_direction():
    feats = torch.randn(2, 5, H, W, dtype=torch.float64)
    weight = torch.randn(4, 3, 5, dtype=torch.float64)
    expected = torch.matmul(weight, cross_scan(feats))  # (B, 4, 3, L), one projection per direction
    # the (B, H, W, C) view of an NCHW map and of a channels-last one (what the depthwise conv leaves)
    for layout in (torch.contiguous_format, torch.channels_last):
        view = feats.contiguous(memory_format=layout).permute(0, 2, 3, 1)
        torch.testing.assert_close(_project_directions(weight, view), expected, rtol=1e-12, atol=1e-12)


def test_channels_last_entry_points_match_the_nchw_functions():
    feats = torch.randn(2, 5, H, W, dtype=torch.float64)
    xs = cross_scan_channels_last(feats.permute(0, 2, 3, 1))
    assert torch.equal(xs, cross_scan(feats))
    merged = cross_merge_channels_last(xs, H, W)
    assert merged.shape == (2, H, W, 5)
    torch.testing.assert_close(merged.permute(0, 3, 1, 2), 4 * feats)


def test_cross_merge_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="cross_merge"):
        cross_merge(torch.randn(1, 4, 2, 11), H, W)


def _randomise(op):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def _direct_mixer(op, x, z=None):
    """SS2D / Cross-SS2D written out with explicit loops over directions and time steps."""
    di, n, r = op.d_inner, op.d_state, op.dt_rank
    proj = x @ op.in_proj.weight.T
    u, gate = proj[..., :di], proj[..., di:]

    def conv(v):
        return F.silu(F.conv2d(v.permute(0, 3, 1, 2), op.conv2d.weight, op.conv2d.bias, padding=1, groups=di))

    u = conv(u)
    if z is not None:
        uz = conv((z @ op.in_proj.weight.T)[..., :di])
    b = x.shape[0]
    merged = torch.zeros(b, di, H, W, dtype=x.dtype)
    for k, order in enumerate(scan_orders(H, W)):
        seq = torch.stack([u[:, :, i, j] for i, j in order], dim=-1)          # (b, di, L)
        proj_k = torch.einsum("cd,bdl->bcl", op.x_proj_weight[k], seq)
        dt_low = proj_k[:, :r]
        if z is None:
            B, C = proj_k[:, r:r + n], proj_k[:, r + n:]
            A = -torch.exp(op.A_logs[k * di:(k + 1) * di])
        else:
            seq_z = torch.stack([uz[:, :, i, j] for i, j in order], dim=-1)
            B = torch.einsum("nd,bdl->bnl", op.B_proj_weight_fused[k], seq_z)   # B from the fused stream
            C = proj_k[:, r:]
            A = -(torch.exp(op.A_logs[k * di:(k + 1) * di]) + torch.exp(op.A_logs_fused[k * di:(k + 1) * di])) / 2
        dt = F.softplus(torch.einsum("dr,brl->bdl", op.dt_projs_weight[k], dt_low) + op.dt_projs_bias[k][None, :, None])
        D = op.Ds[k * di:(k + 1) * di]
        h = torch.zeros(b, di, n, dtype=x.dtype)
        for t, (i, j) in enumerate(order):
            h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * B[:, None, :, t] * seq[:, :, t, None]
            merged[:, :, i, j] += (h * C[:, None, :, t]).sum(-1) + D * seq[:, :, t]
    y = op.out_norm(merged.permute(0, 2, 3, 1)) * F.silu(gate)
    return op.out_proj(y)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_ss2d_matches_direct_computation(backend):
    op = SS2D(6, d_state=3, ssm_ratio=2.0, scan_backend=backend).double()
    _randomise(op)
    x = torch.randn(2, H, W, 6, dtype=torch.float64)
    torch.testing.assert_close(op(x), _direct_mixer(op, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_cross_ss2d_averages_a_and_takes_b_from_the_fused_stream(backend):
    op = CrossSS2D(6, d_state=3, ssm_ratio=2.0, scan_backend=backend).double()
    _randomise(op)
    x = torch.randn(2, H, W, 6, dtype=torch.float64)
    z = torch.randn(2, H, W, 6, dtype=torch.float64)
    torch.testing.assert_close(op(x, z), _direct_mixer(op, x, z), rtol=1e-9, atol=1e-10)


def test_cross_ss2d_keeps_only_parameters_its_scan_uses():
    op = CrossSS2D(16, d_state=4)
    r = op.dt_rank
    assert op.x_proj_weight.shape == (4, r + 4, op.d_inner)       # Δ and C only: B comes from z
    assert op.B_proj_weight_fused.shape == (4, 4, op.d_inner)
    assert op.A_logs_fused.shape == op.A_logs.shape
    names = {n for n, _ in op.named_parameters()}
    assert not any("dt_projs" in n and "fused" in n for n in names)
    assert "Ds_fused" not in names


def test_mamba_initialisation():
    op = SS2D(32, d_state=16)
    A = -torch.exp(op.A_logs)
    torch.testing.assert_close(A[0], -torch.arange(1, 17, dtype=torch.float32))
    dt = F.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.equal(op.Ds, torch.ones_like(op.Ds))
