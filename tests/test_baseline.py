"""The per-pixel random-forest baseline: same split, same normalisation, every test pixel once."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from m3amba.baselines import baseline_from_config, pixel_features, random_forest_baseline  # noqa: E402
from m3amba.cli import main  # noqa: E402
from m3amba.data import Scene, compute_norm_stats, split_labels  # noqa: E402
from m3amba.train import build_scene, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EOLEARN = ROOT.parent / "shared" / "data" / "eolearn_slovenia"


def stripes_scene(h=12, w=18, k=3, seed=0, val=0):
    """k vertical stripes; modality 1 carries the class (plus noise), modality 2 is noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(w) * k // w + 1)[None, :].repeat(h, 0)
    labels[0, 0] = 0  # one unlabelled pixel
    train, val_mask, test = split_labels(labels, train_per_class=8, val_per_class=val, seed=seed)
    m1 = rng.normal(size=(h, w, 4)) * 0.3 + labels[..., None] * np.array([1.0, -2.0, 0.0, 0.5])
    m2 = rng.normal(size=(h, w, 2)) * 100 + 1000
    return Scene(m1, m2, train, test, [f"class {i}" for i in range(1, k + 1)], val_mask=val_mask, name="stripes")


def test_pixel_features_are_the_normalised_bands_of_both_modalities():
    scene = stripes_scene()
    norm = compute_norm_stats(scene, "minmax", "scene")
    f = pixel_features(scene, norm)
    assert f.shape == (12 * 18, 6) and f.dtype == np.float32
    assert f.min() >= 0 and f.max() <= 1 + 1e-6
    x1, x2 = norm.apply(scene.modality1, scene.modality2)
    np.testing.assert_allclose(f[18 * 3 + 5], np.concatenate([x1[:, 3, 5], x2[:, 3, 5]]))
    np.testing.assert_allclose(pixel_features(scene)[0, 4:], scene.modality2[:, 0, 0])


def test_random_forest_scores_every_test_pixel_once_and_is_deterministic():
    scene = stripes_scene()
    m = random_forest_baseline(scene, n_estimators=20, seed=3)
    n_test = int((scene.test_mask > 0).sum())
    assert m["count"] == m["expected_count"] == n_test == sum(m["support"].values())
    assert m["oa"] > 0.95 and m["aa"] > 0.95 and m["kappa"] > 0.9
    assert np.asarray(m["confusion_matrix"]).sum() == n_test
    assert m["train_count"] == int((scene.train_mask > 0).sum()) == 24 and m["features"] == 6
    assert m["params"]["n_estimators"] == 20 and m["params"]["random_state"] == 3
    assert m["normalization"] == {"method": "minmax", "source": "scene"} and m["split"] == "test"
    assert "every test pixel predicted exactly once" in m["protocol"]
    again = random_forest_baseline(scene, n_estimators=20, seed=3, n_jobs=1)
    assert again["confusion_matrix"] == m["confusion_matrix"]
    json.dumps(m)  # JSON-ready


def test_normalisation_options_validation_split_and_errors():
    scene = stripes_scene(val=2)
    m = random_forest_baseline(scene, n_estimators=5, normalization={"method": "zscore", "source": "train"},
                               split="val")
    assert m["normalization"] == {"method": "zscore", "source": "train"}
    assert m["count"] == m["expected_count"] == int((scene.val_mask > 0).sum()) == 6
    with pytest.raises(ValueError, match="no val labels"):
        random_forest_baseline(stripes_scene(), n_estimators=5, split="val")
    with pytest.raises(ValueError, match="'test' or 'val'"):
        random_forest_baseline(scene, n_estimators=5, split="train")


def test_missing_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    with pytest.raises(ImportError, match=r"m3amba\[baseline\]"):
        random_forest_baseline(stripes_scene(), n_estimators=5)


def _trento_files(folder: Path, scene: Scene) -> None:
    from scipy.io import savemat
    folder.mkdir()
    savemat(folder / "HSI.mat", {"HSI": np.moveaxis(scene.modality1, 0, -1)})
    savemat(folder / "LiDAR.mat", {"LiDAR": scene.modality2[0]})
    savemat(folder / "TRLabel.mat", {"TRLabel": scene.train_mask.astype(np.uint8)})
    savemat(folder / "TSLabel.mat", {"TSLabel": scene.test_mask.astype(np.uint8)})


@pytest.mark.filterwarnings("ignore:classes without training pixels")
def test_cli_baseline_reads_the_training_config(tmp_path, capsys):
    scene = stripes_scene(k=6, w=24)
    _trento_files(tmp_path / "trento", scene)
    cfg = {"data": {"name": "trento", "data_dir": str(tmp_path / "trento"), "check_sizes": False,
                    "normalization": {"method": "zscore", "source": "train"}},
           "train": {"seed": 7}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "rf" / "rf.json"
    assert main(["baseline", str(tmp_path / "cfg.json"), "--out", str(out), "--n-estimators", "10"]) == 0
    text = capsys.readouterr().out
    m = json.loads(out.read_text())
    n_test = int((scene.test_mask > 0).sum())
    assert f"evaluated pixels: {n_test} (expected {n_test})" in text and "10 trees, seed 7" in text
    assert m["count"] == n_test and m["params"]["random_state"] == 7 and m["normalization"]["method"] == "zscore"
    assert m["class_names"][0] == "apple trees" and m["data"]["name"] == "trento" and "data_dir" not in m["data"]
    # the same split the training engine builds from that config
    built = build_scene(load_config(tmp_path / "cfg.json")["data"])
    np.testing.assert_array_equal(built.test_mask, scene.test_mask)
    direct = baseline_from_config(load_config(tmp_path / "cfg.json"), n_estimators=10)
    assert direct["confusion_matrix"] == m["confusion_matrix"]
    # --config works too, and --data-dir overrides the config's folder
    assert main(["baseline", "--config", str(tmp_path / "cfg.json"), "--data-dir", str(tmp_path / "none"),
                 "--n-estimators", "2"]) == 2
    assert "files missing" in capsys.readouterr().err


@pytest.mark.skipif(not (EOLEARN / "s2_l1c.npy").is_file(), reason=f"eolearn_slovenia data not found at {EOLEARN}")
def test_random_forest_on_the_eolearn_scene_and_the_demo_split(tmp_path, capsys):
    """configs/eolearn_tiny.yaml's split: 205 train / 9,740 test pixels; 500 trees, seed 0."""
    out = tmp_path / "rf.json"
    assert main(["baseline", str(ROOT / "configs" / "eolearn_tiny.yaml"), "--data-dir", str(EOLEARN),
                 "--out", str(out)]) == 0
    assert "evaluated pixels: 9740 (expected 9740)" in capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m["train_count"] == 205 and m["features"] == 66 and m["count"] == 9740
    # measured with scikit-learn 1.9: OA 84.49, AA 76.34, kappa 0.6416 (other versions may differ a little)
    assert abs(m["oa"] - 0.8449) < 0.02 and abs(m["kappa"] - 0.6416) < 0.04 and 0.6 < m["aa"] < 0.9
