"""Shared fixtures: offline hub settings, a tiny open_clip tower config, small model builders."""
import os

import pytest
import torch

# tests never touch the network: the Hub client must fail fast rather than try to download
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

#: a 1-layer ViT with 32-dim embeddings: an open_clip image tower built offline from a dict
TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
}

#: model sizes small enough that every variant builds and runs in well under a second
TINY_ARGS = dict(embed_dim=16, depth=1, img_size=8)


@pytest.fixture
def poisoned():
    """Fill every output buffer of the Triton scan kernels with NaN before they run (unwritten elements show)."""
    from m3amba.ops.selective_scan import triton_scan

    old = triton_scan.POISON_OUTPUTS
    triton_scan.POISON_OUTPUTS = True
    yield
    triton_scan.POISON_OUTPUTS = old


@pytest.fixture
def tiny_clip():
    return dict(TINY_CLIP)


def build(name: str, in_chans=(5, 2), num_classes=4, **kwargs):
    """Build a registered variant at tiny size (a tiny CLIP tower for CLIP variants)."""
    import m3amba
    from m3amba.models import get_model_config

    args = dict(TINY_ARGS)
    if get_model_config(name.partition(".")[0])["model_args"].get("clip_model") is not None:
        args.update(clip_model=dict(TINY_CLIP), clip_pretrained=None)
    args.update(kwargs)
    return m3amba.create_model(name, in_chans=in_chans, num_classes=num_classes, **args)


def inputs(model, batch=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c1, c2 = model.in_chans
    s = model.img_size
    return (torch.randn(batch, c1, s, s, generator=g, dtype=dtype),
            torch.randn(batch, c2, s, s, generator=g, dtype=dtype))


@pytest.fixture
def without_bundled_tags(monkeypatch):
    """The registry as if no weights shipped in weights/: tests that register their own tags see only those."""
    import json

    from pathlib import Path

    from m3amba import _registry
    manifest = json.loads((Path(__file__).resolve().parents[1] / "weights" / "manifest.json").read_text())
    bundled = {tuple(e["name"].split(".", 1)) for e in manifest["tags"]}
    clean = {name: {tag: cfg for tag, cfg in tags.items() if (name, tag) not in bundled}
             for name, tags in _registry._pretrained_cfgs.items()}
    monkeypatch.setattr(_registry, "_pretrained_cfgs", clean)
