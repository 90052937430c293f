"""Streamed whole-scene prediction through the engine and the CLI (issue 8: scenes larger than RAM on the CPU).

* ``predict_scene`` / ``evaluate`` with ``stream=`` normalise each window batch instead of the whole scene
  (bit-identical logits), ``out=`` writes the logits into a memmap as rows finish;
* ``m3amba predict --save-logits`` streams the logits into the .npy file and computes the map in row chunks;
* a subprocess predicts a 16 + 1-band 3000 x 3000 memmapped scene (584 MiB) through ``predict_scene``
  and the process's private memory grows by a band of windows, not by the scene.

tests/test_streaming_rss.py measures the same for ``sliding_window_logits`` called directly.
"""
import argparse
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from m3amba.data import NormStats, Scene, SceneError, compute_norm_stats
from m3amba.train import TrainedModel, argmax_classes, build_model, evaluate, predict_scene

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ["a", "b", "c"]
TINY = {"name": "m3amba_tiny_noclip",
        "args": {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0, "drop_path_rate": 0.0}}


def _arrays(h=20, w=18, c1=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int64)
    labels[:, : w // 3], labels[:, w // 3: 2 * w // 3], labels[:, 2 * w // 3:] = 1, 2, 3
    x1 = (rng.normal(size=(c1, h, w)) * 40 + 300 + labels).astype(np.float32)  # raw, far from [0, 1]
    x2 = (rng.normal(size=(1, h, w)) * 5 - 20).astype(np.float32)
    train = np.zeros_like(labels)
    train[::4, ::4] = labels[::4, ::4]
    test = np.where(train == 0, labels, 0)
    return x1, x2, train, test


def _scene(x1, x2, train, test, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Scene(x1, x2, train, test, CLASSES, layout="chw", **kw)


def _memmaps(tmp_path, x1, x2, mode="r"):
    for name, x in (("x1.npy", x1), ("x2.npy", x2)):
        np.save(tmp_path / name, x)
    return np.load(tmp_path / "x1.npy", mmap_mode=mode), np.load(tmp_path / "x2.npy", mmap_mode=mode)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY, (5, 1), len(CLASSES)).eval()


def test_streamed_normalisation_gives_the_same_logits_bit_for_bit(model):
    x1, x2, train, test = _arrays()
    scene = _scene(x1, x2, train, test)
    norm = compute_norm_stats(scene, "zscore")
    ref, counts = predict_scene(model, scene, norm, window=8, stride=4, batch_size=7)
    streamed, counts2 = predict_scene(model, scene, norm, window=8, stride=4, batch_size=7, stream=True)
    assert torch.equal(ref, streamed) and torch.equal(counts, counts2)
    assert torch.isfinite(ref).all() and int(counts.min()) >= 1


def test_a_memmapped_scene_streams_without_a_normalised_copy(model, tmp_path, monkeypatch):
    x1, x2, train, test = _arrays()
    norm = compute_norm_stats(_scene(x1, x2, train, test), "minmax")
    ref, _ = predict_scene(model, _scene(x1, x2, train, test), norm, window=8, stride=4, batch_size=5)
    scene = _scene(*_memmaps(tmp_path, x1, x2), train, test)
    assert isinstance(scene.modality1.base, np.memmap)  # the Scene keeps the file mapping (no copy)

    def whole_scene_copy(*_):
        raise AssertionError("a memmapped scene must not be normalised as a whole")
    monkeypatch.setattr(NormStats, "apply", whole_scene_copy)
    out = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=np.float32, shape=(3, 20, 18))
    got, counts = predict_scene(model, scene, norm, window=8, stride=4, batch_size=5, out=out)
    assert got is out and int(counts.min()) >= 1
    out.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), ref.numpy())


def test_evaluate_with_out_and_with_memmapped_logits(model, tmp_path):
    x1, x2, train, test = _arrays()
    scene = _scene(x1, x2, train, test)
    norm = compute_norm_stats(scene)
    ref = evaluate(model, scene, norm, "test", window=8, stride=4, batch_size=16)
    out = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=np.float32, shape=(3, 20, 18))
    streamed = evaluate(model, scene, norm, "test", window=8, stride=4, batch_size=16, out=out, stream=True)
    out.flush()
    again = evaluate(model, scene, norm, "test", logits=np.load(tmp_path / "logits.npy", mmap_mode="r"))
    for m in (streamed, again):
        assert m["count"] == ref["count"] == ref["expected_count"]
        assert m["oa"] == ref["oa"] and m["kappa"] == ref["kappa"] and m["confusion_matrix"] == ref["confusion_matrix"]


def test_argmax_classes_in_row_chunks_matches_torch_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 37, 11, generator=g)
    logits[:, 3, 4] = 1.0  # a tie: the first class wins, as with torch.argmax
    want = logits.argmax(0).numpy()
    for chunk in (1, 5, 37, 100):
        np.testing.assert_array_equal(argmax_classes(logits, rows_per_chunk=chunk), want)
        np.testing.assert_array_equal(argmax_classes(logits.numpy(), rows_per_chunk=chunk), want)
    assert argmax_classes(logits.numpy(), dtype=np.uint16).dtype == np.uint16
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        argmax_classes(logits[0])


def test_streaming_checks_the_band_count(model):
    x1, x2, train, test = _arrays(c1=4)
    scene = _scene(x1, x2, train, test)
    norm = compute_norm_stats(_scene(*_arrays()))  # 5 + 1 bands
    with pytest.raises(ValueError, match="4 \\+ 1 bands but these normalisation statistics .* have 5 \\+ 1"):
        predict_scene(model, scene, norm, window=8, stride=4, stream=True)


def test_fill_on_a_read_only_memmap_is_refused_clearly_and_copy_on_write_works(tmp_path):
    x1, x2, train, test = _arrays()
    x1[2, 5, 6] = np.nan
    with pytest.raises(SceneError, match=r"modality1 is read-only .*mmap_mode='c'"):
        _scene(*_memmaps(tmp_path, x1, x2), train, test, nonfinite="fill")
    scene = _scene(*_memmaps(tmp_path, x1, x2, mode="c"), train, test, nonfinite="mask")
    assert np.isfinite(scene.modality1).all() and not scene.valid_mask[5, 6]
    assert np.isnan(np.load(tmp_path / "x1.npy")[2, 5, 6])  # the file itself is untouched


def _predict_args(tmp_path, **kw):
    base = dict(out=[str(tmp_path / "map.npy")], save_logits=None, window=8, stride=4, quiet=True)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_predict_streams_logits_into_the_npy_file(model, tmp_path, monkeypatch, capsys):
    from m3amba import cli
    x1, x2, train, test = _arrays()
    x1[0, 3, 3] = np.nan
    scene = _scene(x1, x2, train, test, nonfinite="mask")
    norm = compute_norm_stats(scene)
    tm = TrainedModel(model, norm, CLASSES, {"eval": {"window": 8, "stride": 4, "batch_size": 16},
                                             "train": {"amp": True}})
    monkeypatch.setattr(cli, "_load_for_inference", lambda args: (tm, scene))
    ref, _ = predict_scene(model, scene, norm, window=8, stride=4, batch_size=16)
    assert cli._cmd_predict(_predict_args(tmp_path, save_logits=str(tmp_path / "sub" / "lg"))) == 0
    assert "streamed" in capsys.readouterr().out
    logits = np.load(tmp_path / "sub" / "lg.npy")  # ".npy" appended, as numpy.save does
    np.testing.assert_array_equal(logits, ref.numpy())
    class_map = np.load(tmp_path / "map.npy")
    assert class_map.dtype == np.uint16 and class_map[3, 3] == 0  # masked pixel: no data
    want = (ref.argmax(0) + 1).numpy()
    want[3, 3] = 0
    np.testing.assert_array_equal(class_map, want)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["lg.npy"]  # no temporary left behind


def test_cli_predict_leaves_no_partial_logits_file_when_prediction_fails(model, tmp_path, monkeypatch):
    from m3amba import cli
    x1, x2, train, test = _arrays()
    scene = _scene(x1, x2, train, test)
    tm = TrainedModel(model, compute_norm_stats(scene), CLASSES,
                      {"eval": {"window": 8, "stride": 4, "batch_size": 16}, "train": {"amp": True}})
    monkeypatch.setattr(cli, "_load_for_inference", lambda args: (tm, scene))

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")
    monkeypatch.setattr("m3amba.train.predict_scene", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        cli._cmd_predict(_predict_args(tmp_path, save_logits=str(tmp_path / "lg.npy")))
    assert list(tmp_path.iterdir()) == []


# -- a scene far larger than what the process holds ------------------------------------------------------
_CHILD = textwrap.dedent("""
    import json, resource, sys, threading, time, warnings
    import numpy as np, torch
    from torch import nn
    from m3amba.data import NormStats, Scene
    from m3amba.train import predict_scene
    torch.set_num_threads(1)
    folder = sys.argv[1]
    x1 = np.load(folder + "/x1.npy", mmap_mode="r")
    x2 = np.load(folder + "/x2.npy", mmap_mode="r")
    c1, h, w = x1.shape
    labels = np.zeros((h, w), np.uint8)
    labels[0, :3] = [1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene = Scene(x1, x2, labels, None, ["a", "b", "c", "d"], layout="chw")

    class Pointwise(nn.Module):  # a fixed 1x1 convolution: window averaging must give it back exactly
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(c1 + 1, 4, 1)
        def forward(self, a, b):
            return self.conv(torch.cat([a, b], 1))

    model = Pointwise()
    norm = NormStats(np.linspace(-1, 1, c1, dtype=np.float32), np.linspace(0.5, 2, c1, dtype=np.float32),
                     np.array([3.0], np.float32), np.array([4.0], np.float32), "zscore")
    out = np.lib.format.open_memmap(folder + "/logits.npy", mode="w+", dtype=np.float32, shape=(4, h, w))

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    peak_anon, done = [status("RssAnon")], threading.Event()
    def sample():  # private memory: pages of the memmapped files are page cache (RssFile), not counted here
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], status("RssAnon"))
            time.sleep(0.005)
    try:  # reset VmHWM (peak RSS) so that it measures this call, not the scene's construction
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    anon_before, rss_before = status("RssAnon"), status("VmRSS")
    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample)
    sampler.start()
    _, counts = predict_scene(model, scene, norm, window=32, stride=16, batch_size=64, out=out)
    out.flush()
    done.set()
    sampler.join()
    print(json.dumps({"anon_before_kib": anon_before, "anon_peak_kib": max(peak_anon[0], status("RssAnon")),
                      "rss_before_kib": rss_before, "hwm_kib": status("VmHWM") if hwm_reset else None,
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "min_count": int(counts.min()), "seconds": time.perf_counter() - t0,
                      "weight": model.conv.weight.detach()[:, :, 0, 0].tolist(),
                      "bias": model.conv.bias.detach().tolist()}))
""")


def test_predict_scene_on_a_memmapped_scene_keeps_private_memory_bounded(tmp_path):
    c1, h, w = 16, 3000, 3000  # 576 MB of float32 on disk for modality 1, 36 MB for modality 2
    x1 = np.lib.format.open_memmap(tmp_path / "x1.npy", mode="w+", dtype=np.float32, shape=(c1, h, w))
    x2 = np.lib.format.open_memmap(tmp_path / "x2.npy", mode="w+", dtype=np.float32, shape=(1, h, w))
    rng = np.random.default_rng(1)
    for r in range(0, h, 250):  # written in slabs: the test never holds the scene either
        x1[:, r:r + 250] = rng.standard_normal((c1, min(250, h - r), w), dtype=np.float32)
        x2[:, r:r + 250] = rng.standard_normal((1, min(250, h - r), w), dtype=np.float32)
    x1.flush(), x2.flush()
    scene_bytes = x1.nbytes + x2.nbytes
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = (r["anon_peak_kib"] - r["anon_before_kib"]) * 1024
    hwm = "" if r["hwm_kib"] is None else (
        f"; peak RSS (VmHWM) during the call - RSS before = {(r['hwm_kib'] - r['rss_before_kib']) / 2**10:.0f} MiB")
    print(f"\npredict_scene, memmapped scene {scene_bytes / 2**20:.0f} MiB -> logits memmap "
          f"{4 * h * w * 4 / 2**20:.0f} MiB in {r['seconds']:.1f}s: private memory (RssAnon) grew by {grown / 2**20:.0f} MiB at its peak{hwm} "
          f"(RSS counts the memmapped files' pages, page cache the kernel reclaims); process ru_maxrss "
          f"{r['maxrss_kib'] / 2**10:.0f} MiB")
    assert r["min_count"] >= 1
    # no normalised copy of the scene (that alone would be 584 MiB of private memory) and no logits array
    assert grown < 0.25 * scene_bytes, f"private memory grew by {grown / 2**20:.0f} MiB"
    # spot checks: a crop computed directly in memory (normalise, then the 1x1 convolution)
    weight, bias = np.array(r["weight"], np.float64), np.array(r["bias"], np.float64)
    out = np.load(tmp_path / "logits.npy", mmap_mode="r")
    off1, sc1 = np.linspace(-1, 1, c1, dtype=np.float32), np.linspace(0.5, 2, c1, dtype=np.float32)
    for r0, c0 in ((0, 0), (h - 24, w - 24), (1234, 777), (17, w - 24)):
        crop1 = (x1[:, r0:r0 + 24, c0:c0 + 24] - off1[:, None, None]) / sc1[:, None, None]
        crop2 = (x2[:, r0:r0 + 24, c0:c0 + 24] - np.float32(3.0)) / np.float32(4.0)
        direct = np.einsum("kc,chw->khw", weight, np.concatenate([crop1, crop2]).astype(np.float64)) \
            + bias[:, None, None]
        np.testing.assert_allclose(out[:, r0:r0 + 24, c0:c0 + 24], direct, rtol=1e-4, atol=1e-4)
