"""The few classification and regression metrics the monitor needs, in NumPy, as scikit-learn defines them.

The server imports the monitor for its ``/metrics`` gauges and never imports scikit-learn, so
these are written out here; tests compare them with scikit-learn's on random data.
Inputs are 1-D arrays of equal length, already validated by :mod:`nbdeploy.monitor.quality`.
"""

from __future__ import annotations

import numpy as np

from nbdeploy.store.batch import LATENCY_EDGES_MS


def _codes(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Both label arrays as integer codes over the sorted union of their labels."""
    labels, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[: len(y_true)], inverse[len(y_true) :], len(labels)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of predictions equal to the true label."""
    t, p, _ = _codes(y_true, y_pred)
    return float(np.mean(t == p))


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-label F1 over every label seen in either array (``zero_division=0``).

    F1 is ``2 tp / (2 tp + fp + fn)``, and ``2 tp + fp + fn`` is the label's true count plus its
    predicted count: never zero for a label that occurs somewhere.
    """
    t, p, k = _codes(y_true, y_pred)
    tp = np.bincount(t[t == p], minlength=k)
    return float(np.mean(2 * tp / (np.bincount(t, minlength=k) + np.bincount(p, minlength=k))))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # where each run of equal values starts
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + 1 + ends) / 2)[np.cumsum(first) - 1]
    return ranks


def binary_roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U of the positives' scores over ``n_pos * n_neg``.

    A tie between a positive and a negative counts one half, as the trapezoids of the ROC curve
    do. Needs at least one positive and one negative.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    u = average_ranks(np.asarray(scores, dtype=float))[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y_pred - y_true)))


def root_mean_squared_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y_pred - y_true) ** 2)))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination; a constant ``y_true`` gives 1.0 when predicted exactly, else 0.0."""
    residual = float(np.sum((y_true - y_pred) ** 2))
    total = float(np.sum((y_true - np.mean(y_true)) ** 2))
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return 1 - residual / total


def percentile_ms(hist: np.ndarray, q: float, edges: np.ndarray = LATENCY_EDGES_MS) -> float | None:
    """The ``q`` quantile (0-1) of a latency histogram over ``edges`` (default the log's ``LATENCY_EDGES_MS``;
    ``hist[i]`` counts values between ``edges[i-1]`` and ``edges[i]``), log-interpolated within a bucket."""
    total = int(hist.sum())
    if total == 0:
        return None
    target = q * total
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, max(target, 1e-9)))
    if i == 0:
        return float(edges[0])
    if i >= len(edges):
        return float(edges[-1])
    lo, hi = edges[i - 1], edges[i]
    frac = (target - cum[i - 1]) / hist[i]
    return float(lo * (hi / lo) ** min(max(frac, 0.0), 1.0))
