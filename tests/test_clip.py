"""The frozen CLIP tower: built offline from a config dict, clear errors when weights are unavailable."""
import pytest
import torch

import m3amba
from m3amba.layers import ClipUnavailableError, FrozenClipImageEncoder
from conftest import TINY_CLIP


def test_tower_from_config_dict_is_frozen_and_resizes():
    enc = FrozenClipImageEncoder(dict(TINY_CLIP))
    assert enc.embed_dim == TINY_CLIP["embed_dim"] and enc.image_size == (32, 32)
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(torch.randn(3, 3, 8, 8))  # any input size: resized (bicubic) to the tower's
    assert out.shape == (3, TINY_CLIP["embed_dim"]) and out.dtype == torch.float32


def test_normalisation_option_changes_the_embedding():
    plain = FrozenClipImageEncoder(dict(TINY_CLIP), normalize=False)
    normed = FrozenClipImageEncoder(dict(TINY_CLIP), normalize=True)
    normed.visual.load_state_dict(plain.visual.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(plain(x), normed(x))
    expected = plain((x - normed.mean) / normed.std)
    torch.testing.assert_close(normed(x), expected)


def test_unavailable_pretrained_weights_explain_the_three_ways():
    with pytest.raises(ClipUnavailableError) as info:
        m3amba.create_model("m3amba_tiny", in_chans=(3, 1), clip_pretrained="/does/not/exist/open_clip.bin")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and "clip_pretrained='/path/to" in msg and "clip_model=None" in msg


def test_random_named_tower_warns_that_it_is_not_clip_driven():
    with pytest.warns(UserWarning, match="not CLIP-driven"):
        FrozenClipImageEncoder("RN50", clip_pretrained=None)


def test_unknown_tower_name():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        FrozenClipImageEncoder("ViT-Nonexistent")
