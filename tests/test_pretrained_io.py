"""save_pretrained / load_pretrained_dir / push_to_hub, fine-tuning loads, converter folders, the zoo table."""
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

import m3amba
from m3amba import _registry
from m3amba._finetune import load_pretrained_weights
from m3amba._zoo import zoo_markdown
from m3amba.convert import ConvertedCheckpoint, save_converted
from conftest import TINY_ARGS, TINY_CLIP, build, inputs

REPO = Path(__file__).resolve().parents[1]
NOCLIP, CLIP = "m3amba_tiny_noclip", "m3amba_tiny"
CARD_CFG = dict(
    tag="unit", dataset="houston2013", license="apache-2.0", metrics={"OA": 91.5, "AA": 92.25, "kappa": 90.8},
    metrics_protocol="fixed train/test split, 3 runs, mean", class_names=("grass", "road", "water", "roof"),
    modalities=("HSI", "LiDAR"), band_names=(("b1", "b2", "b3", "b4", "b5"), ("dsm", "intensity")),
    mean=((0.1,) * 5, (5.0, 1.0)), std=((1.0,) * 5, (2.0, 0.5)),
)


def _args(name, in_chans=(5, 2), num_classes=4):
    args = dict(TINY_ARGS, in_chans=in_chans, num_classes=num_classes)
    if name == CLIP:
        args.update(clip_model=dict(TINY_CLIP), clip_pretrained=None)
    return args


def _same_outputs(a, b):
    """Equal outputs; a random (clip_pretrained=None) CLIP tower is not stored, so give b a's tower first."""
    if a.clip_encoder is not None:
        b.clip_encoder.visual.load_state_dict(a.clip_encoder.visual.state_dict())
    a.eval(), b.eval()
    x1, x2 = inputs(a)
    with torch.no_grad():
        return torch.equal(a(x1, x2), b(x1, x2))


@pytest.fixture(params=[NOCLIP, CLIP])
def saved(request, tmp_path):
    torch.manual_seed(0)
    model = build(request.param)
    out = m3amba.save_pretrained(model, tmp_path / "saved", pretrained_cfg_overlay=CARD_CFG)
    return request.param, model, out


# -- save / load round trip ---------------------------------------------------------------------------
def test_save_pretrained_writes_weights_config_and_card(saved):
    name, model, out = saved
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name
    args = config["model_args"]
    assert args["in_chans"] == [5, 2] and args["num_classes"] == 4 and args["embed_dim"] == 16
    assert "scan_backend" not in args and args["depth"] == 1
    assert args["clip_model"] == (TINY_CLIP if name == CLIP else None) and args["clip_pretrained"] is None
    meta = config["pretrained_cfg"]
    assert meta["sha256"] == m3amba._hub.sha256_file(out / "model.safetensors")
    assert meta["file_size"] == (out / "model.safetensors").stat().st_size
    assert "file" not in meta and meta["metrics"]["OA"] == 91.5 and meta["tag"] == "unit"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["library_name"] == "m3amba"
    assert "m3amba" in front["tags"] and name in front["tags"] and front["datasets"] == ["houston2013"]
    assert front["metrics"] == ["overall_accuracy", "average_accuracy", "cohen_kappa"]
    results = front["model-index"][0]["results"][0]["metrics"]
    assert [r["value"] for r in results] == [91.5, 92.25, 90.8]
    assert "fixed train/test split" in card and "| HSI | b1, b2, b3, b4, b5 |" in card
    if name == CLIP:
        assert "randomly initialised CLIP tower" in card


def test_saved_model_loads_with_overlay_file_and_load_pretrained_dir(saved):
    name, model, out = saved
    again = m3amba.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
                                **_args(name))
    assert _same_outputs(model, again)
    loaded = m3amba.load_pretrained_dir(out)
    assert _same_outputs(model, loaded)
    assert loaded.pretrained_cfg["tag"] == "unit" and loaded.pretrained_cfg["num_classes"] == 4
    assert loaded.pretrained_cfg["sha256"] == json.loads((out / "config.json").read_text())["pretrained_cfg"]["sha256"]
    # saving a loaded model again gives the same tensors and the same model args
    m3amba.save_pretrained(loaded, out.parent / "again")
    first, second = (m3amba.load_state_dict_file(d / "model.safetensors") for d in (out, out.parent / "again"))
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    configs = [json.loads((d / "config.json").read_text()) for d in (out, out.parent / "again")]
    assert configs[0]["model_args"] == configs[1]["model_args"]
    assert configs[1]["pretrained_cfg"]["metrics"] == CARD_CFG["metrics"]


def test_load_pretrained_dir_checks_sha256_and_reports_missing_folders(saved, tmp_path):
    _, _, out = saved
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(m3amba.WeightsIntegrityError, match="sha256 mismatch"):
        m3amba.load_pretrained_dir(out)
    (out / "model.safetensors").write_bytes(bytes(data[:100]))
    with pytest.raises(m3amba.WeightsIntegrityError, match="truncated: 100 bytes"):
        m3amba.load_pretrained_dir(out)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        m3amba.load_pretrained_dir(tmp_path / "nowhere")


def test_save_pretrained_needs_constructor_args_for_bare_models(tmp_path):
    bare = m3amba.M3amba(in_chans=(3, 1), num_classes=2, **TINY_ARGS, clip_model=None)
    with pytest.raises(ValueError, match="model_args"):
        m3amba.save_pretrained(bare, tmp_path, architecture=NOCLIP)
    m3amba.save_pretrained(bare, tmp_path, architecture=NOCLIP, model_args=dict(TINY_ARGS, clip_model=None))
    assert _same_outputs(bare, m3amba.load_pretrained_dir(tmp_path))


# -- fine-tuning: partial loads -------------------------------------------------------------------------
def _compare(source, target):
    src, dst = source.state_dict(), target.state_dict()
    same = {k for k in dst if k in src and src[k].shape == dst[k].shape and torch.equal(src[k], dst[k])}
    return same, set(dst) - same


@pytest.mark.parametrize("name", [NOCLIP, CLIP])
def test_fine_tuning_reinitialises_only_band_and_class_layers(name, tmp_path, caplog):
    torch.manual_seed(0)
    source = build(name)
    out = m3amba.save_pretrained(source, tmp_path / "src", pretrained_cfg_overlay=CARD_CFG)
    torch.manual_seed(123)
    with caplog.at_level(logging.INFO, logger="m3amba"):
        tuned = m3amba.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
                                    **_args(name, in_chans=(7, 2), num_classes=6))
    same, differ = _compare(source, tuned)
    fusion = (["fusion_embeds.0.proj"] if name == NOCLIP else
              ["fusion_embeds.0.to_rgb", "fusion_embeds.0.expand", "fusion_embeds.0.patch_embed.proj"])
    layers = ["patch_embeds.0.proj", *fusion, "head_m1.fc", "head_m2.fc", "head.fc"]
    expected = {f"{layer}.{p}" for layer in layers for p in ("weight", "bias")}
    assert differ == expected
    assert all(not k.startswith(("patch_embeds.1", "fusion_embeds.1")) for k in differ)  # modality 2 kept
    assert len(same) == len(source.state_dict()) - len(expected)
    text = caplog.text
    assert "modality 1: 5 -> 7 bands" in text and "classes: 4 -> 6" in text
    assert all(k in text for k in expected)
    assert "re-initialised 10 tensor(s)" in text or f"re-initialised {len(expected)} tensor(s)" in text
    # through load_pretrained_dir the saved metadata comes along; what no longer holds is cleared
    cfg = m3amba.load_pretrained_dir(out, in_chans=(7, 2), num_classes=6).pretrained_cfg
    assert cfg["num_classes"] == 6 and tuple(cfg["in_chans"]) == (7, 2) and cfg["class_names"] is None
    assert cfg["band_names"][0] is None and list(cfg["band_names"][1]) == ["dsm", "intensity"]
    assert cfg["metrics"] == {} and cfg["sha256"]
    x1, x2 = inputs(tuned)
    assert tuned(x1, x2).shape == (2, 6, 8, 8)


def test_only_class_change_keeps_every_input_layer(tmp_path, caplog):
    source = build(NOCLIP)
    out = m3amba.save_pretrained(source, tmp_path / "src")
    with caplog.at_level(logging.INFO, logger="m3amba"):
        tuned = m3amba.load_pretrained_dir(out, num_classes=9)
    _, differ = _compare(source, tuned)
    assert differ == {f"{h}.fc.{p}" for h in ("head_m1", "head_m2", "head") for p in ("weight", "bias")}
    assert "classes: 4 -> 9" in caplog.text and "modality" not in caplog.text
    feats = m3amba.load_pretrained_dir(out, num_classes=0)  # feature extractor: classifiers dropped
    same, differ = _compare(source, feats)
    assert differ == set() and not any(".fc." in k for k in feats.state_dict())


def test_band_change_of_modality_two_only(tmp_path, caplog):
    source = build(NOCLIP)
    out = m3amba.save_pretrained(source, tmp_path / "src")
    with caplog.at_level(logging.INFO, logger="m3amba"):
        tuned = m3amba.load_pretrained_dir(out, in_chans=(5, 3))
    _, differ = _compare(source, tuned)
    assert differ == {f"{m}.1.proj.{p}" for m in ("patch_embeds", "fusion_embeds") for p in ("weight", "bias")}
    assert "modality 2: 2 -> 3 bands" in caplog.text


def test_other_mismatches_are_errors_and_leave_the_model_untouched(tmp_path):
    source = build(NOCLIP)
    out = m3amba.save_pretrained(source, tmp_path / "src")
    weights = str(out / "model.safetensors")
    with pytest.raises(m3amba.CheckpointMismatchError, match="layers.0.*mismatched shapes|mismatched shapes"):
        m3amba.create_model(NOCLIP, pretrained=True, pretrained_cfg_overlay=dict(file=weights),
                            **dict(_args(NOCLIP), embed_dim=8))
    with pytest.raises(m3amba.CheckpointMismatchError, match="missing"):
        m3amba.create_model(NOCLIP, pretrained=True, pretrained_cfg_overlay=dict(file=weights),
                            **dict(_args(NOCLIP), depth=2))
    # a no-CLIP checkpoint does not fit a CLIP model, even with other bands (not an adaptation)
    with pytest.raises(m3amba.CheckpointMismatchError):
        m3amba.create_model(CLIP, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **_args(CLIP))
    target = build(NOCLIP, in_chans=(7, 2), embed_dim=8)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(m3amba.CheckpointMismatchError):
        load_pretrained_weights(target, weights)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((out / "model.safetensors").read_bytes()[:200])
    with pytest.raises(m3amba.WeightsIntegrityError, match="truncated or corrupt"):
        load_pretrained_weights(target, truncated)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_checkpoint_path_stays_strict(tmp_path):
    source = build(NOCLIP)
    out = m3amba.save_pretrained(source, tmp_path / "src")
    with pytest.raises(m3amba.CheckpointMismatchError):
        build(NOCLIP, num_classes=9, checkpoint_path=str(out / "model.safetensors"))


# -- publishing -----------------------------------------------------------------------------------------
class FakeHfApi:
    """Records what push_to_hub asks of huggingface_hub.HfApi (no network here)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://hub.invalid/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.calls.append(("upload_folder", kwargs, files))
        return "commit-info"


def test_push_to_hub_uploads_the_saved_folder(tmp_path):
    model = build(NOCLIP)
    api = FakeHfApi()
    result = m3amba.push_to_hub(model, "someone/m3amba-tiny-test", api=api, private=True,
                                pretrained_cfg_overlay=dict(tag="unit", license="apache-2.0"))
    assert result == "commit-info"
    (name1, repo, kw), (name2, up, files) = api.calls
    assert name1 == "create_repo" and repo == "someone/m3amba-tiny-test"
    assert kw["exist_ok"] is True and kw["private"] is True and kw["repo_type"] == "model"
    assert name2 == "upload_folder" and up["repo_id"] == "someone/m3amba-tiny-test" and up["repo_type"] == "model"
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads(files["config.json"])
    assert config["pretrained_cfg"]["hf_hub_id"] == "someone/m3amba-tiny-test"
    assert "create_model('m3amba_tiny_noclip.unit', pretrained=True)" in files["README.md"].decode()
    assert not Path(up["folder_path"]).exists()  # the temporary folder is cleaned up
    entry = None
    (tmp_path / "d").mkdir()
    for name, data in files.items():
        (tmp_path / "d" / name).write_bytes(data)
    entry = m3amba.manifest_entry(tmp_path / "d", "m3amba_tiny_noclip.unit", hf_hub_id="someone/m3amba-tiny-test")
    assert entry["name"] == "m3amba_tiny_noclip.unit" and entry["cfg"]["sha256"] == config["pretrained_cfg"]["sha256"]
    assert entry["cfg"]["model_kwargs"]["num_classes"] == 4 and "file" not in entry["cfg"]


def test_push_to_hub_warns_about_a_random_clip_tower():
    with pytest.warns(UserWarning, match="randomly initialised CLIP tower"):
        m3amba.push_to_hub(build(CLIP), "someone/x", api=FakeHfApi())


# -- converter output and torch.hub ---------------------------------------------------------------------
def test_converted_reference_folder_loads_through_load_pretrained_dir(tmp_path):
    source = build(NOCLIP, drop_path_rate=0.0)
    args = {k: v for k, v in source.model_args.items() if k not in ("drop_path_rate",)}
    args["in_chans"] = list(args["in_chans"])
    conv = ConvertedCheckpoint(state_dict=source.state_dict(), model_args=args, architecture=NOCLIP)
    out = save_converted(conv, tmp_path / "conv")
    loaded = m3amba.load_pretrained_dir(out)
    assert _same_outputs(source, loaded)
    # a CLIP checkpoint whose tower is not the reference's records only the embedding width
    clip_src = build(CLIP)
    clip_args = {k: v for k, v in clip_src.model_args.items() if k not in ("clip_model", "clip_pretrained")}
    conv = ConvertedCheckpoint(state_dict=clip_src.state_dict(), model_args=clip_args, architecture=CLIP,
                               clip_embed_dim=TINY_CLIP["embed_dim"])
    out = save_converted(conv, tmp_path / "conv_clip")
    with pytest.raises(ValueError, match="24-dim embeddings"):
        m3amba.load_pretrained_dir(out)
    loaded = m3amba.load_pretrained_dir(out, clip_model=dict(TINY_CLIP), clip_pretrained=None)
    assert _same_outputs(clip_src, loaded)


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_pretrained", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_hub_load_with_pretrained_weights(tmp_path, without_bundled_tags):
    source = build(NOCLIP)
    out = m3amba.save_pretrained(source, tmp_path / "src")
    model = torch.hub.load(str(REPO), NOCLIP, source="local", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")), **_args(NOCLIP))
    assert _same_outputs(source, model)
    tuned = torch.hub.load(str(REPO), NOCLIP, source="local", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
                           **_args(NOCLIP, num_classes=3))
    assert tuned.num_classes == 3
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match="no published weights"):
        torch.hub.load(str(REPO), NOCLIP, source="local", pretrained=True)
    hub = _hubconf()
    for name in m3amba.list_models():
        assert getattr(hub, name).__doc__.strip()


def test_hub_tag_default_loads_through_torch_hub(tmp_path, without_bundled_tags):
    source = build(NOCLIP, num_classes=3)
    out = m3amba.save_pretrained(source, tmp_path / "src")
    entry = m3amba.manifest_entry(out, "m3amba_tiny_noclip.hubconf_test")
    cfg = m3amba.PretrainedCfg.from_dict({**entry["cfg"], "file": str(out / "model.safetensors")})
    m3amba.register_pretrained_cfg(entry["name"], cfg)
    try:
        model = torch.hub.load(str(REPO), NOCLIP, source="local", pretrained=True)
        assert model.pretrained_cfg["tag"] == "hubconf_test" and _same_outputs(source, model)
    finally:
        del _registry._pretrained_cfgs[NOCLIP]["hubconf_test"]


# -- the zoo table ------------------------------------------------------------------------------------
def test_docs_zoo_md_is_the_generated_table():
    assert (REPO / "docs" / "zoo.md").read_text() == zoo_markdown(), "run: python -m m3amba._zoo --write"


def test_zoo_lists_tags_with_their_metrics(tmp_path, without_bundled_tags):
    out = m3amba.save_pretrained(build(NOCLIP), tmp_path / "src", pretrained_cfg_overlay=CARD_CFG)
    entry = m3amba.manifest_entry(out, "m3amba_tiny_noclip.zoo_test", hf_hub_id="someone/zoo")
    m3amba.register_pretrained_cfg(entry["name"], m3amba.PretrainedCfg.from_dict(entry["cfg"]))
    try:
        text = zoo_markdown()
    finally:
        del _registry._pretrained_cfgs[NOCLIP]["zoo_test"]
    assert "| `m3amba_tiny_noclip` | 1.2 M | none (ablation) | `m3amba_tiny_noclip.zoo_test` |" in text
    assert "| `m3amba_tiny_noclip.zoo_test` | houston2013 | 5 + 2 | 4 | 91.50 | 92.25 | 90.80 |" in text
