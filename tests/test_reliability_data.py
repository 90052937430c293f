"""Scenes: NaN/Inf/nodata values (report per band, raise / fill / mask), label masks, scene files, georeferencing.

Complements tests/test_data.py (which covers label values outside 1..K, boolean and non-integer
label maps, empty train/test masks, train/test overlap, H x W mismatches and the "fill" policy's
basic case); these tests do not repeat those.
"""
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from m3amba.data import DataNotFoundError, Scene, SceneError, compute_norm_stats, load_benchmark, split_labels
from m3amba.data.files import SceneFileError, read_array, read_raster
from m3amba.data.scene import scene_defaults
from m3amba.data.validate import ValueReport, scan_values

CLASSES = ["a", "b", "c"]


def arrays(h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int64)
    labels[:, : w // 3], labels[:, w // 3: 2 * w // 3], labels[:, 2 * w // 3:] = 1, 2, 3
    m1 = (rng.normal(size=(h, w, 3)) + labels[..., None]).astype(np.float32)
    m2 = rng.normal(size=(h, w, 1)).astype(np.float32)
    train, _, test = split_labels(labels, train_per_class=4, seed=seed)
    return m1, m2, train, test


def quiet_scene(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Scene(*args, **kwargs)


# -- NaN / Inf / nodata ------------------------------------------------------------------------------
def test_values_are_counted_per_band_and_kind():
    m1, m2, train, test = arrays()
    m1[0, 0, 1], m1[1, 1, 1], m1[2, 2, 2] = np.nan, np.inf, -np.inf
    m1[3, 3, 0] = -9999
    m2[4, 4, 0] = -9999
    report, (bad1, bad2) = scan_values(np.moveaxis(m1, -1, 0), np.moveaxis(m2, -1, 0), nodata=-9999)
    assert report.per_band(1) == {0: {"NaN": 0, "+Inf": 0, "-Inf": 0, "nodata": 1},
                                  1: {"NaN": 1, "+Inf": 1, "-Inf": 0, "nodata": 0},
                                  2: {"NaN": 0, "+Inf": 0, "-Inf": 1, "nodata": 0}}
    assert report.per_band(2) == {0: {"NaN": 0, "+Inf": 0, "-Inf": 0, "nodata": 1}}
    assert int(report.invalid_pixels.sum()) == 5 and bad1.sum() == 4 and bad2.sum() == 1
    # a pair gives one nodata value per modality
    report, _ = scan_values(np.moveaxis(m1, -1, 0), np.moveaxis(m2, -1, 0), nodata=(None, -9999))
    assert 0 not in report.per_band(1)  # -9999 is a plain value in modality 1 now
    assert report.per_band(2) == {0: {"NaN": 0, "+Inf": 0, "-Inf": 0, "nodata": 1}}


def test_raise_policy_reports_counts_per_band_and_the_options():
    m1, m2, train, test = arrays()
    m1[0, 0, 1], m1[1, 1, 1], m1[2, 2, 2] = np.nan, np.inf, -np.inf
    m2[5, 5, 0] = -9999
    with pytest.raises(SceneError, match=r"modality1 has non-finite values \(band 1: 2, band 2: 1\); "
                                         r"modality2 has nodata values \(= -9999\) \(band 0: 1\).*"
                                         r"nonfinite='fill'.*nonfinite='mask'"):
        Scene(m1, m2, train, test, CLASSES, nodata=-9999)
    for policy in ("raise", "fail"):
        with pytest.raises(SceneError, match="non-finite"):
            Scene(m1, m2, train, test, CLASSES, nonfinite=policy)
    with pytest.raises(SceneError, match="nonfinite must be one of raise, fill, mask"):
        Scene(m1, m2, train, test, CLASSES, nonfinite="zero")


def test_clean_scene_reports_nothing():
    s = Scene(*arrays(), CLASSES)
    assert isinstance(s.value_report, ValueReport) and not s.value_report.any and s.valid_mask is None
    assert "invalid values: none" in s.value_report.summary() and "invalid" not in s.summary()


def test_fill_policy_replaces_by_the_band_mean_and_keeps_labels():
    m1, m2, train, test = arrays()
    m1[0, 0, 1] = np.nan
    m2[3, 3, 0] = -9999
    with pytest.warns(UserWarning, match=r"non-finite values \(band 1: 1\).*nodata values.*replaced by the band mean"):
        s = Scene(m1, m2, train, test, CLASSES, nonfinite="fill", nodata=-9999)
    assert np.isfinite(s.modality1).all() and (s.modality2 != -9999).all()
    good = np.delete(m1[..., 1].ravel(), 0)
    assert s.modality1[1, 0, 0] == pytest.approx(good.mean(), rel=1e-6)
    assert s.valid_mask is None
    np.testing.assert_array_equal(s.train_mask, train)
    assert "invalid values (policy fill): 2 of 120 pixels affected" in s.summary()


def test_mask_policy_takes_invalid_pixels_out_of_every_split():
    m1, m2, train, test = arrays()
    tr = tuple(np.argwhere(train > 0)[0])
    te = tuple(np.argwhere(test > 0)[0])
    m1[tr + (0,)] = np.nan
    m2[te + (0,)] = np.inf
    with pytest.warns(UserWarning, match=r"2 pixels concerned masked out \(labelled pixels taken out: train 1, test 1\)"):
        s = Scene(m1, m2, train, test, CLASSES, nonfinite="mask")
    assert np.isfinite(s.modality1).all() and np.isfinite(s.modality2).all()
    assert not s.valid_mask[tr] and not s.valid_mask[te] and s.valid_mask.sum() == 118
    assert s.train_mask[tr] == 0 and s.test_mask[te] == 0
    assert s.counts("train").sum() == (train > 0).sum() - 1
    assert s.value_report.dropped_labels == {"train": 1, "test": 1}
    assert "labels taken out (masked pixels): train 1, test 1" in s.summary()


def test_mask_policy_that_empties_the_training_mask_is_an_error():
    m1, m2, train, test = arrays()
    m1[train > 0, 0] = np.nan
    with pytest.raises(SceneError, match=r"train_mask has no labelled pixel \(all 0\) after masking \d+ pixels"):
        quiet_scene(m1, m2, train, test, CLASSES, nonfinite="mask")


def test_scene_defaults_reach_scenes_built_without_a_policy():
    m1, m2, train, test = arrays()
    m1[0, 0, 0] = -1.0
    Scene(m1, m2, train, test, CLASSES)  # -1 is a value like any other
    with scene_defaults(nonfinite="mask", nodata=-1.0):
        s = quiet_scene(m1, m2, train, test, CLASSES)
        assert s.valid_mask is not None and not s.valid_mask[0, 0]
        with scene_defaults(nonfinite="raise"):  # nested: nodata stays, policy changes
            with pytest.raises(SceneError, match="nodata values"):
                Scene(m1, m2, train, test, CLASSES)
        s = quiet_scene(m1, m2, train, test, CLASSES, nonfinite="fill")  # an explicit argument wins
        assert s.valid_mask is None
    Scene(m1, m2, train, test, CLASSES)  # outside the block: defaults restored
    with pytest.raises(SceneError, match="nonfinite must be one of"):
        with scene_defaults(nonfinite="ignore"):
            pass


def test_normalisation_statistics_leave_masked_pixels_out():
    m1, m2, train, test = arrays()
    m1[0, 0, 0] = -9999.0
    s = quiet_scene(m1, m2, train, test, CLASSES, nonfinite="mask", nodata=-9999)
    st = compute_norm_stats(s, "zscore", "scene")
    valid = np.delete(m1[..., 0].ravel(), 0).astype(np.float64)
    assert st.offset1[0] == pytest.approx(valid.mean(), rel=1e-5)
    assert st.scale1[0] == pytest.approx(valid.std(), rel=1e-5)


def _tiny_config():
    return {"model": {"name": "m3amba_tiny_noclip",
                      "args": {"embed_dim": 16, "depth": 1, "d_state": 4, "ssm_ratio": 1.0, "drop_path_rate": 0.0}},
            "train": {"epochs": 1, "batch_size": 4, "samples_per_epoch": 8, "window": 8, "seed": 0, "device": "cpu"},
            "eval": {"window": 8, "stride": 4, "batch_size": 16}}


@pytest.mark.parametrize("policy", ["fill", "mask"])
def test_one_nan_pixel_never_becomes_a_nan_map(tmp_path, policy):
    from m3amba.train import predict_scene, train
    m1, m2, train_mask, test = arrays(h=16, w=14)
    m1[7, 6, 2] = np.nan
    scene = quiet_scene(m1, m2, train_mask, test, CLASSES, nonfinite=policy)
    summary = train(_tiny_config(), tmp_path, scene=scene, log=lambda *_: None)
    from m3amba.train import load_trained
    tm = load_trained(tmp_path)
    logits, counts = predict_scene(tm.model, scene, tm.norm, window=8, stride=4)
    assert torch.isfinite(logits).all() and counts.min() >= 1
    m = summary["test"]
    assert m["count"] == m["expected_count"] == int((scene.test_mask > 0).sum())


def test_config_and_cli_policy_with_nodata_on_benchmark_files(tmp_path, capsys):
    """data.nonfinite / data.nodata reach any reader; predict writes 0 (no data) on masked pixels."""
    from scipy.io import savemat

    from m3amba.cli import main
    from m3amba.train import build_scene
    m1, m2, train, test = arrays(h=12, w=10)
    m1[2, 3, :] = -9999.0  # a nodata pixel in every band of modality 1
    folder = tmp_path / "trento"
    folder.mkdir()
    savemat(folder / "HSI.mat", {"HSI": m1})
    savemat(folder / "LiDAR.mat", {"LiDAR": m2[..., 0]})
    savemat(folder / "TRLabel.mat", {"TRLabel": train.astype(np.uint8)})
    savemat(folder / "TSLabel.mat", {"TSLabel": test.astype(np.uint8)})
    data = {"name": "trento", "data_dir": str(folder), "check_sizes": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_scene(data)  # -9999 is not nodata unless configured
        with pytest.raises(SceneError, match=r"modality1 has nodata values \(= -9999\) \(band 0: 1, band 1: 1, band 2: 1\)"):
            build_scene({**data, "nodata": -9999})
        scene = build_scene({**data, "nodata": -9999, "nonfinite": "mask"})
    assert not scene.valid_mask[2, 3]
    cfg = dict(_tiny_config(), data=data)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(run), "--quiet",
                     "--nonfinite", "mask", "--nodata", "-9999"]) == 0
        out = capsys.readouterr().out
        assert "invalid values (policy mask): 1 of 120 pixels affected" in out
        assert json.loads((run / "config.json").read_text())["data"]["nonfinite"] == "mask"
        assert main(["predict", "--checkpoint", str(run), "--out", str(tmp_path / "map.npy")]) == 0
    class_map = np.load(tmp_path / "map.npy")
    assert class_map[2, 3] == 0 and (np.delete(class_map.ravel(), 2 * 10 + 3) >= 1).all()
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "cfg.json"), "--nodata", "a,b"])


# -- label masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which, value, message", [
    ("test", 7, r"test_mask values must be 0 \(unlabelled\) or 1..3.*found range 0..7"),
    ("val", -2, r"val_mask values must be 0 \(unlabelled\) or 1..3.*0-based labels\?"),
])
def test_label_values_outside_the_class_range_in_test_and_val(which, value, message):
    m1, m2, train, test = arrays()
    val = np.zeros_like(train)
    pixel = tuple(np.argwhere(test > 0)[0])
    (test if which == "test" else val)[pixel] = value
    with pytest.raises(SceneError, match=message):
        Scene(m1, m2, train, test, CLASSES, val_mask=val)


def test_classes_in_test_but_not_in_train_warn_with_their_test_pixels():
    m1, m2, train, test = arrays()
    train = np.where(train == 3, 0, train)
    with pytest.warns(UserWarning, match=r"classes without training pixels: c; of these, c \(\d+ test pixels\) appear "
                                         r"in the test mask: the model cannot learn them"):
        Scene(m1, m2, train, test, CLASSES)


def test_train_val_overlap_and_empty_val_mask():
    m1, m2, train, test = arrays()
    val = np.zeros_like(train)
    with pytest.raises(SceneError, match="val_mask has no labelled pixel"):
        Scene(m1, m2, train, test, CLASSES, val_mask=val)
    r, c = np.argwhere(train > 0)[0]
    val[r, c] = train[r, c]
    with pytest.raises(SceneError, match="1 pixels are labelled in both the train and the val mask"):
        Scene(m1, m2, train, test, CLASSES, val_mask=val)


def test_a_label_map_of_another_size_and_training_windows_without_labels():
    from m3amba.data import TrainWindows
    m1, m2, train, test = arrays()
    with pytest.raises(SceneError, match="test_mask is 11x10 but the modalities are 12x10"):
        Scene(m1, m2, train, test[:-1], CLASSES)
    with pytest.raises(ValueError, match="no training pixel"):
        TrainWindows(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64))


# -- scene files ------------------------------------------------------------------------------------
def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="scene file not found: .*absent.npy"):
        read_array(tmp_path / "absent.npy")
    (tmp_path / "empty.mat").write_bytes(b"")
    with pytest.raises(SceneFileError, match=r"empty.mat is empty \(0 bytes"):
        read_array(tmp_path / "empty.mat")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(SceneFileError, match="unknown file type '.csv'"):
        read_array(tmp_path / "x.csv")


@pytest.mark.parametrize("kind", ["npy", "npz", "mat", "mat73", "h5"])
@pytest.mark.parametrize("keep", [60, 300, -40])
def test_truncated_files_are_reported_as_truncated(tmp_path, kind, keep):
    a = np.arange(20 * 20 * 5, dtype=np.float32).reshape(20, 20, 5)
    path = tmp_path / f"scene.{kind[:3] if kind != 'h5' else 'h5'}"
    if kind == "npy":
        np.save(path, a)
    elif kind == "npz":
        np.savez(path, HSI=a)
    elif kind == "mat":
        from scipy.io import savemat
        savemat(path, {"HSI": a})
    else:
        h5py = pytest.importorskip("h5py")
        with h5py.File(path, "w", userblock_size=512 if kind == "mat73" else 0) as f:
            f["HSI"] = a.T if kind == "mat73" else a
        if kind == "mat73":
            with open(path, "r+b") as f:
                f.write(b"MATLAB 7.3 MAT-file, synthetic".ljust(116) + bytes(8) + b"\x00\x02IM")
    np.testing.assert_array_equal(read_array(path, "HSI" if kind != "npy" else None), a)
    _truncate(path, keep)
    with pytest.raises(SceneFileError, match="truncated or corrupt"):
        read_array(path, "HSI" if kind != "npy" else None)


def test_wrong_keys_list_the_variables_found(tmp_path):
    from scipy.io import savemat
    savemat(tmp_path / "HSI.mat", {"hyper": np.zeros((3, 3, 2)), "extra": np.ones(2)})
    with pytest.raises(KeyError, match=r"has none of the variables \['HSI', 'hsi'\] \(found: \['hyper', 'extra'\]\)"):
        read_array(tmp_path / "HSI.mat", ["HSI", "hsi"])
    with pytest.raises(KeyError, match="holds 2 variables .*say which one"):
        read_array(tmp_path / "HSI.mat")
    np.savez(tmp_path / "a.npz", x=np.zeros(2))
    with pytest.raises(KeyError, match=r"found: \['x'\]"):
        read_array(tmp_path / "a.npz", "y")
    # the benchmark readers name the file, the variables they look for and those found
    for name, key in (("LiDAR.mat", "LiDAR"), ("TRLabel.mat", "TRLabel"), ("TSLabel.mat", "TSLabel")):
        savemat(tmp_path / name, {key: np.zeros((3, 3))})
    with pytest.raises(KeyError, match=r"HSI.mat has none of the variables \['HSI', 'hsi', 'data'\]"):
        load_benchmark("trento", tmp_path, check_sizes=False)


class _Sentinel:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_object_arrays_would_need_unpickling_and_are_refused(tmp_path):
    sentinel = tmp_path / "ran.txt"
    np.save(tmp_path / "obj.npy", np.array([_Sentinel(sentinel)], dtype=object), allow_pickle=True)
    with pytest.raises(SceneFileError, match="would need unpickling"):
        read_array(tmp_path / "obj.npy")
    assert not sentinel.exists()
    with open(tmp_path / "raw.npy", "wb") as f:  # not even a .npy: a bare pickle
        pickle.dump(_Sentinel(sentinel), f)
    with pytest.raises(SceneFileError):
        read_array(tmp_path / "raw.npy")
    assert not sentinel.exists()


def test_modalities_of_other_shapes_in_files(tmp_path):
    from scipy.io import savemat
    m1, m2, train, test = arrays()
    savemat(tmp_path / "HSI.mat", {"HSI": m1})
    savemat(tmp_path / "LiDAR.mat", {"LiDAR": m2[:-1, :, 0]})  # one row short
    savemat(tmp_path / "TRLabel.mat", {"TRLabel": train})
    savemat(tmp_path / "TSLabel.mat", {"TSLabel": test})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SceneError, match="modality1 is 12x10 but modality2 is 11x10; they must be co-registered"):
            load_benchmark("trento", tmp_path, check_sizes=False)
        savemat(tmp_path / "LiDAR.mat", {"LiDAR": m2[..., 0]})
        with pytest.raises(ValueError, match=r"trento: got 12x10 pixels with 3\+1 bands, expected 166x600 with 63\+1"):
            load_benchmark("trento", tmp_path)


def test_truncated_benchmark_file_names_the_file(tmp_path):
    from scipy.io import savemat
    m1, m2, train, test = arrays()
    for name, key, a in (("HSI.mat", "HSI", m1), ("LiDAR.mat", "LiDAR", m2[..., 0]),
                         ("TRLabel.mat", "TRLabel", train), ("TSLabel.mat", "TSLabel", test)):
        savemat(tmp_path / name, {key: a})
    _truncate(tmp_path / "HSI.mat", 300)
    with pytest.raises(SceneFileError, match="HSI.mat .*truncated or corrupt"):
        load_benchmark("trento", tmp_path, check_sizes=False)


def test_eolearn_files_truncated_or_of_the_wrong_shape(tmp_path):
    from m3amba.data import load_eolearn_slovenia
    rng = np.random.default_rng(0)
    np.save(tmp_path / "s2_l1c.npy", rng.random((2, 6, 5, 13), dtype=np.float32))
    np.save(tmp_path / "dem.npy", rng.random((6, 5, 1), dtype=np.float32))
    lulc = np.zeros((6, 5, 1), np.uint16)
    lulc[:3], lulc[3:] = 1, 2
    np.save(tmp_path / "lulc.npy", lulc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = load_eolearn_slovenia(tmp_path, verify=False, train_per_class=2)
    assert s.shape == (6, 5) and s.in_chans == (13, 1)
    with pytest.raises(ValueError, match="sha256"):
        load_eolearn_slovenia(tmp_path)  # the real files' checksums catch any other file
    np.save(tmp_path / "dem.npy", rng.random((6, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"dem.npy has shape \(6, 5\); expected 3 dimensions"):
        load_eolearn_slovenia(tmp_path, verify=False)
    np.save(tmp_path / "dem.npy", rng.random((6, 5, 1), dtype=np.float32))
    _truncate(tmp_path / "s2_l1c.npy", -100)
    with pytest.raises(SceneFileError, match="s2_l1c.npy could not be read .*truncated or corrupt"):
        load_eolearn_slovenia(tmp_path, verify=False)


def test_geotiff_needs_rasterio(tmp_path):
    try:
        import rasterio  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs rasterio: pip install rasterio"):
            read_raster(tmp_path / "a.tif")
        with pytest.raises(ImportError, match="needs rasterio"):
            read_array(tmp_path / "a.tiff")
    else:  # pragma: no cover  (rasterio is optional)
        pytest.skip("rasterio is installed: the GeoTIFF path is exercised by the reader itself")


# -- georeferencing ----------------------------------------------------------------------------------
UTM33 = {"crs": "EPSG:32633", "transform": (10.0, 0.0, 500000.0, 0.0, -10.0, 5100000.0)}


class _RasterLike:
    """What rasterio's datasets expose: .crs and an Affine .transform (9 coefficients)."""

    def __init__(self, crs, transform):
        self.crs = crs
        self.transform = tuple(transform) + (0.0, 0.0, 1.0)


def test_same_grid_is_accepted_in_any_form():
    m1, m2, train, test = arrays()
    s = Scene(m1, m2, train, test, CLASSES, georef=(UTM33, _RasterLike("epsg:32633", UTM33["transform"])))
    assert s.georef[0] == s.georef[1] == {"crs": "EPSG:32633", "transform": UTM33["transform"]}
    s = Scene(m1, m2, train, test, CLASSES, georef=UTM33)  # one georeference for both
    assert s.georef[0] == s.georef[1]
    Scene(m1, m2, train, test, CLASSES, georef=(UTM33, {"crs": "EPSG:32633"}))  # unknown transform: not compared


@pytest.mark.parametrize("other, message", [
    ({"crs": "EPSG:32634", "transform": UTM33["transform"]}, r"CRS EPSG:32633 vs EPSG:32634"),
    ({"crs": "EPSG:32633", "transform": (10.0, 0.0, 500005.0, 0.0, -10.0, 5100000.0)},
     r"origin \(500000.0, 5100000.0\) vs \(500005.0, 5100000.0\) \(differs by \(5.0, 0.0\) map units\)"),
    ({"crs": "EPSG:32633", "transform": (20.0, 0.0, 500000.0, 0.0, -20.0, 5100000.0)},
     r"pixel size \(10.0, -10.0\) vs \(20.0, -20.0\)"),
])
def test_modalities_on_different_grids_are_refused(other, message):
    m1, m2, train, test = arrays()
    with pytest.raises(SceneError, match=r"modality1 and modality2 are not on the same grid: .*" + message
                                         + r".*Resample one onto the other's grid"):
        Scene(m1, m2, train, test, CLASSES, georef=(UTM33, other))


def test_sub_pixel_differences_are_tolerated_and_bad_georefs_explained():
    m1, m2, train, test = arrays()
    nudged = {"crs": "EPSG:32633", "transform": (10.0, 0.0, 500000.001, 0.0, -10.0, 5100000.0)}
    Scene(m1, m2, train, test, CLASSES, georef=(UTM33, nudged))
    with pytest.raises(SceneError, match="must give 'crs' and/or 'transform'"):
        Scene(m1, m2, train, test, CLASSES, georef=({"epsg": 1}, UTM33))
    with pytest.raises(SceneError, match="six coefficients"):
        Scene(m1, m2, train, test, CLASSES, georef=({"transform": (1, 2)}, UTM33))
