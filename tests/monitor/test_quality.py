"""Quality metrics over logged predictions and feedback."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor import classification_quality, label_delay, regression_quality


def test_classification_matches_sklearn_on_iris() -> None:
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0)
    model = LogisticRegression(max_iter=1000).fit(X_train, y_train)
    pred, proba = model.predict(X_test), model.predict_proba(X_test)
    q = classification_quality(y_test, pred, proba=proba, classes=model.classes_)
    assert q["n"] == len(y_test)
    assert q["accuracy"] == pytest.approx(accuracy_score(y_test, pred))
    assert q["f1_macro"] == pytest.approx(f1_score(y_test, pred, average="macro"))
    assert q["roc_auc"] == pytest.approx(roc_auc_score(y_test, proba, multi_class="ovr"))


def test_binary_auc_from_matrix_or_positive_column() -> None:
    y = ["no", "yes", "yes", "no"]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5]])
    q = classification_quality(y, ["no", "yes", "yes", "yes"], proba=proba, classes=["no", "yes"])
    assert q["roc_auc"] == pytest.approx(1.0)
    assert q["accuracy"] == pytest.approx(0.75)
    q1 = classification_quality([0, 1, 1, 0], [0, 1, 1, 1], proba=proba[:, 1])
    assert q1["roc_auc"] == pytest.approx(1.0)


def test_auc_with_a_class_absent_from_the_window() -> None:
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    q = classification_quality([0, 1, 0, 1], [0, 1, 0, 1], proba=proba, classes=[0, 1, 2])
    assert q["roc_auc"] == pytest.approx(1.0)
    one_class = classification_quality([1, 1, 1, 1], [1, 1, 0, 1], proba=proba, classes=[0, 1, 2])
    assert one_class["roc_auc"] is None
    assert one_class["accuracy"] == pytest.approx(0.75)


def test_undefined_metrics_are_none() -> None:
    assert classification_quality([], []) == {"n": 0, "accuracy": None, "f1_macro": None, "roc_auc": None}
    assert classification_quality([1, 0], [1, 0])["roc_auc"] is None  # no proba given
    assert regression_quality([], []) == {"n": 0, "mae": None, "rmse": None, "r2": None}
    single = regression_quality([2.0], [3.0])
    assert single == {"n": 1, "mae": 1.0, "rmse": 1.0, "r2": None}


def test_regression_metrics() -> None:
    q = regression_quality([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])
    assert q["n"] == 4
    assert q["mae"] == pytest.approx(0.5)
    assert q["rmse"] == pytest.approx(1.0)
    assert q["r2"] == pytest.approx(1 - 4 / 5)


def test_float_coded_labels_compare_with_int_predictions() -> None:
    q = classification_quality(np.array([1.0, 0.0, 1.0]), np.array([1, 0, 0]))
    assert q["accuracy"] == pytest.approx(2 / 3)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(InvalidInput):
        classification_quality([1, 0], [1])


def test_label_delay() -> None:
    delays = label_delay([0, 10, 20, 30, 40], [5, 20, None, 60, float("nan")])
    assert delays == {"n": 3, "median": 10.0, "p90": pytest.approx(26.0)}
    assert label_delay([1.0], [None]) == {"n": 0, "median": None, "p90": None}
