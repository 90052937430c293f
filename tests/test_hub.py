"""Resolving pretrained weights: local files and folders, manifests, the HF cache and a loopback fake Hub.

The fake Hub is a stdlib HTTP server on 127.0.0.1 that answers ``HEAD``/``GET
/{repo}/resolve/{revision}/{file}`` as huggingface_hub expects (``X-Repo-Commit``, ``ETag``,
``Content-Length``; 404 with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``). Nothing here
touches the network.
"""
import hashlib
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import m3amba
from m3amba import _hub, _manifest, _registry
from conftest import TINY_ARGS, build

NAME = "m3amba_tiny_noclip"
REPO_ID = "m3amba-test/tiny-noclip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = Path(__file__).resolve().parents[1]


class FakeHub:
    """A loopback server holding ``{repo_id: {filename: bytes}}``."""

    def __init__(self, repos):
        self.repos = repos
        self.requests = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                if "resolve" not in parts:
                    return self._error(404, "EntryNotFound")
                i = parts.index("resolve")
                repo_id, filename = "/".join(parts[:i]), "/".join(parts[i + 2:])
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound")
                files = hub.repos[repo_id]
                if filename not in files:
                    return self._error(404, "EntryNotFound", commit=True)
                data = files[filename]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status, code, commit=False):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                if commit:
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()

    def downloads(self):
        return [r for r in self.requests if r[0] == "GET"]


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A private HF_HOME, no local weights folders, online mode (conftest sets HF_HUB_OFFLINE=1 for the rest)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("M3AMBA_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # huggingface_hub read HF_HUB_OFFLINE=1 (set by conftest) when it was imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub, "bundled_weights_dir", lambda: None)
    return tmp_path


@pytest.fixture
def weights(tmp_path):
    """A saved tiny model: (model, folder, bytes of model.safetensors)."""
    torch.manual_seed(0)
    model = build(NAME, num_classes=3)
    out = m3amba.save_pretrained(model, tmp_path / "saved")
    return model, out, (out / "model.safetensors").read_bytes()


@pytest.fixture
def fake_hub(weights, hf_env, monkeypatch):
    _, _, data = weights
    hub = FakeHub({REPO_ID: {"model.safetensors": data}, "m3amba-test/truncated": {"model.safetensors": data[:1000]}})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.stop()


@pytest.fixture
def register(without_bundled_tags):
    """Register ``NAME.<tag>`` cfgs for one test."""
    added = []

    def add(tag, data=None, **fields):
        fields.setdefault("model_kwargs", dict(TINY_ARGS, in_chans=(5, 2), num_classes=3))
        if data is not None:
            fields.setdefault("sha256", hashlib.sha256(data).hexdigest())
            fields.setdefault("file_size", len(data))
        m3amba.register_pretrained_cfg(f"{NAME}.{tag}", m3amba.PretrainedCfg(**fields))
        added.append(tag)
        return f"{NAME}.{tag}"

    yield add
    for tag in added:
        _registry._pretrained_cfgs[NAME].pop(tag, None)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the Hub path ---------------------------------------------------------------------------------------
def test_download_then_cache_reuse_with_the_server_stopped(weights, fake_hub, register, caplog, monkeypatch):
    model, _, data = weights
    tag = register("hub", data, hf_hub_id=REPO_ID)
    assert tag in m3amba.list_pretrained()
    with caplog.at_level(logging.INFO, logger="m3amba"):
        first = m3amba.create_model(tag, pretrained=True)
    assert same_weights(model, first)
    assert len(fake_hub.downloads()) == 1
    assert "downloaded from the Hugging Face Hub" in caplog.text and "sha256 verified" in caplog.text
    cached = m3amba.resolve_pretrained(tag)
    assert cached.source == "hf_cache" and Path(os.environ["HF_HOME"], "hub") in cached.path.parents
    fake_hub.stop()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="m3amba"):
        again = m3amba.create_model(tag, pretrained=True)
    assert same_weights(model, again) and "found in the Hugging Face cache" in caplog.text
    # offline, read when the weights are resolved (not at import): the cache still serves
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert m3amba.resolve_pretrained(tag).source == "hf_cache"
    assert len(fake_hub.downloads()) == 1


def test_default_tag_is_the_first_with_weights(weights, fake_hub, register):
    model, _, data = weights
    register("first", data, hf_hub_id=REPO_ID)
    register("second", data, hf_hub_id=REPO_ID)
    loaded = m3amba.create_model(NAME, pretrained=True)
    assert loaded.pretrained_cfg["tag"] == "first" and same_weights(model, loaded)


def test_offline_without_cache_is_a_clear_error(weights, fake_hub, register, monkeypatch):
    _, _, data = weights
    tag = register("offline", data, hf_hub_id=REPO_ID)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match="not available offline: HF_HUB_OFFLINE is set") as err:
        m3amba.create_model(tag, pretrained=True)
    assert "M3AMBA_WEIGHTS_DIR" in str(err.value) and "Hugging Face cache" in str(err.value)
    assert fake_hub.requests == []


def test_missing_file_missing_repo_and_unreachable_hub(weights, fake_hub, register, monkeypatch):
    _, _, data = weights
    missing_file = register("nofile", data, hf_hub_id=REPO_ID, hf_hub_filename="other.safetensors")
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match="file 'other.safetensors' not found in Hugging Face repo"):
        m3amba.create_model(missing_file, pretrained=True)
    missing_repo = register("norepo", data, hf_hub_id="m3amba-test/does-not-exist")
    with pytest.raises(m3amba.PretrainedWeightsNotFound,
                       match="repo 'm3amba-test/does-not-exist' of m3amba_tiny_noclip.norepo not found at http://127"):
        m3amba.create_model(missing_repo, pretrained=True)
    # huggingface_hub imported with HF_HUB_OFFLINE=1 stays offline: say so instead of blaming the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ok = register("stuck_offline", data, hf_hub_id=REPO_ID)
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match="stays offline in this process"):
        m3amba.create_model(ok, pretrained=True)


def test_wrong_sha256_and_truncated_download_are_refused(weights, fake_hub, register):
    _, _, data = weights
    wrong = register("wrongsha", hf_hub_id=REPO_ID, sha256="0" * 64)
    with pytest.raises(m3amba.WeightsIntegrityError, match="sha256 mismatch .* expected 0000") as err:
        m3amba.create_model(wrong, pretrained=True)
    assert "Hugging Face cache" in str(err.value)
    truncated = register("truncated", data, hf_hub_id="m3amba-test/truncated")
    with pytest.raises(m3amba.WeightsIntegrityError, match=f"is truncated: 1000 bytes, expected {len(data)}"):
        m3amba.create_model(truncated, pretrained=True)


def test_hf_hub_cache_env_and_revision(weights, fake_hub, register, monkeypatch, tmp_path):
    model, _, data = weights
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "explicit_cache"))
    tag = register("rev", data, hf_hub_id=REPO_ID, hf_hub_revision="v1.0")
    resolved = m3amba.resolve_pretrained(tag)
    assert resolved.source == "hf_download" and (tmp_path / "explicit_cache") in resolved.path.parents
    assert any("/resolve/v1.0/" in path for _, path in fake_hub.requests)
    assert m3amba.resolve_pretrained(tag).source == "hf_cache"


# -- local sources ---------------------------------------------------------------------------------------
def test_weights_dir_is_searched_before_the_hub(weights, hf_env, register, monkeypatch, tmp_path):
    model, out, data = weights
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub must not be needed
    by_tag, by_repo = tmp_path / "wd1", tmp_path / "wd2"
    (by_tag / f"{NAME}.local").mkdir(parents=True)
    (by_tag / f"{NAME}.local" / "model.safetensors").write_bytes(data)
    (by_repo / "someone" / "mirror").mkdir(parents=True)
    (by_repo / "someone" / "mirror" / "model.safetensors").write_bytes(data)
    monkeypatch.setenv("M3AMBA_WEIGHTS_DIR", f"{tmp_path / 'empty'}:{by_tag}:{by_repo}")
    tag = register("local", data, hf_hub_id="someone/elsewhere")
    resolved = m3amba.resolve_pretrained(tag)
    assert resolved.source == "weights_dir" and resolved.verified and resolved.path.parent.name == f"{NAME}.local"
    assert same_weights(model, m3amba.create_model(tag, pretrained=True))
    mirror = register("mirror", data, hf_hub_id="someone/mirror")
    assert m3amba.resolve_pretrained(mirror).path == by_repo / "someone" / "mirror" / "model.safetensors"
    # a wrong file in a weights folder is an error, not skipped
    bad = register("badlocal", data, hf_hub_id="someone/elsewhere")
    (by_tag / f"{NAME}.badlocal").mkdir()
    (by_tag / f"{NAME}.badlocal" / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(m3amba.WeightsIntegrityError, match="truncated"):
        m3amba.create_model(bad, pretrained=True)
    # not found anywhere, offline: the message lists where it looked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nowhere = register("nowhere", data, hf_hub_id="someone/nowhere")
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match=f"{NAME}.nowhere/model.safetensors"):
        m3amba.create_model(nowhere, pretrained=True)


def test_overlay_file_drops_the_tags_sha256_and_checkpoint_path_wins(weights, hf_env, register, tmp_path):
    model, out, data = weights
    tag = register("published", hf_hub_id="someone/unreachable", sha256="1" * 64)
    loaded = m3amba.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")))
    assert same_weights(model, loaded) and loaded.pretrained_cfg["sha256"] is None
    with pytest.raises(m3amba.WeightsIntegrityError, match="sha256 mismatch"):
        m3amba.create_model(tag, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), sha256="2" * 64))
    with pytest.raises(m3amba.PretrainedWeightsNotFound, match="not found"):
        m3amba.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.safetensors")))
    # checkpoint_path: exactly that file, the tag's weights are not looked up (offline would fail)
    loaded = m3amba.create_model(tag, pretrained=True, checkpoint_path=str(out / "model.safetensors"))
    assert same_weights(model, loaded)


def test_truncated_local_file_without_sha256_is_a_clear_error(weights, hf_env, tmp_path):
    _, out, data = weights
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(m3amba.WeightsIntegrityError, match="truncated or corrupt"):
        m3amba.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)),
                            **dict(TINY_ARGS, in_chans=(5, 2), num_classes=3))


def test_pth_files_are_read_weights_only(weights, hf_env, tmp_path):
    model, _, _ = weights
    path = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = m3amba.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                 **dict(TINY_ARGS, in_chans=(5, 2), num_classes=3))
    assert same_weights(model, loaded)


# -- manifests ------------------------------------------------------------------------------------------
def _write_manifest(folder, entries):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(json.dumps({"format": "m3amba-weights-manifest", "version": 1, "tags": entries}))
    return path


def test_bundled_manifest_is_valid_registered_and_found_in_the_checkout():
    assert _hub.bundled_weights_dir() == REPO / "weights"
    entries = m3amba.read_manifest(REPO / "weights" / "manifest.json")  # validates every entry (sha256, names)
    with_weights = {name for name, cfg in entries if cfg.hf_hub_id or Path(cfg.file).is_file()}
    assert with_weights <= set(m3amba.list_pretrained())
    for name, _ in entries:  # each tag has its model card next to the manifest
        assert (REPO / "weights" / name / "README.md").is_file(), name
    if not entries:
        assert json.loads((REPO / "weights" / "manifest.json").read_text()) == _manifest.empty_manifest()


def test_manifest_registers_only_tags_with_weights(weights, hf_env, tmp_path, monkeypatch):
    model, out, data = weights
    folder = tmp_path / "bundle"
    (folder / f"{NAME}.bundled").mkdir(parents=True)
    (folder / f"{NAME}.bundled" / "model.safetensors").write_bytes(data)
    bundled = m3amba.manifest_entry(out, f"{NAME}.bundled", bundled=True)
    hub_only = m3amba.manifest_entry(out, f"{NAME}.hubonly", hf_hub_id=REPO_ID)
    ghost = m3amba.manifest_entry(out, f"{NAME}.ghost", bundled=True)  # file listed but absent, no Hub copy
    path = _write_manifest(folder, [bundled, hub_only, ghost])
    try:
        assert m3amba.register_manifest(path) == [f"{NAME}.bundled", f"{NAME}.hubonly"]
        assert {f"{NAME}.bundled", f"{NAME}.hubonly"} <= set(m3amba.list_pretrained())
        assert f"{NAME}.ghost" not in m3amba.list_pretrained()
        cfg = m3amba.get_pretrained_cfg(f"{NAME}.bundled")
        assert cfg.file == str((folder / f"{NAME}.bundled" / "model.safetensors").resolve())
        loaded = m3amba.create_model(f"{NAME}.bundled", pretrained=True)  # model_kwargs come from the entry
        assert same_weights(model, loaded) and loaded.in_chans == (5, 2) and loaded.num_classes == 3
        assert m3amba.resolve_pretrained(f"{NAME}.bundled").source == "file"
    finally:
        for tag in ("bundled", "hubonly", "ghost"):
            _registry._pretrained_cfgs[NAME].pop(tag, None)


def test_manifest_in_weights_dir_is_registered_at_import(weights, hf_env, tmp_path, monkeypatch):
    _, out, data = weights
    folder = tmp_path / "wd"
    _write_manifest(folder, [m3amba.manifest_entry(out, f"{NAME}.fromenv", hf_hub_id=REPO_ID)])
    monkeypatch.setenv("M3AMBA_WEIGHTS_DIR", str(folder))
    try:
        _manifest._register_at_import()
        assert f"{NAME}.fromenv" in m3amba.list_pretrained()
    finally:
        _registry._pretrained_cfgs[NAME].pop("fromenv", None)
    _write_manifest(folder, [{"name": "nope.tag", "cfg": {}}])
    with pytest.warns(UserWarning, match="manifest not registered"):
        _manifest._register_at_import()


@pytest.mark.parametrize("entry, message", [
    ({"name": "m3amba_tiny_noclip", "cfg": {"sha256": "a" * 64, "hf_hub_id": "x/y"}}, "must be '<registered model>.<tag>'"),
    ({"name": "resnet50.tag", "cfg": {"sha256": "a" * 64, "hf_hub_id": "x/y"}}, "registered model"),
    ({"name": "m3amba_tiny_noclip.t", "cfg": {"hf_hub_id": "x/y"}}, "64-hex-digit sha256"),
    ({"name": "m3amba_tiny_noclip.t", "cfg": {"sha256": "a" * 64, "colour": "red"}}, "unknown PretrainedCfg field"),
    ({"name": "m3amba_tiny_noclip.t", "cfg": {"sha256": "a" * 64, "architecture": "m3amba_base"}}, "contradicts"),
])
def test_invalid_manifests_are_errors(tmp_path, entry, message):
    with pytest.raises(ValueError, match=message):
        m3amba.read_manifest(_write_manifest(tmp_path, [entry]))
    (tmp_path / "manifest.json").write_text('{"tags": []}')
    with pytest.raises(ValueError, match="not an m3amba weights manifest"):
        m3amba.read_manifest(tmp_path / "manifest.json")


def test_pretrained_cfg_round_trips_through_json():
    cfg = m3amba.PretrainedCfg(
        in_chans=(144, 1), band_names=(("a", "b"), ("dsm",)), mean=((0.0, 1.0), (2.0,)), std=((1.0, 1.0), (3.0,)),
        class_names=("x", "y"), modalities=("HSI", "LiDAR"), metrics={"OA": 90.0}, metrics_protocol="p",
        hf_hub_revision="main", file_size=10, img_size=16,
    )
    assert m3amba.PretrainedCfg.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.patch_size == 16
