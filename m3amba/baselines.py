"""A per-pixel random-forest baseline on exactly the split and normalisation a model is trained with.

Every model number this project publishes is reported next to this baseline, measured on the same
scene, the same train / test pixels and the same normalisation: each pixel is one sample whose
features are the normalised bands of both modalities concatenated (C1 + C2 values; no spatial
context), a :class:`sklearn.ensemble.RandomForestClassifier` is fitted on the training pixels, and
every test pixel is predicted exactly once. Metrics come from :mod:`m3amba.metrics` (OA, AA, κ,
per-class accuracy, confusion matrix), like the model's.

A per-band affine normalisation does not change which partitions a tree can make, so the forest's
predictions barely depend on it; it is applied anyway so that the features are literally the
model's inputs.

Needs scikit-learn: ``pip install "m3amba[baseline]"``. From the command line::

    m3amba baseline configs/eolearn_tiny.yaml --out rf.json
"""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional

import numpy as np

from .data import NormStats, Scene, compute_norm_stats
from .metrics import classification_metrics

__all__ = ["DEFAULT_N_ESTIMATORS", "pixel_features", "random_forest_baseline", "baseline_from_config"]

#: trees of the forest (a common choice for hyperspectral per-pixel baselines)
DEFAULT_N_ESTIMATORS = 500

PROTOCOL = ("per-pixel random forest on the normalised bands of both modalities (C1 + C2 features, no spatial "
            "context); fitted on the training pixels, every {split} pixel predicted exactly once")


def _sklearn_forest():
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as exc:
        raise ImportError("the random-forest baseline needs scikit-learn: pip install 'm3amba[baseline]' "
                          "(or pip install scikit-learn)") from exc
    return RandomForestClassifier


def pixel_features(scene: Scene, norm: Optional[NormStats] = None) -> np.ndarray:
    """Per-pixel features of ``scene``: (H * W, C1 + C2) float32, row-major over the H x W grid.

    Args:
        scene: the scene.
        norm: normalisation statistics applied first (``None``: raw values).
    """
    x1, x2 = (scene.modality1, scene.modality2) if norm is None else norm.apply(scene.modality1, scene.modality2)
    feats = np.concatenate([x1, x2], axis=0)  # (C1 + C2, H, W)
    return np.ascontiguousarray(feats.reshape(feats.shape[0], -1).T, dtype=np.float32)


def random_forest_baseline(
    scene: Scene,
    n_estimators: int = DEFAULT_N_ESTIMATORS,
    seed: int = 0,
    norm: Optional[NormStats] = None,
    normalization: Optional[Mapping[str, str]] = None,
    split: str = "test",
    n_jobs: Optional[int] = -1,
    **forest_kwargs: Any,
) -> Dict[str, Any]:
    """Fit a random forest on ``scene``'s training pixels and score it on its ``split`` pixels.

    Args:
        scene: the scene; its ``train_mask`` pixels train the forest.
        n_estimators: number of trees.
        seed: ``random_state`` of the forest (results are deterministic for a given seed and
            scikit-learn version, whatever ``n_jobs``).
        norm: the normalisation statistics to apply (e.g. a checkpoint's ``TrainedModel.norm``);
            default: computed from ``scene`` per ``normalization``.
        normalization: ``{"method": "minmax" | "zscore", "source": "scene" | "train"}`` (a config's
            ``data.normalization``; default minmax over the scene). Ignored when ``norm`` is given.
        split: the pixels scored: ``"test"`` (default) or ``"val"``.
        n_jobs: parallel jobs of scikit-learn (-1 = all cores).
        **forest_kwargs: further ``RandomForestClassifier`` arguments (``max_features``, ...).

    Returns:
        :func:`m3amba.metrics.classification_metrics`'s dict (``oa``, ``aa``, ``kappa``,
        ``per_class``, ``support``, ``confusion_matrix``, ``count``, ...) plus ``expected_count``,
        ``split``, ``method``, ``params``, ``features``, ``train_count``, ``normalization``,
        ``protocol``, ``fit_time_s``, ``predict_time_s`` and ``sklearn_version``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: the scene has no pixels in ``split``.
    """
    forest_cls = _sklearn_forest()
    import sklearn

    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    mask = scene.test_mask if split == "test" else scene.val_mask
    if mask is None or not (mask > 0).any():
        raise ValueError(f"the scene has no {split} labels to score the baseline on")
    if norm is None:
        nc = dict(normalization or {})
        norm = compute_norm_stats(scene, nc.get("method", "minmax"), nc.get("source", "scene"))
    feats = pixel_features(scene, norm)
    train_sel = scene.train_mask.ravel() > 0
    eval_sel = mask.ravel() > 0
    y_train = scene.train_mask.ravel()[train_sel] - 1
    y_eval = mask.ravel()[eval_sel] - 1
    params = {"n_estimators": int(n_estimators), "random_state": int(seed), **forest_kwargs}
    forest = forest_cls(n_jobs=n_jobs, **params)
    t0 = time.perf_counter()
    forest.fit(feats[train_sel], y_train)
    t1 = time.perf_counter()
    pred = forest.predict(feats[eval_sel])  # every pixel of the split exactly once
    t2 = time.perf_counter()
    m = classification_metrics(y_eval, pred, scene.num_classes, scene.class_names)
    m.update(
        expected_count=int(scene.counts(split).sum()), split=split, method="random_forest",
        params={**params, "n_jobs": n_jobs}, features=int(feats.shape[1]),
        train_count=int(train_sel.sum()), normalization={"method": norm.method, "source": norm.source},
        protocol=PROTOCOL.format(split=split), fit_time_s=round(t1 - t0, 3), predict_time_s=round(t2 - t1, 3),
        sklearn_version=sklearn.__version__, scene=scene.name,
    )
    return m


def baseline_from_config(config: Mapping[str, Any], data_dir=None, n_estimators: int = DEFAULT_N_ESTIMATORS,
                         seed: Optional[int] = None, split: str = "test", scene: Optional[Scene] = None,
                         n_jobs: Optional[int] = -1) -> Dict[str, Any]:
    """The random-forest baseline on the scene, split and normalisation of a training config.

    Args:
        config: a config as :func:`m3amba.train.load_config` returns it (the same file ``m3amba
            train`` takes): its ``data`` section builds the scene and the split exactly as training
            does, ``data.normalization`` the features.
        data_dir: overrides ``data.data_dir`` (as ``--data-dir`` does for ``m3amba train``).
        n_estimators: number of trees.
        seed: the forest's seed (default: the config's ``train.seed``).
        split: ``"test"`` or ``"val"``.
        scene: an already built scene (skips reading the data).
        n_jobs: parallel jobs of scikit-learn.
    """
    from .train import build_scene, load_config, merge_config

    cfg = merge_config(load_config(), dict(config))
    if scene is None:
        scene = build_scene(cfg["data"], data_dir)
    if seed is None:
        seed = int(cfg["train"].get("seed", 0))
    m = random_forest_baseline(scene, n_estimators=n_estimators, seed=seed,
                               normalization=cfg["data"].get("normalization"), split=split, n_jobs=n_jobs)
    m["data"] = {k: v for k, v in cfg["data"].items() if k != "data_dir"}
    return m
