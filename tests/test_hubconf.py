"""torch.hub entry points from a local checkout (no network)."""
import importlib.util
from pathlib import Path

import torch

import m3amba

REPO = Path(__file__).resolve().parents[1]


def test_hubconf_exposes_every_variant():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    for name in m3amba.list_models():
        entry = getattr(hubconf, name)
        assert callable(entry) and entry.__doc__ == m3amba.model_entrypoint(name).__doc__


def test_torch_hub_load_builds_a_model():
    model = torch.hub.load(str(REPO), "m3amba_tiny_noclip", source="local", in_chans=(4, 2), num_classes=3,
                           embed_dim=16, depth=1)
    assert model(torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8)).shape == (1, 3, 8, 8)
