"""monitor/metrics.py and the quality dicts built on it give scikit-learn's values, ties and absent classes included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from nbdeploy.monitor import classification_quality, metrics, regression_quality

SEEDS = range(25)


def test_average_ranks_are_scipys() -> None:
    rng = np.random.default_rng(0)
    for values in (rng.normal(size=50), rng.integers(0, 4, 60).astype(float), np.zeros(5), np.array([2.0])):
        assert metrics.average_ranks(values) == pytest.approx(rankdata(values))


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_auc_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    positive = rng.random(n) < rng.uniform(0.05, 0.95)
    positive[:2] = [True, False]  # both classes present
    scores = np.round(rng.random(n) + 0.3 * positive, int(rng.integers(0, 3)))  # few decimals: many ties
    assert metrics.binary_roc_auc(positive, scores) == pytest.approx(skm.roc_auc_score(positive, scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_quality_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    classes = np.array([f"c{i}" for i in range(k)])
    n = int(rng.integers(5, 400))
    present = rng.choice(k, size=int(rng.integers(2, k + 1)), replace=False)  # some classes never occur
    y_true = classes[rng.choice(present, n)]
    y_true[:2] = classes[present[:2]]
    y_pred = np.where(rng.random(n) < 0.7, y_true, classes[rng.integers(0, k, n)])
    proba = np.round(rng.dirichlet(np.ones(k), n), 1)  # rounded: ties within each column
    q = classification_quality(y_true, y_pred, proba=proba, classes=classes)
    assert q["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert q["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    if k == 2:
        expected = skm.roc_auc_score(y_true == classes[1], proba[:, 1])
    else:
        seen = np.isin(classes, y_true)
        indicator = label_binarize(y_true, classes=classes)
        expected = skm.roc_auc_score(indicator[:, seen], proba[:, seen], average="macro")
    assert q["roc_auc"] == pytest.approx(expected, abs=1e-12)


def test_f1_counts_labels_only_predicted_or_only_true() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 3, 1, 0, 0])  # 3 is never true, 2 is never predicted
    expected = skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert metrics.f1_macro(y_true, y_pred) == pytest.approx(expected)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.4)


def test_all_classes_present_equals_sklearn_ovr() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet(np.ones(3), 200)
    q = classification_quality(y, y, proba=proba, classes=[0, 1, 2])
    assert q["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_quality_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    y_true = rng.normal(size=n) * rng.uniform(0.1, 100)
    y_pred = y_true + rng.normal(size=n)
    q = regression_quality(y_true, y_pred)
    assert q["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred), rel=1e-12)
    assert q["rmse"] == pytest.approx(skm.root_mean_squared_error(y_true, y_pred), rel=1e-12)
    assert q["r2"] == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("y_pred", [[3.0, 3.0, 3.0], [3.0, 2.0, 3.0]])
def test_r2_of_a_constant_target_is_sklearns(y_pred: list[float]) -> None:
    y_true = np.array([3.0, 3.0, 3.0])
    assert regression_quality(y_true, y_pred)["r2"] == skm.r2_score(y_true, y_pred)


def test_non_finite_regression_values_are_refused() -> None:
    from nbdeploy.errors import InvalidInput

    with pytest.raises(InvalidInput, match="finite"):
        regression_quality([1.0, float("nan")], [1.0, 2.0])
