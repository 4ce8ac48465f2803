"""The metrics against hand-computed values on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.metrics import classification_metrics

CLASSES = ["a", "b", "c"]


def test_metrics_match_hand_computation():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.8, 0.1, 0.1],  # a -> a
        [0.3, 0.6, 0.1],  # a -> b
        [0.2, 0.7, 0.1],  # b -> b
        [0.1, 0.8, 0.1],  # b -> b
        [0.1, 0.2, 0.7],  # c -> c
        [0.5, 0.1, 0.4],  # c -> a
    ])
    m = classification_metrics(y, probs, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # class a: predicted a twice (rows 0 and 5), one right -> precision 1/2; recall 1/2
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    # class b: predicted b three times, two right -> precision 2/3; recall 1
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    # AUC of class a (one-vs-rest): positives scores {0.8, 0.3}, negatives {0.2, 0.1, 0.1, 0.5}.
    # Pairs won: 0.8 beats all 4; 0.3 beats 0.2, 0.1, 0.1 -> 7 of 8.
    assert m["per_class"]["a"]["auc"] == pytest.approx(7 / 8)
    # class c: positives {0.7, 0.4}, negatives {0.1, 0.1, 0.1, 0.1} -> 8 of 8
    assert m["per_class"]["c"]["auc"] == pytest.approx(1.0)
    # class b: positives {0.7, 0.8}, negatives {0.1, 0.6, 0.2, 0.1} -> 8 of 8
    assert m["macro_auc"] == pytest.approx((7 / 8 + 1 + 1) / 3)


def test_misaligned_rows_give_chance_level_auc():
    """The seed's ROC bug: shuffled predictions against ordered labels. Aligned rows must score ~1."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 200)
    probs = np.full((600, 3), 0.05)
    probs[np.arange(600), y] = 0.9
    assert classification_metrics(y, probs, CLASSES)["macro_auc"] == pytest.approx(1.0)
    shuffled = probs[rng.permutation(600)]
    assert abs(classification_metrics(y, shuffled, CLASSES)["macro_auc"] - 0.5) < 0.1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not fit"):
        classification_metrics([0, 1], np.zeros((3, 3)), CLASSES)
