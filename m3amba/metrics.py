"""Classification metrics of the remote-sensing literature: OA, AA, Cohen's kappa, per-class accuracy.

All work on a confusion matrix ``C`` (K x K, rows = reference class, columns = predicted class, 0-based):

* OA  = trace(C) / sum(C);
* per-class accuracy (producer's accuracy, recall) = C[k, k] / sum_j C[k, j], NaN for a class with no
  reference pixel;
* AA  = mean of the per-class accuracies over the classes that have reference pixels;
* kappa = (OA - p_e) / (1 - p_e), p_e = sum_k (row_k * col_k) / N^2 (1.0 when p_e = 1 and OA = 1).

Unlike the reference implementation's script, nothing is added to denominators (it adds 1e-3).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["confusion_matrix", "overall_accuracy", "per_class_accuracy", "average_accuracy", "kappa",
           "classification_metrics", "format_metrics"]


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """K x K counts, rows = reference, columns = prediction; ids must be in 0..K-1."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in size: {t.size} vs {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds ids outside 0..{num_classes - 1}: {a.min()}..{a.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def overall_accuracy(cm: np.ndarray) -> float:
    n = cm.sum()
    return float(np.trace(cm) / n) if n else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def average_accuracy(cm: np.ndarray) -> float:
    acc = per_class_accuracy(cm)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def kappa(cm: np.ndarray) -> float:
    n = cm.sum()
    if not n:
        return float("nan")
    cm = cm.astype(np.float64)
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum() / (n * n))
    if pe == 1.0:
        return 1.0 if po == 1.0 else 0.0
    return float((po - pe) / (1 - pe))


def classification_metrics(y_true, y_pred, num_classes: int,
                           class_names: Optional[Sequence[str]] = None) -> Dict:
    """OA, AA, kappa, per-class accuracy and the confusion matrix as a JSON-ready dict."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    acc = per_class_accuracy(cm)
    return {
        "oa": overall_accuracy(cm),
        "aa": average_accuracy(cm),
        "kappa": kappa(cm),
        "count": int(cm.sum()),
        "per_class": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, acc)},
        "support": {n: int(s) for n, s in zip(names, cm.sum(1))},
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }


def format_metrics(m: Dict, expected_count: Optional[int] = None) -> str:
    """A printable table of :func:`classification_metrics` output."""
    names = m["class_names"]
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  {'support':>8}  {'accuracy':>8}"]
    for n in names:
        a = m["per_class"][n]
        lines.append(f"{n:<{width}}  {m['support'][n]:>8}  {'-' if a is None else f'{100 * a:7.2f}%':>8}")
    count = f"{m['count']}" + (f" (expected {expected_count})" if expected_count is not None else "")
    lines.append(f"OA {100 * m['oa']:.2f}%  AA {100 * m['aa']:.2f}%  kappa {m['kappa']:.4f}  "
                 f"evaluated pixels: {count}")
    return "\n".join(lines)
