"""Weights and checkpoints: nothing is ever unpickled, damaged files say so, crashes never leave a half-written file.

Already covered elsewhere, not repeated here: wrong sha256 and truncated downloads (tests/test_hub.py),
checkpoints of another variant / band count naming the tensors (tests/test_registry.py,
tests/test_pretrained_io.py), the CLIP tower that cannot be obtained offline (tests/test_clip.py),
the converter refusing pickled code (tests/test_convert_reference.py), SIGKILL and resume
(tests/test_reliability_resume.py).
"""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import m3amba
from m3amba._checkpoint import WeightsFileCorruptError, read_torch_file
from m3amba.data import Scene, split_labels
from m3amba.train import load_trained, resolve_checkpoint, save_checkpoint, train
from conftest import TINY_ARGS, build

NOCLIP = "m3amba_tiny_noclip"


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_files(tmp_path, state):
    """A legacy pickle and a torch zip file, each carrying the payload next to real tensors."""
    sentinel = tmp_path / "code_ran.txt"
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as f:
        pickle.dump({"state_dict": dict(state), "hook": _Payload(sentinel)}, f)
    zipped = tmp_path / "zipped.pth"
    torch.save({"state_dict": dict(state), "hook": _Payload(sentinel)}, zipped)
    return sentinel, (legacy, zipped)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pth_carrying_pickled_code_is_refused_everywhere_and_the_code_never_runs(tmp_path):
    model = build(NOCLIP)
    sentinel, files = _evil_files(tmp_path, model.state_dict())
    args = dict(TINY_ARGS, in_chans=(5, 2), num_classes=4)
    for path in files:
        attempts = [
            lambda: m3amba.load_state_dict_file(path),
            lambda: m3amba.load_checkpoint(model, path),
            lambda: m3amba.create_model(NOCLIP, checkpoint_path=str(path), **args),
            lambda: m3amba.create_model(NOCLIP, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **args),
        ]
        for attempt in attempts:
            with pytest.raises(ValueError, match=r"weights_only=True.*refused, as unpickling can run code"):
                attempt()
            assert not sentinel.exists(), f"unpickling {path.name} ran code"


def test_training_state_carrying_pickled_code_is_refused(tmp_path):
    scene = _scene()
    train(_config(epochs=1), tmp_path, scene=scene, log=lambda *_: None, evaluate_test=False)
    ck = resolve_checkpoint(tmp_path)
    sentinel = tmp_path / "code_ran.txt"
    good = torch.load(ck / "state.pt", weights_only=True)
    torch.save({**good, "hook": _Payload(sentinel)}, ck / "state.pt")
    with pytest.raises(ValueError, match="refused"):
        train(_config(epochs=2), tmp_path, scene=scene, resume=True, log=lambda *_: None)
    with pytest.raises(ValueError, match="refused"):
        load_trained(tmp_path)
    assert not sentinel.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("keep", [0, 7, 200, -16])
def test_truncated_weights_files_say_truncated(tmp_path, suffix, keep):
    model = build(NOCLIP)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        m3amba.save_state_dict_file(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    for attempt in (lambda: m3amba.load_state_dict_file(path), lambda: m3amba.load_checkpoint(model, path),
                    lambda: build(NOCLIP, checkpoint_path=str(path))):
        with pytest.raises(WeightsFileCorruptError, match=f"{path.name}.*truncated or corrupt") as info:
            attempt()
        assert isinstance(info.value, m3amba.WeightsIntegrityError) and isinstance(info.value, ValueError)


def test_resume_or_predict_on_a_scene_of_other_bands_or_classes_is_explained(tmp_path):
    from m3amba.train import predict_scene
    train(_config(epochs=1), tmp_path, scene=_scene(), log=lambda *_: None, evaluate_test=False)
    with pytest.raises(ValueError, match=r"cannot resume from .*epoch_0001: the scene has 4 \+ 1 bands, the "
                                         r"checkpoint's model 3 \+ 1"):
        train(_config(epochs=2), tmp_path, scene=_scene(bands=4), resume=True, log=lambda *_: None)
    other = _scene()
    other.class_names = ["a", "b", "z"]
    with pytest.raises(ValueError, match=r"the scene's classes \['a', 'b', 'z'\] differ"):
        train(_config(epochs=2), tmp_path, scene=other, resume=True, log=lambda *_: None)
    tm = load_trained(tmp_path)
    with pytest.raises(ValueError, match=r"the scene has 4 \+ 1 bands but these normalisation statistics .* have 3 \+ 1"):
        predict_scene(tm.model, _scene(bands=4), tm.norm, window=8, stride=4)


# -- atomic writes: a crash just before the rename leaves the previous file ------------------------------
class _Crash(Exception):
    pass


def _crash_on_replace(monkeypatch, when):
    real = os.replace

    def replace(src, dst):
        if when(str(src), str(dst)):
            raise _Crash(f"simulated crash before renaming {src} to {dst}")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)


def test_weights_file_is_old_or_new_never_partial(tmp_path, monkeypatch):
    old, new = build(NOCLIP), build(NOCLIP, embed_dim=8)
    path = tmp_path / "model.safetensors"
    m3amba.save_state_dict_file(old.state_dict(), path)
    before = path.read_bytes()
    _crash_on_replace(monkeypatch, lambda src, dst: dst == str(path))
    with pytest.raises(_Crash):
        m3amba.save_state_dict_file(new.state_dict(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # the temporary file is removed


def test_save_pretrained_interrupted_keeps_the_previous_folder_loadable(tmp_path, monkeypatch):
    model = build(NOCLIP)
    out = m3amba.save_pretrained(model, tmp_path / "saved")
    _crash_on_replace(monkeypatch, lambda src, dst: dst.endswith("model.safetensors"))
    with pytest.raises(_Crash):
        m3amba.save_pretrained(build(NOCLIP), out)
    monkeypatch.undo()
    loaded = m3amba.load_pretrained_dir(out)  # sha256 in config.json still matches the old weights
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # a crash between the two files (new weights, old config.json) is caught by the recorded sha256
    _crash_on_replace(monkeypatch, lambda src, dst: dst.endswith("config.json"))
    with pytest.raises(_Crash):
        m3amba.save_pretrained(build(NOCLIP), out)
    monkeypatch.undo()
    with pytest.raises(m3amba.WeightsIntegrityError, match="sha256 mismatch"):
        m3amba.load_pretrained_dir(out)


def test_checkpoint_write_interrupted_before_any_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build(NOCLIP)
    ckpts = tmp_path / "checkpoints"
    save_checkpoint(ckpts / "epoch_0001", model, {"epoch": 1}, meta={"epoch": 1})
    _crash_on_replace(monkeypatch, lambda src, dst: os.path.basename(dst) == "epoch_0002")
    with pytest.raises(_Crash):
        save_checkpoint(ckpts / "epoch_0002", model, {"epoch": 2}, meta={"epoch": 2})
    assert (ckpts / "LATEST").read_text().strip() == "epoch_0001"
    assert resolve_checkpoint(tmp_path).name == "epoch_0001"
    assert [p.name for p in ckpts.glob(".tmp-epoch_0002-*")]  # left for the next resume to remove


# -- which checkpoint a resume takes -------------------------------------------------------------------
def _fake_checkpoint(folder, files=("state.pt", "model.safetensors", "meta.json")):
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_bytes(b"x")


def test_resolve_takes_the_newest_complete_checkpoint(tmp_path):
    ck = tmp_path / "checkpoints"
    _fake_checkpoint(ck / "epoch_0001")
    _fake_checkpoint(ck / "epoch_0002")
    _fake_checkpoint(ck / "epoch_0003", files=("state.pt",))  # not a checkpoint written by save_checkpoint
    _fake_checkpoint(ck / ".tmp-epoch_0004-123")  # a killed writer's temporary folder
    assert resolve_checkpoint(tmp_path).name == "epoch_0002"  # no LATEST (killed before the first one)
    (ck / "LATEST").write_text("epoch_0001\n")
    assert resolve_checkpoint(tmp_path).name == "epoch_0002"  # renamed into place, LATEST not yet replaced
    (ck / "LATEST").write_text("epoch_0009\n")  # names a folder that is gone
    assert resolve_checkpoint(tmp_path).name == "epoch_0002"
    assert resolve_checkpoint(ck / "epoch_0001").name == "epoch_0001"  # a checkpoint folder itself
    with pytest.raises(FileNotFoundError, match="without --resume training starts from scratch"):
        resolve_checkpoint(tmp_path / "nothing")


def test_resume_trims_the_logs_to_the_checkpoint_and_restores_a_lost_row(tmp_path):
    from m3amba.train.engine import _trim_logs
    ck = tmp_path / "checkpoints" / "epoch_0002"
    ck.mkdir(parents=True)
    (ck / "meta.json").write_text(json.dumps({"log": {"epoch": 2, "loss": 0.5}}))
    (tmp_path / "log.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n" + '{"epoch": 2, "lo')
    _trim_logs(tmp_path, ck, 2)  # the second row was cut short by the crash: restored from meta.json
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": e}) + "\n" for e in (1, 2, 3)))
    _trim_logs(tmp_path, ck, 2)  # epoch 3 runs again after the resume: its old row goes
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("epoch,step,lr,loss")


def test_deterministic_mode_is_restored_after_training(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    train(_config(epochs=1, deterministic=True), tmp_path, scene=_scene(), log=lambda *_: None, evaluate_test=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert json.loads((tmp_path / "config.json").read_text())["train"]["deterministic"] is True


def test_read_torch_file_names_the_file_for_empty_input(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(WeightsFileCorruptError, match=r"empty.pt .*\(EOFError: empty file\); it is truncated"):
        read_torch_file(tmp_path / "empty.pt")


# -- helpers ------------------------------------------------------------------------------------------
def _scene(bands=3):
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 10), np.int64)
    labels[:, :3], labels[:, 3:7], labels[:, 7:] = 1, 2, 3
    m1 = rng.normal(size=(12, 10, bands)).astype(np.float32) + labels[..., None]
    tr, _, te = split_labels(labels, train_per_class=4, seed=0)
    return Scene(m1, rng.normal(size=(12, 10)).astype(np.float32), tr, te, ["a", "b", "c"])


def _config(epochs=1, **train_kw):
    return {"model": {"name": NOCLIP, "args": {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0}},
            "train": {"epochs": epochs, "batch_size": 4, "samples_per_epoch": 8, "window": 8, "seed": 0,
                      "device": "cpu", **train_kw},
            "eval": {"window": 8, "stride": 4, "batch_size": 16}}
