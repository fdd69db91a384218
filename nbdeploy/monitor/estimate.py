"""Estimated quality before labels arrive: CBPE for classifiers, direct loss estimation for regressors.

Pure NumPy (the server's ``/metrics`` reads it). Each version's ``model.json`` carries an
``"estimation"`` record fitted on its held-out rows (:mod:`nbdeploy.lifecycle.estimation`):

- **classifiers, CBPE** (confidence-based performance estimation): the served probabilities are
  calibrated per class with the stored isotonic curves (``np.interp``); a row's chance of being right
  is the calibrated probability of the class the model answered, so the expected accuracy of a window
  is their mean. For a binary model, the expected confusion matrix gives F1 (of ``classes[1]``) and
  ROC AUC (expected true and false positive rates at every threshold of the served score).
- **regressors, DLE** (direct loss estimation): a small stored tree predicts each row's absolute
  error from its numeric inputs and the prediction; the expected MAE of a window is their mean.

Band: each figure is a mean of per-row expectations; a row's outcome varies around its expectation
(Bernoulli ``p(1 - p)`` for a classifier, the tree leaf's variance of the error for a regressor), so
``value ± 1.96 * sqrt(sum of variances) / n`` is where the realised figure of these rows should fall
95 % of the time *if the calibration still holds*. It does not cover a change of ``p(y | x)`` (concept
drift): then the stored calibration is wrong and the estimate with it; only labels can tell. When
enough labels exist for the window, ``realised`` is shown beside the estimate and a note says when
it falls outside the band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from nbdeploy.monitor.alerts import AlertThresholds
from nbdeploy.store.labels import label_keys
from nbdeploy.store.reader import LogReader, RecentPredictions

Z = 1.96  # two-sided 95 %
MIN_REALISED = AlertThresholds.min_labelled  # labels in a window before its realised figure is shown


# -- classifiers: CBPE ------------------------------------------------------------------------
def calibrate(probabilities: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The served ``probabilities`` (``[n, k]``, columns in the order of the stored classes), calibrated."""
    proba = np.asarray(probabilities, dtype=float)
    classes, curves = calibration["classes"], calibration["curves"]
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(f"expected probabilities of {len(classes)} classes, got shape {list(proba.shape)}")
    if len(classes) == 2:
        positive = np.interp(proba[:, 1], curves[0]["x"], curves[0]["y"])
        return np.column_stack([1.0 - positive, positive])
    cal = np.column_stack([np.interp(proba[:, j], c["x"], c["y"]) for j, c in enumerate(curves)])
    total = cal.sum(axis=1, keepdims=True)
    return np.where(total > 0, cal / np.where(total > 0, total, 1.0), proba)  # a row all curves put at 0: as served


def correct_chances(probabilities: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Per row, the calibrated probability of the class the model answered (the first of maximal probability)."""
    proba = np.asarray(probabilities, dtype=float)
    cal = calibrate(proba, calibration)
    return cal[np.arange(len(cal)), proba.argmax(axis=1)]


def estimate_accuracy(probabilities: np.ndarray, calibration: dict[str, Any]) -> dict[str, Any]:
    """Expected accuracy of the rows whose served ``probabilities`` are given: ``value``, ``low``, ``high``, ``n``.

    ``calibration`` is the version's ``model.json["estimation"]`` record.
    """
    p = correct_chances(probabilities, calibration)
    return summary(p, p * (1.0 - p), upper=1.0)


def estimate_binary(probabilities: np.ndarray, calibration: dict[str, Any]) -> dict[str, float | None] | None:
    """A binary model's expected ROC AUC and F1 (of ``classes[1]``); None for more classes."""
    proba = np.asarray(probabilities, dtype=float)
    if len(calibration["classes"]) != 2:
        return None
    if not len(proba):
        return {"roc_auc": None, "f1": None}
    p = calibrate(proba, calibration)[:, 1]
    positive = proba.argmax(axis=1) == 1
    tp, fp, fn = p[positive].sum(), (1 - p)[positive].sum(), p[~positive].sum()
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else None
    return {"roc_auc": _expected_auc(proba[:, 1], p), "f1": None if f1 is None else float(f1)}


def _expected_auc(score: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the expected ROC curve: thresholds at every distinct served score, tied rows together."""
    order = np.argsort(-score, kind="stable")
    s, q = score[order], p[order]
    tp, fp = np.cumsum(q), np.cumsum(1.0 - q)
    if tp[-1] <= 0 or fp[-1] <= 0:
        return None
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each group of equal scores
    tpr, fpr = np.r_[0.0, tp[last] / tp[-1]], np.r_[0.0, fp[last] / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


# -- regressors: DLE --------------------------------------------------------------------------
def expected_loss(inputs: Mapping[str, Any], predictions: np.ndarray,
                  loss_model: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the stored tree's expected absolute error and its variance.

    ``inputs`` maps the log's column names to values (a missing column or value counts as missing).
    """
    pred = np.asarray(predictions, dtype=float).reshape(-1)
    n = len(pred)
    columns = [np.asarray(inputs[f], dtype=float).reshape(-1) if f in inputs else np.full(n, np.nan)
               for f in loss_model["features"]]
    matrix = np.column_stack([*columns, pred])
    matrix = np.where(np.isnan(matrix), np.asarray(loss_model["fill"], dtype=float), matrix)
    tree = {k: np.asarray(v) for k, v in loss_model["tree"].items()}
    node = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    for _ in range(len(tree["left"])):
        inner = tree["left"][node] >= 0
        if not inner.any():
            break
        go_left = matrix[rows, np.where(inner, tree["feature"][node], 0)] <= tree["threshold"][node]
        node = np.where(inner, np.where(go_left, tree["left"][node], tree["right"][node]), node)
    return tree["value"][node].astype(float), tree["variance"][node].astype(float)


def estimate_mae(inputs: Mapping[str, Any], predictions: np.ndarray, loss_model: dict[str, Any]) -> dict[str, Any]:
    """Expected MAE of the rows given (``inputs`` by the log's column names): ``value``, ``low``, ``high``, ``n``."""
    loss, variance = expected_loss(inputs, predictions, loss_model)
    return summary(loss, variance, upper=math.inf)


# -- one figure from per-row expectations -----------------------------------------------------
def summary(expected: np.ndarray, variance: np.ndarray, *, upper: float) -> dict[str, Any]:
    """The mean of per-row expectations and its 95 % band (clipped to ``[0, upper]``)."""
    n = len(expected)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    value = float(np.mean(expected))
    half = Z * math.sqrt(float(np.sum(variance))) / n
    return {"value": value, "low": max(0.0, value - half), "high": min(upper, value + half), "n": n}


# -- the monitor's view -----------------------------------------------------------------------
def estimated_quality(log: LogReader, model: str, version: int | None, meta: dict[str, Any] | None, *,
                      window: int, windows: int, notes: list[str]) -> dict[str, Any] | None:
    """The estimate over the last ``window`` predictions of ``version`` and over up to ``windows`` consecutive
    windows before it, from the log; None (and a line in ``notes`` saying why) when it cannot be estimated.

    Reads at most ``window * windows`` predictions, whatever the size of the log.
    """
    estimation = (meta or {}).get("estimation")
    if version is None or not estimation:
        if log.exists():  # else "nothing logged yet" says enough
            notes.append(f"version {version} has no estimation model (fitted when a version is registered with "
                         "labelled held-out rows): quality is not estimated before labels arrive")
        return None
    regression = estimation.get("method") == "dle"
    recent = log.recent_predictions(model, version, window * windows, inputs=regression)
    try:
        expected, variance, realised, labelled, kept, proba = _per_row(recent, estimation, regression)
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
        notes.append(f"quality not estimated: {exc}")
        return None
    upper = math.inf if regression else 1.0
    ts = np.asarray(recent.ts, dtype=float)[kept]
    latest = slice(max(0, len(expected) - window), len(expected))
    current = summary(expected[latest], variance[latest], upper=upper)
    series = []
    for start in range(len(expected) % window if len(expected) >= window else 0, len(expected), window):
        part = slice(start, start + window)
        series.append({"t": float(ts[part][-1]), **_ordered(summary(expected[part], variance[part], upper=upper))})
    known = labelled[latest]
    value = current["value"]
    real = float(realised[latest][known].mean()) if known.sum() >= MIN_REALISED else None
    note = []
    if len(kept) < len(recent):
        note.append(f"{len(recent) - len(kept)} of the last {len(recent)} predictions left out: "
                    f"{'no numeric prediction' if regression else 'no probabilities'} logged")
    if real is not None and value is not None and not current["low"] <= real <= current["high"]:
        note.append(f"realised {estimation['metric']} {real:.3f} lies outside the estimate's band: the relation "
                    "between inputs and labels may have changed (concept drift), which the estimate cannot see")
    binary = None if regression else estimate_binary(proba[latest], estimation)
    return {"metric": estimation["metric"], **current, "window": window, "realised": real, "series": series,
            "binary": binary, "note": "; ".join(note) or None}


def _ordered(figure: dict[str, Any]) -> dict[str, Any]:
    return {"value": figure["value"], "low": figure["low"], "high": figure["high"], "n": figure["n"]}


def _per_row(recent: RecentPredictions, estimation: dict[str, Any], regression: bool) -> tuple[np.ndarray, ...]:
    """Per usable row: expectation, variance, realised score (0/1 or absolute error), whether labelled; the
    positions kept, and the probabilities (classifiers)."""
    if regression:
        kept = np.array([_number(p) for p in recent.predicted], dtype=bool)
        pred = np.array([p if k else np.nan for p, k in zip(recent.predicted, kept, strict=True)], dtype=float)[kept]
        rows = [r for r, k in zip(recent.inputs, kept, strict=True) if k]
        inputs = {f: np.array([r.get(f) for r in rows], dtype=float) for f in estimation["features"]}
        expected, variance = expected_loss(inputs, pred, estimation)
        truth = [recent.truth[i] for i in np.flatnonzero(kept)]
        labelled = np.array([_number(t) for t in truth], dtype=bool)
        realised = np.abs(np.array([t if ok else np.nan for t, ok in zip(truth, labelled, strict=True)],
                                   dtype=float) - pred)
        return expected, variance, realised, labelled, np.flatnonzero(kept), np.zeros((len(pred), 0))
    kept = np.flatnonzero([raw is not None for raw in recent.proba_json])
    width = len(estimation["classes"])
    proba = (np.array(orjson.loads(b"[" + b",".join(recent.proba_json[i] for i in kept) + b"]"), dtype=float)
             if len(kept) else np.zeros((0, width)))
    expected = correct_chances(proba, estimation)
    realised = np.zeros(len(kept))
    labelled = np.zeros(len(kept), dtype=bool)
    known = [j for j, i in enumerate(kept) if recent.labelled[i]]  # keys only where a label came
    truth = label_keys([recent.truth[kept[j]] for j in known])
    predicted = label_keys([recent.predicted[kept[j]] for j in known])
    for j, t, p in zip(known, truth, predicted, strict=True):
        labelled[j], realised[j] = t is not None, float(t == p)
    return expected, expected * (1.0 - expected), realised, labelled, kept, proba


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
