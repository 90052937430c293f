"""The loss, the training engine (checkpoints, exact resume), evaluation/prediction and the CLI."""
import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3amba.data import Scene, split_labels
from m3amba.train import DEMO_CONFIG, M3ambaLoss, load_config, load_trained, predict_scene, resolve_checkpoint, train

TINY_MODEL = {"name": "m3amba_tiny_noclip",
              "args": {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0, "drop_path_rate": 0.1}}


def tiny_scene(h=14, w=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int64)
    labels[:, : w // 3], labels[:, w // 3: 2 * w // 3], labels[:, 2 * w // 3:] = 1, 2, 3
    m1 = rng.normal(size=(h, w, 3)).astype(np.float32) + labels[..., None]
    m2 = rng.normal(size=(h, w, 1)).astype(np.float32)
    train_, _, test = split_labels(labels, train_per_class=4, seed=seed)
    return Scene(m1, m2, train_, test, ["a", "b", "c"], name="tiny")


def tiny_config(epochs=2, **train_kw):
    return {"model": TINY_MODEL,
            "train": {"epochs": epochs, "batch_size": 4, "samples_per_epoch": 8, "window": 8, "lr": 1e-2,
                      "warmup_epochs": 1, "seed": 1, **train_kw},
            "eval": {"window": 8, "stride": 4, "batch_size": 16}}


# -- loss -----------------------------------------------------------------------------------------
def test_loss_masks_unlabelled_pixels_and_matches_manual_terms():
    g = torch.Generator().manual_seed(0)
    l1, l2, lf = (torch.randn(2, 4, 5, 5, generator=g) for _ in range(3))
    y = torch.full((2, 5, 5), -1)
    y[0, 1, 2], y[1, 3, 3], y[1, 0, 0] = 2, 0, 3
    valid = torch.ones(2, 5, 5, dtype=torch.bool)
    valid[:, -1] = False
    loss = M3ambaLoss(lambda_sup=1.0, lambda_unsup=0.7)
    out = loss(l1, l2, lf, y, valid)
    sel = y >= 0
    manual_ce = lambda lg: F.cross_entropy(lg.permute(0, 2, 3, 1)[sel], y[sel])  # noqa: E731
    for k, lg in (("ce_m1", l1), ("ce_m2", l2), ("ce_fused", lf)):
        assert out[k].item() == pytest.approx(manual_ce(lg).item(), rel=1e-6)
    cos = lambda a, b: 1 - F.cosine_similarity(a.softmax(1), b.softmax(1), dim=1)[valid].mean()  # noqa: E731
    assert out["cos_m1"].item() == pytest.approx(cos(l1, lf).item(), rel=1e-5)
    total = out["ce_m1"] + out["ce_m2"] + out["ce_fused"] + 0.7 * (out["cos_m1"] + out["cos_m2"])
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # changing an unlabelled pixel's logits leaves the supervised terms alone
    l1b = l1.clone()
    l1b[0, :, 4, 4] += 5
    assert loss(l1b, l2, lf, y, valid)["ce_m1"].item() == pytest.approx(out["ce_m1"].item())


def test_loss_consistency_variants_and_empty_batches():
    lg = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = torch.full((1, 4, 4), -1)
    out = M3ambaLoss()(lg, lg, lg, y)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)  # no labels, identical heads
    out["loss"].backward()  # still differentiable
    shifted = lg.detach() + 3.0  # softmax-invariant shift: zero distance on probabilities, not on logits
    assert M3ambaLoss(consistency_on="prob")(shifted, shifted, lg.detach(), y)["cos_m1"].item() < 1e-6
    assert M3ambaLoss(consistency_on="logits")(shifted, shifted, lg.detach(), y)["cos_m1"].item() > 1e-3
    with pytest.raises(ValueError):
        M3ambaLoss(consistency_on="kl")


# -- config -----------------------------------------------------------------------------------------
def test_demo_config_matches_the_shipped_yaml(tmp_path):
    from pathlib import Path

    from m3amba.train import merge_config
    yaml_path = Path(__file__).resolve().parents[1] / "configs" / "eolearn_tiny.yaml"
    assert load_config(yaml_path) == merge_config(load_config(), DEMO_CONFIG)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"optimiser": {}}))
    with pytest.raises(ValueError, match="unknown config sections"):
        load_config(bad)


# -- engine -----------------------------------------------------------------------------------------
def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def test_train_checkpoints_evaluate_predict(tmp_path):
    scene = tiny_scene()
    summary = train(tiny_config(epochs=2, ema_decay=0.9, keep_checkpoints=1), tmp_path, scene=scene, log=lambda *_: None)
    ck = resolve_checkpoint(tmp_path)
    assert ck.name == "epoch_0002" and not (tmp_path / "checkpoints" / "epoch_0001").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    names = {p.name for p in ck.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "state.pt", "meta.json"} <= names
    state = torch.load(ck / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["class_names"] == ["a", "b", "c"]
    assert set(state["norm"]) >= {"offset1", "scale1", "offset2", "scale2", "method", "source"}
    assert {"optimizer", "scheduler", "rng", "step", "model", "config_json"} <= set(state)
    rows = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and (tmp_path / "log.csv").read_text().startswith("epoch,")
    m = summary["test"]
    assert m["count"] == m["expected_count"] == int((scene.test_mask > 0).sum())
    assert 0 <= m["oa"] <= 1 and 0 <= m["aa"] <= 1 and -1 <= m["kappa"] <= 1
    assert json.loads((tmp_path / "metrics_test.json").read_text())["count"] == m["count"]
    tm = load_trained(tmp_path)
    logits, counts = predict_scene(tm.model, scene, tm.norm, window=8, stride=4)
    assert logits.shape == (3, 14, 12) and counts.min() >= 1 and torch.isfinite(logits).all()


def test_resume_is_exact(tmp_path):
    """2 epochs straight == 1 epoch, stop, resume for the 2nd (weights, EMA, optimiser, schedule, RNG)."""
    scene = tiny_scene()
    cfg = tiny_config(epochs=2, ema_decay=0.9)
    quiet = dict(scene=scene, log=lambda *_: None, evaluate_test=False)
    train(cfg, tmp_path / "a", **quiet)
    train(cfg, tmp_path / "b", stop_after=1, **quiet)
    assert resolve_checkpoint(tmp_path / "b").name == "epoch_0001"
    torch.manual_seed(1234)  # the resumed run must not depend on the caller's RNG
    train(cfg, tmp_path / "b", resume=True, **quiet)
    a, b = resolve_checkpoint(tmp_path / "a"), resolve_checkpoint(tmp_path / "b")
    assert a.name == b.name == "epoch_0002"
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    from safetensors.torch import load_file
    ea, eb = load_file(str(a / "ema.safetensors")), load_file(str(b / "ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    sa, sb = (torch.load(p / "state.pt", weights_only=True) for p in (a, b))
    assert sa["step"] == sb["step"] and torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


@pytest.mark.filterwarnings("ignore:classes without training pixels")
def test_cli_train_evaluate_predict_on_synthetic_benchmark_files(tmp_path, capsys):
    """The CLI end to end on synthetic Trento-layout .mat files (no real data needed)."""
    from scipy.io import savemat

    from m3amba.cli import main
    scene = tiny_scene(h=10, w=9)
    data = tmp_path / "trento"
    data.mkdir()
    savemat(data / "HSI.mat", {"HSI": np.moveaxis(scene.modality1, 0, -1)})
    savemat(data / "LiDAR.mat", {"LiDAR": scene.modality2[0]})
    savemat(data / "TRLabel.mat", {"TRLabel": scene.train_mask.astype(np.uint8)})
    savemat(data / "TSLabel.mat", {"TSLabel": scene.test_mask.astype(np.uint8)})
    cfg = tiny_config(epochs=1)
    cfg["model"] = json.loads(json.dumps(TINY_MODEL))
    cfg["data"] = {"name": "trento", "data_dir": str(data), "check_sizes": False}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    out_json = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(out_json)]) == 0
    text = capsys.readouterr().out
    n_test = int((scene.test_mask > 0).sum())
    assert f"evaluated pixels: {n_test} (expected {n_test})" in text and "kappa" in text
    assert json.loads(out_json.read_text())["count"] == n_test
    assert main(["predict", "--checkpoint", str(run), "--out", str(tmp_path / "map.npy")]) == 0
    pred = np.load(tmp_path / "map.npy")
    assert pred.shape == (10, 9) and pred.min() >= 1 and pred.max() <= 3
    assert "predicted 90 of 90 pixels" in capsys.readouterr().out


def test_demo_without_data_says_where_to_get_it(tmp_path, capsys):
    from m3amba.cli import main
    assert main(["demo", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "example_data" in capsys.readouterr().err
