"""Model quality from logged predictions and feedback labels.

Every metric is a plain ``float`` or ``None`` when it is undefined (no rows, one class, a
single regression row): never NaN, never an exception, so a monitor can chart windows that
have no labels yet.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import metrics
from sklearn.preprocessing import label_binarize

from nbdeploy.errors import InvalidInput

CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse", "r2")


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
        return float(metrics.roc_auc_score(y_true == classes[1], scores[:, 1]))
    # One-vs-rest macro over present classes (sklearn's "ovr" needs every class present).
    indicator = label_binarize(y_true, classes=classes)
    return float(metrics.roc_auc_score(indicator[:, present], scores[:, present], average="macro"))


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
    out["accuracy"] = float(metrics.accuracy_score(t, p))
    out["f1_macro"] = float(metrics.f1_score(t, p, average="macro", zero_division=0))
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
    out["mae"] = float(metrics.mean_absolute_error(t, p))
    out["rmse"] = float(metrics.root_mean_squared_error(t, p))
    if len(t) >= 2:
        out["r2"] = float(metrics.r2_score(t, p))
    return out


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _window_quality(rows: pd.DataFrame, task: str, classes: Any) -> dict[str, Any]:
    mask = np.array([not _is_missing(v) for v in rows["y_true"].tolist()], dtype=bool)
    labelled = rows.loc[mask]
    y_true = np.array(labelled["y_true"].tolist())
    y_pred = np.array(labelled["y_pred"].tolist())
    if task == "regression":
        return regression_quality(y_true, y_pred)
    proba = None
    if "proba" in labelled.columns and len(labelled):
        values = labelled["proba"].tolist()
        if not any(v is None or np.ndim(v) == 0 for v in values):
            proba = np.array([np.asarray(v, dtype=float) for v in values])
    return classification_quality(y_true, y_pred, proba=proba, classes=classes)


def windowed_quality(
    records: pd.DataFrame,
    task: Literal["classification", "regression"],
    *,
    by: Literal["time", "count"] = "time",
    window: float,
    classes: Any = None,
) -> pd.DataFrame:
    """Quality per window of logged predictions, oldest first.

    ``records`` has columns ``ts`` (epoch seconds), ``y_true`` (None/NaN when no feedback yet),
    ``y_pred`` and optionally ``proba`` (one list per row). ``by="time"``: windows of ``window``
    seconds aligned to multiples of ``window`` since the epoch, including empty ones between the
    first and last record; ``by="count"``: consecutive chunks of ``window`` predictions.
    Columns: ``window_start``, ``window_end``, ``n`` (predictions), ``n_labelled`` and the
    task's metrics (None where a window has no labels).
    """
    if task not in ("classification", "regression"):
        raise InvalidInput(f"task must be 'classification' or 'regression', not {task!r}")
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    columns = ["window_start", "window_end", "n", "n_labelled", *names]
    missing = {"ts", "y_true", "y_pred"} - set(records.columns)
    if missing:
        raise InvalidInput(f"records need columns ts, y_true, y_pred; missing {sorted(missing)}")
    if not window or window <= 0:
        raise InvalidInput("window must be positive")
    frame = records.assign(ts=pd.to_numeric(records["ts"])).sort_values("ts", kind="stable")
    frame = frame.reset_index(drop=True)
    windows: list[tuple[float, float, pd.DataFrame]] = []
    if by == "time":
        if len(frame):
            index = np.floor(frame["ts"].to_numpy(dtype=float) / window).astype(np.int64)
            groups = dict(tuple(frame.groupby(index, sort=True)))
            for i in range(int(index.min()), int(index.max()) + 1):
                rows = groups.get(i, frame.iloc[0:0])
                windows.append((float(i * window), float((i + 1) * window), rows))
    elif by == "count":
        if int(window) != window:
            raise InvalidInput("a count window is a whole number of rows")
        size = int(window)
        for start in range(0, len(frame), size):
            rows = frame.iloc[start : start + size]
            windows.append((float(rows["ts"].iloc[0]), float(rows["ts"].iloc[-1]), rows))
    else:
        raise InvalidInput(f"by must be 'time' or 'count', not {by!r}")
    out = []
    for start, end, rows in windows:
        quality = _window_quality(rows, task, classes)
        out.append(
            {
                "window_start": start,
                "window_end": end,
                "n": len(rows),
                "n_labelled": quality["n"],
                **{k: quality[k] for k in names},
            }
        )
    result = pd.DataFrame.from_records(out, columns=columns)
    for name in names:  # object columns, so an undefined metric stays None (not NaN)
        result[name] = pd.Series([row[name] for row in out], index=result.index, dtype=object)
    return result


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
