"""Scenes, splits, normalisation, window sampling, sliding-window stitching and data-set readers."""
from pathlib import Path

import numpy as np
import pytest
import torch

from m3amba.data import (BENCHMARKS, DataNotFoundError, Scene, SceneError, TrainWindows, compute_norm_stats,
                         load_benchmark, load_eolearn_slovenia, sliding_window_logits, split_labels, tile_positions)
from m3amba.data.normalize import NormStats

EOLEARN = Path(__file__).resolve().parents[2] / "shared" / "data" / "eolearn_slovenia"


def _scene_arrays(h=12, w=10, c1=4, c2=2, k=3, seed=0):
    rng = np.random.default_rng(seed)
    m1 = rng.normal(size=(h, w, c1)).astype(np.float32)
    m2 = rng.normal(size=(h, w, c2)).astype(np.float32)
    labels = rng.integers(0, k + 1, size=(h, w))
    labels[0, :k] = np.arange(1, k + 1)
    train, _, test = split_labels(labels, train_per_class=3, seed=seed)
    return m1, m2, train, test, [f"c{i}" for i in range(k)]


# -- Scene -----------------------------------------------------------------------------------------
def test_scene_layouts_and_facts():
    m1, m2, train, test, names = _scene_arrays()
    s = Scene(m1, m2, train, test, names)
    assert s.shape == (12, 10) and s.in_chans == (4, 2) and s.num_classes == 3
    assert s.modality1.shape == (4, 12, 10) and s.modality1.dtype == np.float32
    np.testing.assert_array_equal(s.modality1[1], m1[..., 1])
    s2 = Scene(np.moveaxis(m1, -1, 0), np.moveaxis(m2, -1, 0), train, test, names, layout="chw")
    np.testing.assert_array_equal(s2.modality1, s.modality1)
    s3 = Scene(m1, m2[..., 0], train, test, names)  # a 2-D array is one band
    assert s3.in_chans == (4, 1)
    assert s.counts("train").sum() == (train > 0).sum() and "total" in s.summary()


@pytest.mark.parametrize("change, message", [
    (dict(m2=np.zeros((11, 10, 2))), "co-registered"),
    (dict(train=np.zeros((12, 9), int)), "train_mask is 12x9"),
    (dict(train=np.full((12, 10), 4)), "1..3"),
    (dict(train=-np.ones((12, 10), int)), "0-based labels"),
    (dict(train=np.zeros((12, 10), int)), "no labelled pixel"),
    (dict(test=np.zeros((12, 10), int)), "test_mask has no labelled pixel"),
    (dict(train=np.full((12, 10), 0.5)), "whole class ids"),
    (dict(train=np.ones((12, 10), bool)), "not a boolean mask"),
    (dict(m1=np.zeros((12, 10, 2, 2))), "2-D"),
])
def test_scene_validation_errors(change, message):
    m1, m2, train, test, names = _scene_arrays()
    args = dict(m1=m1, m2=m2, train=train, test=test)
    args.update(change)
    with pytest.raises(SceneError, match=message):
        Scene(args["m1"], args["m2"], args["train"], args["test"], names)


def test_scene_overlap_and_nonfinite():
    m1, m2, train, test, names = _scene_arrays()
    test2 = test.copy()
    r, c = np.argwhere(train > 0)[0]
    test2[r, c] = train[r, c]
    with pytest.raises(SceneError, match="1 pixels are labelled in both the train and the test"):
        Scene(m1, m2, train, test2, names)
    Scene(m1, m2, train, test2, names, allow_overlap=True)
    bad = m1.copy()
    bad[0, 0, 1] = np.nan
    bad[1, 1, 1] = np.inf
    bad[2, 2, 3] = -np.inf
    with pytest.raises(SceneError, match=r"modality1 has non-finite values \(band 1: 2, band 3: 1\)"):
        Scene(bad, m2, train, test, names)
    with pytest.warns(UserWarning, match="band mean"):
        s = Scene(bad, m2, train, test, names, nonfinite="fill")
    assert np.isfinite(s.modality1).all()


def test_scene_warns_about_classes_without_training_pixels():
    m1, m2, train, test, names = _scene_arrays()
    with pytest.warns(UserWarning, match="classes without training pixels: c3"):
        Scene(m1, m2, train, test, names + ["c3"])


# -- splits ------------------------------------------------------------------------------------------
def test_split_per_class_is_seeded_disjoint_and_caps_small_classes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(30, 30))
    labels[labels == 3] = 0
    labels[0, :5] = 3  # a 5-pixel class: at most half (2) goes to training
    tr, va, te = split_labels(labels, train_per_class=10, val_per_class=3, seed=7)
    tr2, va2, te2 = split_labels(labels, train_per_class=10, val_per_class=3, seed=7)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    assert not ((tr > 0) & (te > 0)).any() and not ((va > 0) & (te > 0)).any() and not ((tr > 0) & (va > 0)).any()
    counts = np.bincount(tr.ravel(), minlength=4)[1:]
    assert counts.tolist() == [10, 10, 2]
    assert np.bincount(va.ravel(), minlength=4)[1:].tolist() == [3, 3, 1]
    # every labelled pixel lands in exactly one split, with its own label
    union = tr + va + te
    np.testing.assert_array_equal(union, labels)
    assert not np.array_equal(split_labels(labels, train_per_class=10, seed=8)[0], tr)


def test_split_fraction_and_blocks():
    rng = np.random.default_rng(2)
    labels = rng.integers(1, 3, size=(40, 40))
    tr, _, te = split_labels(labels, train_fraction=0.25, seed=0)
    assert abs((tr > 0).sum() / labels.size - 0.25) < 0.01
    tr, _, te = split_labels(labels, block_size=10, seed=0)
    block = lambda m: {(r // 10, c // 10) for r, c in np.argwhere(m > 0)}  # noqa: E731
    assert block(tr) and block(te) and not block(tr) & block(te)  # spatially disjoint blocks
    with pytest.raises(ValueError, match="not both"):
        split_labels(labels, train_per_class=3, train_fraction=0.5)


# -- normalisation -----------------------------------------------------------------------------
def test_norm_stats_scene_and_train_sources():
    m1, m2, train, test, names = _scene_arrays()
    m2[..., 1] = 5.0  # a constant band must not produce NaN
    s = Scene(m1, m2, train, test, names)
    st = compute_norm_stats(s, "minmax", "scene")
    x1, x2 = st.apply(s.modality1, s.modality2)
    np.testing.assert_allclose(x1.reshape(4, -1).min(1), 0, atol=1e-6)
    np.testing.assert_allclose(x1.reshape(4, -1).max(1), 1, atol=1e-6)
    assert np.isfinite(x2).all() and (x2[1] == 0).all()
    z = compute_norm_stats(s, "zscore", "train")
    sel = s.train_mask > 0
    np.testing.assert_allclose(z.offset1, s.modality1[:, sel].mean(1), rtol=1e-5, atol=1e-6)
    back = NormStats.from_state(z.to_state())
    np.testing.assert_array_equal(back.scale2, z.scale2)
    assert (back.method, back.source) == ("zscore", "train")
    with pytest.raises(ValueError, match="method"):
        compute_norm_stats(s, "robust")


# -- sliding windows -----------------------------------------------------------------------------
def _stitch_case(h, w, window, stride, margin, seed):
    """Fake model: output = 1000*top + left (the window's position) + 10*local row + local col + input."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=(2, h, w)).astype(np.float32)
    x2 = rng.normal(size=(1, h, w)).astype(np.float32)
    seen = []

    def predict(b1, b2, positions):
        out = torch.zeros(b1.shape[0], 3, window, window, dtype=torch.float64)
        local = 10.0 * torch.arange(window)[:, None] + torch.arange(window)[None, :]
        for i, (top, left) in enumerate(positions):
            seen.append((top, left, b1[i].clone()))
            out[i, 0] = 1000.0 * top + left + local
            out[i, 1] = b1[i, 0]
            out[i, 2] = 1.0
        return out

    logits, counts = sliding_window_logits(predict, x1, x2, 3, window=window, stride=stride, margin=margin,
                                           batch_size=5, dtype=torch.float64, pass_positions=True)
    assert logits.shape == (3, h, w) and counts.shape == (h, w)
    # brute force, independent of the tiling code
    m = margin if margin is not None else window - stride
    padded = np.pad(x1, ((0, 0), (m, h + 2 * window), (m, w + 2 * window)), mode="reflect")
    total = np.zeros((h, w))
    n = np.zeros((h, w))
    for top, left, content in seen:
        # the window's content is the reflect-padded scene at its reported position
        np.testing.assert_array_equal(content.numpy(), padded[:, top + m:top + m + window, left + m:left + m + window])
        for r in range(max(top, 0), min(top + window, h)):
            for c in range(max(left, 0), min(left + window, w)):
                total[r, c] += 1000.0 * top + left + 10.0 * (r - top) + (c - left)
                n[r, c] += 1
    assert (n >= 1).all(), "a pixel was not covered"
    np.testing.assert_array_equal(counts.numpy(), n)
    np.testing.assert_allclose(logits[0].double().numpy(), total / n, rtol=0, atol=1e-3)
    np.testing.assert_allclose(logits[1].numpy(), x1[0], atol=1e-6)  # placement: identity comes back in place
    np.testing.assert_allclose(logits[2].numpy(), 1.0)


@pytest.mark.parametrize("seed", range(12))
def test_stitching_random_sizes(seed):
    rng = np.random.default_rng(100 + seed)
    window = int(rng.integers(2, 12))
    stride = int(rng.integers(1, window + 1))
    h, w = (int(v) for v in rng.integers(1, 30, size=2))
    if seed < 3:  # scenes smaller than one window
        h, w = int(rng.integers(1, window + 1)), int(rng.integers(1, window + 1))
    margin = None if seed % 2 else int(rng.integers(0, window))
    _stitch_case(h, w, window, stride, margin, seed)


def test_stitching_edge_cases_and_errors():
    _stitch_case(1, 1, 4, 2, None, 0)
    _stitch_case(5, 3, 4, 4, 0, 1)  # no overlap, no margin
    with pytest.raises(ValueError, match="larger than the window"):
        tile_positions(10, 4, 5, 0)
    starts, total = tile_positions(10, 4, 3, 1)
    assert starts == [0, 3, 6, 8] and total == 12


def test_sliding_window_with_a_model():
    import m3amba
    model = m3amba.create_model("m3amba_tiny_noclip", in_chans=(3, 1), num_classes=4, embed_dim=16, depth=1).eval()
    x1, x2 = np.random.rand(3, 13, 9).astype(np.float32), np.random.rand(1, 13, 9).astype(np.float32)
    logits, counts = sliding_window_logits(model, x1, x2, 4, window=8, stride=4)
    assert logits.shape == (4, 13, 9) and torch.isfinite(logits).all() and counts.min() >= 1


# -- training windows -----------------------------------------------------------------------------
def test_train_windows_labels_only_training_pixels():
    m1, m2, train, test, names = _scene_arrays(h=9, w=7)
    s = Scene(m1, m2, train, test, names)
    tw = TrainWindows(s.modality1, s.modality2, s.train_mask, window=8, augment=False)
    plan = tw.epoch_plan(0, seed=3)
    assert len(plan) == (s.train_mask > 0).sum()
    b1, b2, y, valid = tw.batch(plan[:4])
    assert b1.shape == (4, 4, 8, 8) and b2.shape == (4, 2, 8, 8) and y.shape == (4, 8, 8)
    for (top, left, *_), yy in zip(plan[:4], y):
        # the anchor pixel is inside its window and keeps its (0-based) label
        assert (yy >= 0).any()
    # every labelled pixel of a window is a training pixel with the right class; padding is ignored
    padded = np.pad(s.train_mask - 1, 8, constant_values=-1)
    for (top, left, *_), yy in zip(plan[:4], y):
        np.testing.assert_array_equal(yy.numpy(), padded[top:top + 8, left:left + 8])
    assert not (y[~valid] >= 0).any()
    np.testing.assert_array_equal(tw.epoch_plan(0, seed=3), plan)
    assert not np.array_equal(tw.epoch_plan(1, seed=3), plan)
    # ranks take disjoint, equal slices of the same plan
    full = tw.epoch_plan(2, seed=3, samples=10)
    r0, r1 = tw.epoch_plan(2, 3, 10, rank=0, world_size=2), tw.epoch_plan(2, 3, 10, rank=1, world_size=2)
    assert len(r0) == len(r1) == 5
    np.testing.assert_array_equal(np.concatenate([r0, r1])[np.argsort(np.r_[0:10:2, 1:10:2])], full)


def test_train_windows_augment_keeps_image_and_labels_aligned():
    h, w = 6, 6
    x1 = np.arange(h * w, dtype=np.float32).reshape(1, h, w)
    labels = (np.arange(h * w).reshape(h, w) % 3) + 1
    tw = TrainWindows(x1, x1.copy(), labels, window=4, augment=True)
    b1, b2, y, valid = tw.batch(tw.epoch_plan(0, seed=0))
    # label = (pixel value % 3) + 1 everywhere inside the scene, whatever flip/rotation was applied
    lab = y[valid]
    np.testing.assert_array_equal(lab.numpy(), (b1[:, 0][valid].numpy().astype(int) % 3))


# -- eo-learn Slovenia ------------------------------------------------------------------------------
def test_eolearn_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="eo-learn.*example_data"):
        load_eolearn_slovenia(tmp_path)


@pytest.mark.skipif(not EOLEARN.is_dir(), reason=f"eolearn_slovenia data not found at {EOLEARN}")
def test_eolearn_loader():
    s = load_eolearn_slovenia(EOLEARN)
    assert s.shape == (101, 100) and s.in_chans == (13, 1)
    assert s.class_names == ["cultivated land", "forest", "grassland", "shrubland", "artificial surface"]
    assert s.counts("train").tolist() == [5, 50, 50, 50, 50]
    assert s.counts("test").tolist() == [6, 7551, 1727, 308, 148]
    assert s.meta["source_values"] == [1, 2, 3, 4, 8]
    stacked = load_eolearn_slovenia(EOLEARN, date="stack", train_per_class=None, train_fraction=0.1,
                                    val_per_class=5, verify=False)
    assert stacked.in_chans == (65, 1) and stacked.counts("val").sum() > 0
    blocks = load_eolearn_slovenia(EOLEARN, block_size=25, train_per_class=20, verify=False)
    assert not ((blocks.train_mask > 0) & (blocks.test_mask > 0)).any()
    with pytest.raises(ValueError, match="date must be"):
        load_eolearn_slovenia(EOLEARN, date=7, verify=False)


def test_eolearn_checksum_mismatch(tmp_path):
    if not EOLEARN.is_dir():
        pytest.skip(f"eolearn_slovenia data not found at {EOLEARN}")
    for f in ("s2_l1c.npy", "dem.npy"):
        (tmp_path / f).write_bytes((EOLEARN / f).read_bytes())
    lulc = np.load(EOLEARN / "lulc.npy")
    lulc[0, 0, 0] = 2
    np.save(tmp_path / "lulc.npy", lulc)
    with pytest.raises(ValueError, match="sha256"):
        load_eolearn_slovenia(tmp_path)


# -- benchmark readers (synthetic files with the usual names and keys) --------------------------------
def _write_benchmark(folder, spec, h=7, w=9, v73=False):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    k = len(spec.class_names)
    c1, c2 = spec.bands
    m1 = rng.normal(size=(h, w, c1)).astype(np.float32)
    m2 = rng.normal(size=(h, w, c2)).astype(np.float32)
    if c2 == 1:
        m2 = m2[..., 0]
    labels = np.zeros((h, w), np.uint8)
    labels.ravel()[: 2 * k] = np.repeat(np.arange(1, k + 1), 2)
    train = np.where(np.arange(h * w).reshape(h, w) % 2 == 0, labels, 0)
    test = np.where(np.arange(h * w).reshape(h, w) % 2 == 1, labels, 0)
    arrays = {"m1": m1, "m2": m2, "train": train, "test": test}
    files = {}
    for role, fs in spec.files.items():
        files.setdefault(fs.names[0], {})[fs.keys[0]] = arrays[role]
    for name, content in files.items():
        if v73:
            import h5py
            with h5py.File(folder / name, "w", userblock_size=512) as f:  # MATLAB v7.3 stores arrays transposed
                for key, a in content.items():
                    f[key] = np.asarray(a).T
            header = b"MATLAB 7.3 MAT-file, synthetic test file".ljust(116) + bytes(8) + b"\x00\x02IM"
            with open(folder / name, "r+b") as f:  # the 128-byte MATLAB header in the HDF5 user block
                f.write(header)
        else:
            savemat(folder / name, content)
    return arrays


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_readers(tmp_path, name):
    spec = BENCHMARKS[name]
    arrays = _write_benchmark(tmp_path, spec)
    s = load_benchmark(name, tmp_path, check_sizes=False)
    assert s.in_chans == spec.bands and s.shape == (7, 9) and s.class_names == list(spec.class_names)
    np.testing.assert_array_equal(s.train_mask, arrays["train"])
    np.testing.assert_allclose(s.modality1, np.moveaxis(arrays["m1"], -1, 0))
    with pytest.raises(ValueError, match=f"expected {spec.shape[0]}x{spec.shape[1]}"):
        load_benchmark(name, tmp_path)


def test_benchmark_v73_hdf5(tmp_path):
    pytest.importorskip("h5py")
    spec = BENCHMARKS["trento"]
    arrays = _write_benchmark(tmp_path, spec, v73=True)
    s = load_benchmark("trento", tmp_path, check_sizes=False)
    np.testing.assert_array_equal(s.test_mask, arrays["test"])
    np.testing.assert_allclose(s.modality1, np.moveaxis(arrays["m1"], -1, 0))


def test_benchmark_missing_files_lists_them(tmp_path):
    with pytest.raises(DataNotFoundError, match="TRLabel.mat"):
        load_benchmark("houston2013", tmp_path)
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("pavia", tmp_path)
    assert BENCHMARKS["houston2013"].train_count == 2832 and BENCHMARKS["augsburg"].test_count == 77533
    assert all(fs.sha256 is None for spec in BENCHMARKS.values() for fs in spec.files.values())
