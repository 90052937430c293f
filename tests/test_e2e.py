"""End to end on the real eo-learn Slovenia patch: train a tiny model a few steps, evaluate, predict a map.

Needs ../shared/data/eolearn_slovenia (relative to the repository); skipped when it is absent.
"""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from m3amba.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eolearn_slovenia"

pytestmark = pytest.mark.skipif(
    not (DATA / "s2_l1c.npy").is_file(),
    reason=f"eolearn_slovenia data not found at {DATA} (eo-learn's example_data, MIT; see m3amba.data.eolearn)",
)


def test_train_evaluate_predict_on_eolearn_slovenia(tmp_path, capsys):
    start = time.perf_counter()
    cfg = {
        "data": {"name": "eolearn_slovenia", "data_dir": str(DATA), "date": 0,
                 "split": {"train_per_class": 20, "seed": 0}},
        "model": {"name": "m3amba_tiny_noclip",
                  "args": {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0, "drop_path_rate": 0.0}},
        "train": {"epochs": 2, "batch_size": 8, "samples_per_epoch": 16, "window": 16, "lr": 3e-3, "seed": 0},
        "eval": {"window": 32, "stride": 16, "batch_size": 32},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(run), "--quiet"]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((run / "checkpoints" / "epoch_0002" / "metrics_test.json").read_text())
    # 5 classes present; 20 train pixels per class except cultivated land (11 pixels: 5 train)
    n_test = 9945 - (4 * 20 + 5)
    assert metrics["count"] == metrics["expected_count"] == n_test
    assert f"evaluated pixels: {n_test} (expected {n_test})" in text
    assert 0.0 <= metrics["oa"] <= 1.0 and 0.0 <= metrics["aa"] <= 1.0 and -1.0 <= metrics["kappa"] <= 1.0
    assert sum(metrics["support"].values()) == n_test

    out = tmp_path / "map.npy"
    assert main(["predict", "--checkpoint", str(run), "--out", str(out), "--save-logits", str(tmp_path / "lg.npy")]) == 0
    assert "predicted 10100 of 10100 pixels" in capsys.readouterr().out
    class_map = np.load(out)
    assert class_map.shape == (101, 100) and class_map.min() >= 1 and class_map.max() <= 5
    logits = np.load(tmp_path / "lg.npy")
    assert logits.shape == (5, 101, 100) and np.isfinite(logits).all()
    np.testing.assert_array_equal(logits.argmax(0) + 1, class_map)
    assert time.perf_counter() - start < 120  # about 20 s on 2 idle cores


def test_png_and_georeferenced_geotiff_maps(tmp_path):
    """write_map: a colour PNG with a legend, and a GeoTIFF that keeps the scene's CRS and transform."""
    pytest.importorskip("matplotlib")
    rasterio = pytest.importorskip("rasterio")
    from m3amba.cli import write_map
    from m3amba.data import load_eolearn_slovenia
    if not (DATA / "s2_l1c.npy").is_file():
        pytest.skip("the shared eo-learn scene is not beside the project")
    scene = load_eolearn_slovenia(DATA)
    class_map = (np.arange(101 * 100).reshape(101, 100) % len(scene.class_names) + 1).astype("uint16")
    png, tif = tmp_path / "map.png", tmp_path / "map.tif"
    write_map(png, class_map, scene.class_names, title="t")
    write_map(tif, class_map, scene.class_names, georef=scene.georef[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with rasterio.open(tif) as src:
        np.testing.assert_array_equal(src.read(1), class_map)
        assert src.crs.to_epsg() == 32633
        # the top-left corner and the pixel size come from eo-learn's bbox.geojson
        assert src.transform.c == pytest.approx(465181.0522318204) and src.transform.f == pytest.approx(5080254.63349641)
        assert src.transform.a == pytest.approx(9.9948, abs=1e-3) and src.transform.e == pytest.approx(-9.9974, abs=1e-3)
        assert json.loads(src.tags()["classes"])["1"] == scene.class_names[0]
