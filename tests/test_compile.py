"""torch.compile of the trunk layers (CPU, dynamo only): one compiled graph serves every layer."""
import pytest
import torch

import m3amba


def test_compile_layers_does_not_recompile_per_layer() -> None:
    """Each layer has its own drop-path rate; a float rate would force a recompilation per layer.

    Runs dynamo with its eager backend (no code generation, so this stays fast) in training mode,
    where drop-path is active, and fails on any recompilation after the first layer's graphs.
    """
    dynamo = pytest.importorskip("torch._dynamo")
    torch.manual_seed(0)
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=(5, 1), num_classes=3, depth=4,
                                drop_path_rate=0.3).train()
    model.set_scan_backend("torch")
    # the first layer has rate 0 (an Identity): compile the others, which share one class and shapes
    layers = list(model.layers)[1:]
    for layer in layers:
        layer.compile(backend="eager")
    x1, x2 = torch.randn(2, 5, 8, 8), torch.randn(2, 1, 8, 8)
    dynamo.reset()
    with torch.no_grad():
        x, y, z = model._stems(x1, x2, None)
        layers[0](x, y, z)  # compiles
        with dynamo.config.patch(error_on_recompile=True):
            for layer in layers[1:]:
                x, y, z = layer(x, y, z)
    assert all(torch.isfinite(t).all() for t in (x, y, z))
    dynamo.reset()


def test_drop_path_matches_its_definition() -> None:
    """Training: each sample's branch is kept (scaled by 1/keep) or zeroed; eval: identity."""
    from m3amba.layers.drop import DropPath

    torch.manual_seed(1)
    drop = DropPath(0.25).train()
    x = torch.randn(4000, 3, 2)
    out = drop(x)
    kept = (out != 0).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert bool((kept | dropped).all())  # whole samples only
    assert torch.allclose(out[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(drop.eval()(x), x)
    # a bf16 model keeps the rate's meaning: the 1/keep scale is computed in fp32, then rounded once
    half = DropPath(0.1).to(torch.bfloat16).train()
    out_b = half(torch.ones(2000, 4, dtype=torch.bfloat16))
    assert out_b.dtype == torch.bfloat16
    assert set(out_b.unique().tolist()) <= {0.0, torch.tensor(1 / 0.9).to(torch.bfloat16).item()}
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
