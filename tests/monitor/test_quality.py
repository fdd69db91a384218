"""Quality metrics over logged predictions and feedback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor import classification_quality, label_delay, regression_quality, windowed_quality


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


def log(
    n: int, accuracy_first: float, accuracy_second: float, *, step: float = 60.0, labelled_every: int = 1, seed: int = 0
) -> pd.DataFrame:
    """A prediction log: half at one accuracy, half at another, some rows without feedback."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    half = n // 2
    correct = np.r_[
        np.arange(half) < round(accuracy_first * half), np.arange(n - half) < round(accuracy_second * (n - half))
    ]
    y_pred = np.where(correct, y_true, 1 - y_true)
    labels = pd.Series(y_true, dtype=object)
    labels[np.arange(n) % labelled_every != 0] = None
    return pd.DataFrame({"ts": 1_700_000_000 + np.arange(n) * step, "y_true": labels, "y_pred": y_pred})


def test_windowed_quality_shows_the_drop_in_the_second_half() -> None:
    records = log(400, 0.95, 0.70)
    by_count = windowed_quality(records, "classification", by="count", window=200)
    assert list(by_count["n"]) == [200, 200]
    assert list(by_count["accuracy"]) == pytest.approx([0.95, 0.70])
    assert list(by_count.columns) == [
        "window_start",
        "window_end",
        "n",
        "n_labelled",
        "accuracy",
        "f1_macro",
        "roc_auc",
    ]
    by_time = windowed_quality(records, "classification", by="time", window=200 * 60.0)
    first, last = by_time["accuracy"].iloc[0], by_time["accuracy"].iloc[-1]
    assert first > 0.9 and last < 0.8
    assert (by_time["window_end"] - by_time["window_start"] == 200 * 60.0).all()
    assert by_time["window_start"].iloc[0] % (200 * 60.0) == 0  # aligned windows


def test_unlabelled_rows_count_as_predictions_not_labels() -> None:
    records = log(300, 0.9, 0.9, labelled_every=3)
    out = windowed_quality(records, "classification", by="count", window=150)
    assert list(out["n"]) == [150, 150]
    assert list(out["n_labelled"]) == [50, 50]


def test_empty_windows_give_none() -> None:
    records = log(100, 0.9, 0.9, step=1.0)
    records.loc[50:, "ts"] += 3600  # an hour with no traffic
    records.loc[:49, "y_true"] = None  # the first burst has no feedback yet
    out = windowed_quality(records, "classification", by="time", window=600)
    assert out["n"].iloc[0] == 50 and out["n_labelled"].iloc[0] == 0
    quiet = out[out["n"] == 0]
    assert len(quiet) >= 5
    for column in ("accuracy", "f1_macro", "roc_auc"):
        assert out[column].iloc[0] is None
        assert all(value is None for value in quiet[column])
    assert out["accuracy"].iloc[-1] is not None


def test_windowed_regression_and_proba() -> None:
    rng = np.random.default_rng(1)
    n = 120
    y = rng.normal(size=n)
    records = pd.DataFrame(
        {"ts": np.arange(n, dtype=float), "y_true": y, "y_pred": y + np.r_[np.zeros(60), np.ones(60)]}
    )
    out = windowed_quality(records, "regression", by="count", window=60)
    assert list(out["rmse"]) == pytest.approx([0.0, 1.0])
    assert list(out["mae"]) == pytest.approx([0.0, 1.0])

    labels = rng.integers(0, 2, n)
    proba = [[1 - p, p] for p in np.where(labels == 1, 0.8, 0.3)]
    cls = pd.DataFrame(
        {"ts": np.arange(n, dtype=float), "y_true": labels.astype(float), "y_pred": labels, "proba": proba}
    )
    out = windowed_quality(cls, "classification", by="count", window=60)
    assert list(out["roc_auc"]) == pytest.approx([1.0, 1.0])
    assert windowed_quality(cls.iloc[:0], "classification", window=60).empty


def test_windowed_quality_rejects_bad_arguments() -> None:
    records = log(10, 1.0, 1.0)
    with pytest.raises(InvalidInput):
        windowed_quality(records, "ranking", window=10)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        windowed_quality(records, "classification", by="size", window=10)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        windowed_quality(records.drop(columns="y_pred"), "classification", window=10)
    with pytest.raises(InvalidInput):
        windowed_quality(records, "classification", window=0)


def test_label_delay() -> None:
    delays = label_delay([0, 10, 20, 30, 40], [5, 20, None, 60, float("nan")])
    assert delays == {"n": 3, "median": 10.0, "p90": pytest.approx(26.0)}
    assert label_delay([1.0], [None]) == {"n": 0, "median": None, "p90": None}
