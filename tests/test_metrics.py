"""OA / AA / kappa pinned against hand-computed values."""
import math

import numpy as np
import pytest

from m3amba.metrics import (average_accuracy, classification_metrics, confusion_matrix, format_metrics, kappa,
                            overall_accuracy, per_class_accuracy)

#: rows = reference, columns = prediction
CM = np.array([[5, 1, 0],
               [2, 3, 1],
               [0, 0, 4]])


def _labels_from(cm):
    t, p = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            t += [i] * cm[i, j]
            p += [j] * cm[i, j]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(t))
    return np.array(t)[order], np.array(p)[order]


def test_confusion_matrix_from_labels():
    t, p = _labels_from(CM)
    np.testing.assert_array_equal(confusion_matrix(t, p, 3), CM)


def test_hand_computed_values():
    # OA = 12 / 16; per class 5/6, 3/6, 4/4; AA = (5/6 + 1/2 + 1) / 3 = 7/9
    assert overall_accuracy(CM) == pytest.approx(0.75)
    np.testing.assert_allclose(per_class_accuracy(CM), [5 / 6, 0.5, 1.0])
    assert average_accuracy(CM) == pytest.approx(7 / 9)
    # p_e = (6*7 + 6*4 + 4*5) / 16^2 = 86/256; kappa = (0.75 - 86/256) / (1 - 86/256) = 106/170
    assert kappa(CM) == pytest.approx(106 / 170)


def test_classification_metrics_dict_and_table():
    t, p = _labels_from(CM)
    m = classification_metrics(t, p, 3, ["a", "b", "c"])
    assert m["count"] == 16 and m["oa"] == pytest.approx(0.75) and m["kappa"] == pytest.approx(53 / 85)
    assert m["per_class"] == pytest.approx({"a": 5 / 6, "b": 0.5, "c": 1.0})
    assert m["support"] == {"a": 6, "b": 6, "c": 4}
    assert m["confusion_matrix"] == CM.tolist()
    text = format_metrics(m, expected_count=16)
    assert "OA 75.00%" in text and "AA 77.78%" in text and "evaluated pixels: 16 (expected 16)" in text


def test_class_without_reference_pixels_is_left_out_of_aa():
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 1]])  # class 1 has no reference pixel
    acc = per_class_accuracy(cm)
    assert math.isnan(acc[1])
    assert average_accuracy(cm) == pytest.approx((0.75 + 0.5) / 2)
    m = classification_metrics([0, 0, 0, 0, 2, 2], [0, 0, 0, 1, 0, 2], 3)
    assert m["per_class"]["1"] is None


def test_perfect_and_degenerate():
    assert kappa(np.diag([3, 4])) == 1.0
    assert kappa(np.array([[5, 0], [0, 0]])) == 1.0  # p_e = 1 and all correct
    assert math.isnan(overall_accuracy(np.zeros((2, 2), int)))


def test_bad_ids_raise():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix([0, 1], [0], 3)
