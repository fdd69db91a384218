"""Model quality from logged predictions and feedback labels.

Every metric is a plain ``float``, or ``None`` when it is undefined (no rows, one class, a
single regression row), never NaN and never an exception, so a monitor can show windows that
have no labels yet. Input that cannot be judged (lengths that differ, non-finite regression
values) raises ``InvalidInput``. The arithmetic is in :mod:`nbdeploy.monitor.metrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor import metrics


def _labels(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InvalidInput(f"expected a 1-D array of labels or values, got shape {arr.shape}")
    return arr


def _align(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make label types comparable: float-coded labels (from a NaN-holding column) become ints
    when the predictions are ints; mixed object arrays compare as strings."""
    if len(y_true) != len(y_pred):
        raise InvalidInput(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    for a, b in ((y_true, y_pred), (y_pred, y_true)):
        if (
            a.dtype.kind == "f"
            and b.dtype.kind in "iu"
            and len(a)
            and np.all(np.isfinite(a))
            and np.all(a == np.round(a))
        ):
            converted = a.astype(b.dtype)
            return (converted, b) if a is y_true else (b, converted)
    if y_true.dtype.kind in "OUSb" or y_pred.dtype.kind in "OUSb":
        kinds = {type(v) for v in y_true.tolist() + y_pred.tolist()}
        if len(kinds) > 1:
            return y_true.astype(str), y_pred.astype(str)
    return y_true, y_pred


def _roc_auc(y_true: np.ndarray, proba: Any, classes: Any) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC over the classes present in ``y_true``."""
    scores = np.asarray(proba, dtype=float)
    if scores.ndim == 1:  # probability of the positive class
        scores = np.column_stack([1 - scores, scores])
    if scores.ndim != 2 or len(scores) != len(y_true) or not np.all(np.isfinite(scores)):
        return None
    if classes is None:
        classes = np.unique(y_true)
        if len(classes) != scores.shape[1]:
            return None  # cannot tell which column is which class
    classes = np.asarray(classes)
    if len(classes) != scores.shape[1]:
        raise InvalidInput(f"proba has {scores.shape[1]} columns but {len(classes)} classes")
    present = np.isin(classes, y_true)
    if present.sum() < 2:
        return None
    if len(classes) == 2:
        return metrics.binary_roc_auc(y_true == classes[1], scores[:, 1])
    # One-vs-rest macro over the present classes: a class absent from the window has no positives.
    return float(np.mean([metrics.binary_roc_auc(y_true == classes[j], scores[:, j]) for j in np.flatnonzero(present)]))


def classification_quality(y_true: Any, y_pred: Any, proba: Any = None, classes: Any = None) -> dict[str, Any]:
    """``n``, ``accuracy``, ``f1_macro`` and ``roc_auc`` (needs ``proba``).

    ``proba`` has one column per class in ``classes`` order (the model's ``classes_``; when
    omitted, the sorted labels of ``y_true`` if they match the column count), or is 1-D
    (the positive-class probability). ROC AUC is None unless two classes are present.
    """
    t, p = _align(_labels(y_true), _labels(y_pred))
    out: dict[str, Any] = {"n": len(t), "accuracy": None, "f1_macro": None, "roc_auc": None}
    if len(t) == 0:
        return out
    out["accuracy"] = metrics.accuracy(t, p)
    out["f1_macro"] = metrics.f1_macro(t, p)
    if proba is not None:
        out["roc_auc"] = _roc_auc(t, proba, classes)
    return out


def regression_quality(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """``n``, ``mae``, ``rmse``, and ``r2`` (from two rows up)."""
    t = _labels(y_true).astype(float)
    p = _labels(y_pred).astype(float)
    if len(t) != len(p):
        raise InvalidInput(f"y_true has {len(t)} rows but y_pred has {len(p)}")
    out: dict[str, Any] = {"n": len(t), "mae": None, "rmse": None, "r2": None}
    if len(t) == 0:
        return out
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise InvalidInput("regression labels and predictions must be finite numbers")
    out["mae"] = metrics.mean_absolute_error(t, p)
    out["rmse"] = metrics.root_mean_squared_error(t, p)
    if len(t) >= 2:
        out["r2"] = metrics.r2(t, p)
    return out


def _seconds(values: Any) -> np.ndarray:
    series = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    return np.array(series, dtype=float)


def label_delay(pred_ts: Any, feedback_ts: Any) -> dict[str, Any]:
    """Seconds from prediction to feedback: ``n`` labelled, ``median`` and ``p90`` (or None).

    Pairs whose feedback time is missing (no label yet) are ignored.
    """
    pred, feedback = _seconds(pred_ts), _seconds(feedback_ts)
    if len(pred) != len(feedback):
        raise InvalidInput(f"{len(pred)} prediction times but {len(feedback)} feedback times")
    delays = (feedback - pred)[~(np.isnan(pred) | np.isnan(feedback))]
    if len(delays) == 0:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(delays), "median": float(np.median(delays)), "p90": float(np.quantile(delays, 0.9))}
