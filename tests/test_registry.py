"""The timm-style registry, create_model and safe checkpoint loading."""
import pickle

import pytest
import torch

import m3amba
from m3amba import _registry
from conftest import build


def test_list_models_filters_and_sorts():
    names = m3amba.list_models("m3amba*")
    assert names == sorted(names)
    assert m3amba.list_models("m3amba_t*") == ["m3amba_tiny", "m3amba_tiny_noclip"]
    assert m3amba.list_models(["*tiny*", "*small"]) == ["m3amba_small", "m3amba_tiny", "m3amba_tiny_noclip"]
    assert "m3amba_base_noclip" not in m3amba.list_models("m3amba*", exclude_filters="*noclip")
    assert m3amba.list_models("nothing*") == []


def test_is_model_and_entrypoint_errors():
    assert m3amba.is_model("m3amba_base") and m3amba.is_model("m3amba_base.some_tag")
    assert not m3amba.is_model("resnet50")
    with pytest.raises(ValueError, match="Did you mean m3amba_tiny"):
        m3amba.model_entrypoint("m3amba_tinny")


def test_pretrained_true_without_weights_is_a_clear_error():
    # only the no-CLIP tags trained on the eo-learn scene ship; CLIP-driven variants have none
    assert m3amba.list_pretrained() == ["m3amba_small_noclip.eolearn_lulc", "m3amba_tiny_noclip.eolearn_lulc"]
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match="no published weights for 'm3amba_base'"):
        m3amba.create_model("m3amba_base", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        m3amba.create_model("m3amba_base.nope")


def test_pretrained_cfg_metadata_is_attached():
    model = build("m3amba_tiny_noclip")
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == "m3amba_tiny_noclip"
    assert "arXiv:2503.06446" in cfg["paper_ids"]
    assert m3amba.get_pretrained_cfg("m3amba_base").clip_model == "ViT-B-32-quickgelu"


@pytest.fixture
def registered_tag(tmp_path, without_bundled_tags):
    """A tag with a real weights file, registered for one test and removed afterwards."""
    model = build("m3amba_tiny_noclip", num_classes=3)
    path = tmp_path / "w.safetensors"
    m3amba.save_state_dict_file(model.state_dict(), path)
    cfg = m3amba.PretrainedCfg(file=str(path), num_classes=3, in_chans=(5, 2),
                               model_kwargs=dict(embed_dim=16, depth=1, img_size=8, in_chans=(5, 2), num_classes=3))
    m3amba.register_pretrained_cfg("m3amba_tiny_noclip.unit_test", cfg)
    yield model
    del _registry._pretrained_cfgs["m3amba_tiny_noclip"]["unit_test"]


def test_tag_with_weights_is_listed_default_and_loads(registered_tag):
    assert m3amba.list_pretrained() == ["m3amba_tiny_noclip.unit_test"]
    assert m3amba.list_models("m3amba_tiny*", pretrained=True) == ["m3amba_tiny_noclip.unit_test"]
    loaded = m3amba.create_model("m3amba_tiny_noclip", pretrained=True)
    for k, v in registered_tag.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.pretrained_cfg["tag"] == "unit_test"


def test_checkpoint_path_round_trip_and_mismatch(tmp_path):
    model = build("m3amba_tiny_noclip")
    path = tmp_path / "ckpt.safetensors"
    m3amba.save_state_dict_file(model.state_dict(), path)
    again = build("m3amba_tiny_noclip", checkpoint_path=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    with pytest.raises(m3amba.CheckpointMismatchError, match="patch_embeds.0.proj.weight"):
        build("m3amba_tiny_noclip", in_chans=(7, 2), checkpoint_path=str(path))
    untouched = build("m3amba_tiny_noclip", in_chans=(7, 2))
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(m3amba.CheckpointMismatchError):
        m3amba.load_checkpoint(untouched, path)
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_torch_files_load_weights_only(tmp_path):
    model = build("m3amba_tiny_noclip")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": model.state_dict()}, good)
    assert set(m3amba.load_state_dict_file(good)) == set(model.state_dict())
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": _Payload()}, f)
    with pytest.raises(ValueError, match="refused"):
        m3amba.load_state_dict_file(evil)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))
