"""What the monitor needs to estimate quality before labels arrive, fitted on a version's held-out rows.

Recorded in ``model.json`` under ``"estimation"`` as plain JSON, so the server's monitor applies it
with NumPy alone (:mod:`nbdeploy.monitor.estimate`):

- classifiers (confidence-based performance estimation, CBPE): one isotonic calibration curve of the
  served model's probability per class, one-vs-rest (only the positive class for a binary model), as
  breakpoints ``x`` -> ``y`` that ``np.interp`` applies;
- regressors (direct loss estimation, DLE): a small regression tree of the absolute error from the
  numeric inputs and the prediction, as node arrays, with each leaf's mean and variance of the error.

Both are fitted on what is served (ONNX Runtime's outputs on the held-out rows), so the estimate on
the held-out rows themselves is the held-out figure (exactly for MAE; for accuracy up to a calibration
step that straddles the decision threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.store.batch import logged_names

MAX_DEPTH = 3  # at most 8 leaves: enough to follow where the error grows, too few to learn noise
MIN_LEAF_SHARE = 0.05  # a leaf holds at least 5 % of the held-out rows ...
MIN_LEAF_ROWS = 20  # ... and never fewer than 20


def fit_calibration(probabilities: np.ndarray, y: Any, classes: list[Any]) -> dict[str, Any]:
    """Per-class isotonic calibration of ``probabilities`` (columns in the order of ``classes``) against ``y``.

    Binary models get one curve, for ``classes[1]``; the other class is its complement.
    """
    from sklearn.isotonic import IsotonicRegression

    proba = np.asarray(probabilities, dtype=float)
    y = np.asarray(y)
    targets = [1] if len(classes) == 2 else range(len(classes))
    curves = []
    for j in targets:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(proba[:, j], (y == classes[j]).astype(float))
        curves.append({"x": _floats(iso.X_thresholds_), "y": _floats(iso.y_thresholds_)})
    pred = proba.argmax(axis=1)
    accuracy = float(np.mean(np.asarray(classes, dtype=object)[pred] == y))
    return {"method": "cbpe", "metric": "accuracy", "calibration": "isotonic", "classes": list(classes),
            "curves": curves, "n": len(y), "reference": accuracy}


def fit_loss_model(features: dict[str, np.ndarray], predictions: np.ndarray, y: Any) -> dict[str, Any]:
    """A small regression tree of ``|y - prediction|`` from numeric ``features`` (by logged column name) and the
    prediction; missing values are filled with the held-out median, here and where it is applied."""
    from sklearn.tree import DecisionTreeRegressor

    names = list(features)
    matrix = np.column_stack([*(np.asarray(features[f], dtype=float) for f in names),
                              np.asarray(predictions, dtype=float)])
    fill = [_median(col) for col in matrix.T]
    matrix = np.where(np.isnan(matrix), np.asarray(fill), matrix)
    loss = np.abs(np.asarray(y, dtype=float) - np.asarray(predictions, dtype=float))
    leaf = max(MIN_LEAF_ROWS, int(MIN_LEAF_SHARE * len(loss)))
    tree = DecisionTreeRegressor(max_depth=MAX_DEPTH, min_samples_leaf=leaf, random_state=0).fit(matrix, loss)
    t = tree.tree_
    leaves = tree.apply(matrix)
    variance = np.zeros(t.node_count)
    for node in np.unique(leaves):
        variance[node] = float(loss[leaves == node].var())
    return {"method": "dle", "metric": "mae", "features": names, "fill": fill,
            "tree": {"feature": t.feature.tolist(), "threshold": _floats(t.threshold),
                     "left": t.children_left.tolist(), "right": t.children_right.tolist(),
                     "value": _floats(t.value.reshape(-1)), "variance": _floats(variance)},
            "n": len(loss), "reference": float(loss.mean())}


def numeric_columns(signature: Any, X: Any) -> dict[str, np.ndarray]:
    """The numeric inputs of ``X`` as the prediction log names its columns (one per tensor column)."""
    columns: dict[str, np.ndarray] = {}
    for name, tensor in signature.encode(X).items():
        arr = np.asarray(tensor)
        arr = arr.reshape(len(arr), -1)
        if arr.dtype.kind in "fiub":
            columns.update(zip(logged_names(name, arr.shape[1]), arr.astype(float).T, strict=True))
    return columns


def estimation_meta(predictor: Any, X: Any, y: Any) -> dict[str, Any] | None:
    """What ``model.json`` records under ``"estimation"`` for a served ``predictor`` judged on ``X``, ``y``.

    None when there is nothing to fit: a classifier without probabilities, one class only, too few rows.
    """
    y = np.asarray(y).reshape(-1)
    if len(y) < MIN_LEAF_ROWS:
        return None
    if predictor.task == "classification":
        classes = predictor.classes_.tolist()
        if "probabilities" not in predictor.outputs or len(classes) < 2:
            return None
        return fit_calibration(predictor.predict_proba(X), y, classes)
    if predictor.task == "regression":
        return fit_loss_model(numeric_columns(predictor.signature, X), predictor.predict(X).reshape(-1), y)
    return None


def _median(column: np.ndarray) -> float:
    present = column[~np.isnan(column)]
    return float(np.median(present)) if len(present) else 0.0


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=float).reshape(-1)]
