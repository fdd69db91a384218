"""Held-out metrics, the champion-vs-challenger gate, and a reproducible training run.

Every metric comes from ``sklearn.metrics``. A metric that is undefined on the data
(ROC AUC with one class present, R² on one row) is ``None``, not NaN, so results stay
JSON-safe. Each task's primary metric is higher-is-better and named like the sklearn
scorer, so the gate, ``cross_val_score`` and the report rank models the same way:
``accuracy`` for classification, ``r2`` for regression. matplotlib is imported only
when a figure is drawn, and only ``matplotlib.figure.Figure`` (no pyplot state, so
threads may draw).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import NotFittedError, UndefinedMetricWarning
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted

from nbdeploy.convert.conversion import task_of
from nbdeploy.errors import InvalidInput

__all__ = ["PRIMARY_METRIC", "EvaluationResult", "evaluate", "task_of"]

Task = Literal["classification", "regression", "clustering"]
PRIMARY_METRIC: dict[str, str] = {"classification": "accuracy", "regression": "r2"}


def estimator_label(estimator: Any) -> str:
    """Display name; a pipeline is named by its steps (``StandardScaler → SVC``)."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list) and steps:
        names = (s if isinstance(s, str) else type(s).__name__ for _, s in steps)
        return " → ".join(names)
    return type(estimator).__name__


def _num(value: Any) -> float | None:
    """A finite float, or None for the NaN/inf sklearn returns for undefined metrics."""
    v = float(value)
    return v if math.isfinite(v) else None


def _metric(fn: Any, *args: Any, optional: bool = False, **kw: Any) -> float | None:
    """Call an sklearn metric: undefined -> None; ``optional``: ValueError -> None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        try:
            return _num(fn(*args, **kw))
        except ValueError:
            if optional:
                return None
            raise


def jsonable(v: Any) -> Any:
    """JSON-safe copy: numpy scalars unwrapped, containers walked, the rest ``repr``."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, np.generic):
        return jsonable(v.item())
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return repr(v)


def n_rows(obj: Any, what: str) -> int:
    shape = getattr(obj, "shape", None)
    try:
        return int(shape[0]) if shape else len(obj)
    except TypeError:
        msg = f"expected an array-like {what}, got {type(obj).__name__}"
        raise InvalidInput(msg) from None


def _column(y: Any) -> np.ndarray:
    """y as a 1-D array; one column ``(n, 1)`` is accepted, multi-output is refused."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        msg = f"expected y as one column of targets, got shape {arr.shape}"
        raise InvalidInput(msg)
    return arr


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(eq=False)
class EvaluationResult:
    """Metrics of one model on one labelled data set, and what is needed to plot them.

    ``per_class`` maps ``str(label)`` to precision/recall/f1/support (string keys keep
    it JSON-safe); ``confusion[i][j]`` counts rows of true ``classes[i]`` predicted as
    ``classes[j]``. ``residuals`` summarises ``y_true - y_pred`` for regression.
    """

    task: Task
    metrics: dict[str, float | None]
    per_class: dict[str, dict[str, float]] | None
    confusion: list[list[int]] | None
    classes: list[Any] | None
    n: int
    primary_metric: str
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)
    name: str | None = None
    residuals: dict[str, float] | None = None

    @property
    def score(self) -> float | None:
        """The primary (higher-is-better) metric; None if undefined on this data."""
        return self.metrics.get(self.primary_metric)

    def summary(self) -> str:
        """One line, for logs and ``text/plain``."""
        who = f"{self.name}: " if self.name else ""
        score = "—" if self.score is None else f"{self.score:.4f}"
        return f"{who}{self.task}, {self.primary_metric}={score} on n={self.n}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary, without the per-row predictions."""
        keys = ("task", "name", "primary_metric", "score", "n", "metrics",
                "per_class", "confusion", "classes", "residuals")
        return {k: jsonable(getattr(self, k)) for k in keys}

    def figure(self) -> Any:
        """A matplotlib ``Figure``: confusion heatmap, or prediction-error plots."""
        from nbdeploy.display.reports import evaluation_figure

        return evaluation_figure(self)

    def _repr_html_(self) -> str:
        from nbdeploy.display.reports import evaluation_html

        return evaluation_html(self)


def _classification(model: Any, X: Any, y: np.ndarray, pred: np.ndarray) -> dict:
    """Macro metrics over the labels seen (sklearn's default, so they match direct
    calls); per-class rows and the confusion matrix also list fitted classes not seen,
    so a champion and a challenger tabulate the same classes."""
    fitted = getattr(model, "classes_", None)
    labels = unique_labels(y, pred, *([] if fitted is None else [np.asarray(fitted)]))
    m: dict[str, float | None] = {
        "accuracy": _metric(skm.accuracy_score, y, pred),
        "balanced_accuracy": _metric(skm.balanced_accuracy_score, y, pred),
    }
    macro = skm.precision_recall_fscore_support(
        y, pred, average="macro", zero_division=0
    )
    for key, value in zip(("precision", "recall", "f1"), macro[:3], strict=True):
        m[f"{key}_macro"] = _num(value)
    m["roc_auc"] = m["log_loss"] = None
    scorable = fitted is not None and np.isin(y, fitted).all()
    if hasattr(model, "predict_proba") and scorable:
        proba = np.asarray(model.predict_proba(X))
        if len(fitted) == 2:
            auc = _metric(skm.roc_auc_score, y == fitted[1], proba[:, 1], optional=True)
        else:
            auc = _metric(skm.roc_auc_score, y, proba, multi_class="ovr",
                          average="macro", labels=fitted, optional=True)
        m["roc_auc"] = auc
        m["log_loss"] = _metric(skm.log_loss, y, proba, labels=fitted, optional=True)
    p, r, f, s = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    per_class = {
        str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                 "support": int(s[i])}
        for i, c in enumerate(labels)
    }
    confusion = skm.confusion_matrix(y, pred, labels=labels).astype(int).tolist()
    return {"metrics": m, "per_class": per_class, "confusion": confusion,
            "classes": labels.tolist()}


def _regression(y: np.ndarray, pred: np.ndarray) -> dict:
    """MAE, RMSE, R² and MAPE. MAPE is None when y has a zero: sklearn then divides by
    machine epsilon and reports numbers like 1e14 that look like a score but are not."""
    if not (np.issubdtype(y.dtype, np.number) and np.issubdtype(pred.dtype, np.number)):
        raise InvalidInput(f"expected numeric regression targets, got dtype {y.dtype}")
    mape = None
    if not (y == 0).any():
        mape = _metric(skm.mean_absolute_percentage_error, y, pred)
    metrics = {
        "mae": _metric(skm.mean_absolute_error, y, pred),
        "rmse": _metric(skm.root_mean_squared_error, y, pred),
        "r2": _metric(skm.r2_score, y, pred),
        "mape": mape,
    }
    res = (y - pred).astype(float)
    q = np.quantile(res, [0.05, 0.25, 0.5, 0.75, 0.95])
    stats = {"mean": res.mean(), "std": res.std(), "min": res.min(), "p05": q[0],
             "p25": q[1], "median": q[2], "p75": q[3], "p95": q[4], "max": res.max()}
    return {"metrics": metrics, "residuals": {k: float(v) for k, v in stats.items()}}


def evaluate(
    model: Any, X: Any, y: Any, *, name: str | None = None
) -> EvaluationResult:
    """Score a fitted classifier or regressor on labelled rows ``X``/``y``.

    ``name`` labels the reports; it defaults to the class (or pipeline steps) name.

    InvalidInput for an unfitted model, mismatched or empty data, a clusterer (no
    labels to compare with), or predictions sklearn cannot score against ``y``.
    """
    task = task_of(model)
    label = name or estimator_label(model)
    if task == "clustering":
        raise InvalidInput(f"{label} is a clusterer: only classifiers and regressors "
                           "can be evaluated against labels")
    try:
        if not hasattr(model, "nbdeploy_task"):  # a stored version is fitted by definition
            check_is_fitted(model)
    except NotFittedError:
        msg = f"{label} is not fitted: call fit() or train() first"
        raise InvalidInput(msg) from None
    n, n_y = n_rows(X, "X"), n_rows(y, "y")
    if n != n_y or n == 0:
        raise InvalidInput(f"expected X and y with the same number of rows (> 0), "
                           f"got {n} and {n_y}")
    y_true = _column(y)
    try:
        y_pred = _column(model.predict(X))
        parts = (_classification(model, X, y_true, y_pred) if task == "classification"
                 else _regression(y_true, y_pred))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot evaluate {label}: {first_line(exc)}") from exc
    return EvaluationResult(
        task=task, metrics=parts["metrics"], per_class=parts.get("per_class"),
        confusion=parts.get("confusion"), classes=parts.get("classes"), n=n,
        primary_metric=PRIMARY_METRIC[task], y_true=y_true, y_pred=y_pred, name=label,
        residuals=parts.get("residuals"),
    )
