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

import base64
import hashlib
import html
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.base import ClusterMixin, clone, is_classifier, is_clusterer, is_regressor
from sklearn.exceptions import NotFittedError, UndefinedMetricWarning
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted

from nbdeploy.errors import InvalidInput

__all__ = [
    "PRIMARY_METRIC", "EvaluationResult", "GateDecision", "TrainResult", "compare",
    "data_fingerprint", "evaluate", "task_of", "train",
]

Task = Literal["classification", "regression", "clustering"]
PRIMARY_METRIC: dict[str, str] = {"classification": "accuracy", "regression": "r2"}
_FLEX = '<div style="display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start">'


def task_of(estimator: Any) -> Task:
    """The task an estimator (or a pipeline ending in one) solves; else InvalidInput.

    A stored version loaded as an ``OnnxPredictor`` says its task itself (``nbdeploy_task``).
    """
    stored_task = getattr(estimator, "nbdeploy_task", None)
    if stored_task is not None:
        return stored_task
    if not hasattr(estimator, "fit"):
        raise InvalidInput(
            f"expected a scikit-learn estimator, got {type(estimator).__name__}"
        )
    try:  # sklearn reads estimator tags, which only BaseEstimator subclasses have
        if is_classifier(estimator):
            return "classification"
        if is_regressor(estimator):
            return "regression"
        if is_clusterer(estimator) or isinstance(estimator, ClusterMixin):
            return "clustering"
    except AttributeError:
        raise InvalidInput(f"expected a scikit-learn estimator (a BaseEstimator "
                           f"subclass), got {type(estimator).__name__}") from None
    raise InvalidInput(
        f"{_label(estimator)} is not a classifier, regressor or clusterer"
    )


def _label(estimator: Any) -> str:
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


def _jsonable(v: Any) -> Any:
    """JSON-safe copy: numpy scalars unwrapped, containers walked, the rest ``repr``."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _rows(obj: Any, what: str) -> int:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _table(head: list[Any], rows: list[list[Any]], caption: str = "") -> str:
    """An HTML table whose first column is a row header; values go through ``_fmt``."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(
        f"<tr><th>{_fmt(r[0])}</th>" + "".join(f"<td>{_fmt(c)}</td>" for c in r[1:])
        + "</tr>"
        for r in rows
    )
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig: Any) -> str:
    """Figure -> ``<img>`` with the PNG embedded, so saved notebooks keep the plot."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}"/>'


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
        score = _fmt(self.score)
        return f"{who}{self.task}, {self.primary_metric}={score} on n={self.n}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary, without the per-row predictions."""
        keys = ("task", "name", "primary_metric", "score", "n", "metrics",
                "per_class", "confusion", "classes", "residuals")
        return {k: _jsonable(getattr(self, k)) for k in keys}

    def figure(self) -> Any:
        """A matplotlib ``Figure``: confusion heatmap, or prediction-error plots."""
        from matplotlib.figure import Figure

        title = self.name or self.task
        if self.task == "classification":
            fig = Figure(figsize=(4.2, 3.6), layout="constrained")
            ax = fig.add_subplot()
            rotate = len(self.classes or ()) > 6
            skm.ConfusionMatrixDisplay.from_predictions(
                self.y_true, self.y_pred, labels=self.classes, ax=ax, colorbar=False,
                cmap="Blues", xticks_rotation="vertical" if rotate else "horizontal",
            )
            ax.set_title(title)
            return fig
        fig = Figure(figsize=(8, 3.4), layout="constrained")
        kinds = ("actual_vs_predicted", "residual_vs_predicted")
        for ax, kind in zip(fig.subplots(1, 2), kinds, strict=True):
            skm.PredictionErrorDisplay.from_predictions(
                self.y_true, self.y_pred, kind=kind, ax=ax, random_state=0
            )
        fig.suptitle(title)
        return fig

    def _repr_html_(self) -> str:
        primary = self.primary_metric
        rows = [[f"{k} (primary)" if k == primary else k, v]
                for k, v in self.metrics.items()]
        parts = [_table(["metric", "value"], rows, "metrics")]
        if self.per_class is not None:
            rows = [[c, *m.values()] for c, m in self.per_class.items()]
            head = ["class", "precision", "recall", "f1", "support"]
            parts.append(_table(head, rows, "per class"))
        if self.confusion is not None and self.classes is not None:
            rows = [[c, *r] for c, r in zip(self.classes, self.confusion, strict=True)]
            head = ["true \\ pred", *self.classes]
            parts.append(_table(head, rows, "confusion matrix"))
        if self.residuals is not None:
            rows = [[k, v] for k, v in self.residuals.items()]
            caption = "residuals (y_true − y_pred)"
            parts.append(_table(["residual", "value"], rows, caption))
        plot = _png(self.figure()) if self.task == "regression" else ""
        return (f'<div class="nbdeploy-report"><h4>{html.escape(self.summary())}</h4>'
                f"{_FLEX}{''.join(parts)}</div>{plot}</div>")


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
    label = name or _label(model)
    if task == "clustering":
        raise InvalidInput(f"{label} is a clusterer: only classifiers and regressors "
                           "can be evaluated against labels")
    try:
        if not hasattr(model, "nbdeploy_task"):  # a stored version is fitted by definition
            check_is_fitted(model)
    except NotFittedError:
        msg = f"{label} is not fitted: call fit() or train() first"
        raise InvalidInput(msg) from None
    n, n_y = _rows(X, "X"), _rows(y, "y")
    if n != n_y or n == 0:
        raise InvalidInput(f"expected X and y with the same number of rows (> 0), "
                           f"got {n} and {n_y}")
    y_true = _column(y)
    try:
        y_pred = _column(model.predict(X))
        parts = (_classification(model, X, y_true, y_pred) if task == "classification"
                 else _regression(y_true, y_pred))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot evaluate {label}: {_first_line(exc)}") from exc
    return EvaluationResult(
        task=task, metrics=parts["metrics"], per_class=parts.get("per_class"),
        confusion=parts.get("confusion"), classes=parts.get("classes"), n=n,
        primary_metric=PRIMARY_METRIC[task], y_true=y_true, y_pred=y_pred, name=label,
        residuals=parts.get("residuals"),
    )


@dataclass(eq=False)
class GateDecision:
    """Outcome of the promotion gate; ``reason`` quotes the scores that decided it."""

    passed: bool
    metric: str
    champion_score: float | None
    challenger_score: float | None
    min_score: float | None
    tolerance: float
    reason: str
    champion: EvaluationResult | None = field(default=None, repr=False)
    challenger: EvaluationResult | None = field(default=None, repr=False)

    def summary(self) -> str:
        """One line, for logs and ``text/plain``."""
        return f"{'PASSED' if self.passed else 'REFUSED'}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the decision (the scores, not the evaluations)."""
        keys = ("passed", "metric", "champion_score", "challenger_score", "min_score",
                "tolerance", "reason")
        return {k: _jsonable(getattr(self, k)) for k in keys}

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        verdict = "PASSED" if self.passed else "REFUSED"
        head = (f'<h4 style="color:{color}">{verdict}</h4>'
                f"<p>{html.escape(self.reason)}</p>")
        table = _table(["", self.metric], [
            ["champion", self.champion_score], ["challenger", self.challenger_score],
            ["min_score", self.min_score], ["tolerance", self.tolerance]])
        figs = "".join(
            f"<figure>{_png(r.figure())}<figcaption>{role}: {self.metric} "
            f"{_fmt(r.score)}</figcaption></figure>"
            for role, r in (("champion", self.champion),
                            ("challenger", self.challenger))
            if r is not None
        )
        return f'<div class="nbdeploy-gate">{head}{table}{_FLEX}{figs}</div></div>'


def compare(champion: EvaluationResult | None, challenger: EvaluationResult, *,
            min_score: float | None = None, tolerance: float = 0.0) -> GateDecision:
    """Promotion gate on the primary metric (higher is better).

    Passes iff ``challenger.score >= min_score`` (when given) and, when there is a
    champion, ``challenger.score >= champion.score - tolerance``; a challenger without a
    score never passes. Scoring both on the same held-out rows is the caller's job.
    """
    if not isinstance(challenger, EvaluationResult) or not (
        champion is None or isinstance(champion, EvaluationResult)
    ):
        raise InvalidInput("expected EvaluationResult objects from evaluate()")
    if champion is not None and champion.primary_metric != challenger.primary_metric:
        raise InvalidInput(f"cannot compare a {champion.task} champion with a "
                           f"{challenger.task} challenger")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
        tolerance >= 0
    ):
        raise InvalidInput(f"expected tolerance >= 0, got {tolerance!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float))
    ):
        raise InvalidInput(f"expected min_score as a number or None, got {min_score!r}")
    metric, new = challenger.primary_metric, challenger.score
    old = None if champion is None else champion.score
    failed: list[str] = []
    passed: list[str] = []
    if new is None:
        failed.append(f"challenger has no {metric} on this data")
    else:
        if min_score is not None:
            ok = new >= min_score
            (passed if ok else failed).append(
                f"challenger {metric} {new:.4f} {'>=' if ok else '<'} floor "
                f"{min_score:.4f}")
        if old is not None:
            bar = old - tolerance
            ok = new >= bar
            (passed if ok else failed).append(
                f"challenger {metric} {new:.4f} {'>=' if ok else '<'} champion "
                f"{old:.4f} - tolerance {tolerance:.4f} = {bar:.4f}")
        else:
            who = "no champion" if champion is None else f"champion has no {metric}"
            passed.append(f"{who}: judged on the floor only")
    return GateDecision(
        passed=not failed, metric=metric, champion_score=old, challenger_score=new,
        min_score=None if min_score is None else float(min_score),
        tolerance=float(tolerance), reason="; ".join(failed or passed),
        champion=champion, challenger=challenger,
    )


def data_fingerprint(X: Any, y: Any) -> str:
    """sha256 (hex) over column names, dtypes, shape and row-ordered values of X and y.

    Built on pandas' keyed row hashing, which is fixed across processes and machines,
    so equal data gives the same digest in every run. The index is ignored.
    """
    h = hashlib.sha256()
    for part in (X, y):
        if isinstance(part, pd.Series):
            frame = part.to_frame()
        elif isinstance(part, pd.DataFrame):
            frame = part
        else:
            arr = np.asarray(part)
            frame = pd.DataFrame(arr if arr.ndim == 2 else arr.reshape(len(arr), -1))
        meta = ([str(c) for c in frame.columns], [str(d) for d in frame.dtypes],
                frame.shape)
        h.update(repr(meta).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


@dataclass(eq=False)
class TrainResult:
    """A fitted model, its held-out evaluation and CV scores, and what reproduces it."""

    model: Any
    evaluation: EvaluationResult
    cv_scores: list[float] | None
    params: dict[str, Any]
    fingerprint: str
    X_train: Any = field(repr=False)
    y_train: Any = field(repr=False)
    X_test: Any = field(repr=False)
    y_test: Any = field(repr=False)
    seed: int | None = 0
    test_size: float = 0.2
    stratify: bool = False
    cv: int | None = None

    @property
    def score(self) -> float | None:
        """The held-out primary metric (``evaluation.score``)."""
        return self.evaluation.score

    def summary(self) -> str:
        """One line, for logs and ``text/plain``."""
        cv = f", cv mean {np.mean(self.cv_scores):.4f}" if self.cv_scores else ""
        return f"{self.evaluation.summary()} (held out){cv}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the run (parameters, sizes, scores), without the data."""
        cv = self.cv_scores
        return _jsonable({
            "estimator": self.evaluation.name, "task": self.evaluation.task,
            "params": self.params, "fingerprint": self.fingerprint, "seed": self.seed,
            "test_size": self.test_size, "stratify": self.stratify, "cv": self.cv,
            "cv_scores": cv, "cv_mean": float(np.mean(cv)) if cv else None,
            "cv_std": float(np.std(cv)) if cv else None,
            "n_train": _rows(self.X_train, "X"), "n_test": _rows(self.X_test, "X"),
            "evaluation": self.evaluation.to_dict(),
        })

    def _repr_html_(self) -> str:
        d = self.to_dict()
        rows = [["estimator", d["estimator"]],
                ["train / test rows", f"{d['n_train']} / {d['n_test']}"],
                ["seed", d["seed"]], ["stratified", d["stratify"]]]
        if d["cv_mean"] is not None:
            rows.append([f"cv {self.evaluation.primary_metric} ({d['cv']} folds)",
                         f"{d['cv_mean']:.4f} ± {d['cv_std']:.4f}"])
        rows.append(["data fingerprint", self.fingerprint[:16]])
        return (f'<div class="nbdeploy-train">{_table(["run", ""], rows)}'
                f"{self.evaluation._repr_html_()}</div>")


def train(estimator: Any, X: Any, y: Any, *, test_size: float = 0.2,
          stratify: bool = False, cv: int | None = None,
          seed: int | None = 0) -> TrainResult:
    """Split, fit a clone of ``estimator`` on the train part, score the held-out part.

    ``seed`` drives the split and fills every ``random_state`` the estimator left as
    None (recorded in ``params``), so the same call gives the same metrics. ``cv=K``
    also cross-validates the train part (K primary-metric scores). The caller's
    estimator is never fitted.
    """
    task = task_of(estimator)
    if not hasattr(estimator, "get_params"):
        raise InvalidInput(
            f"expected a scikit-learn estimator, got {type(estimator).__name__}"
        )
    if task == "clustering":
        raise InvalidInput("expected a classifier or regressor: a clusterer has no "
                           "held-out score")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not (
        0 < test_size < 1
    ):
        raise InvalidInput(f"expected test_size as a fraction between 0 and 1 "
                           f"(exclusive), got {test_size!r}")
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, int) or cv < 2):
        raise InvalidInput(f"expected cv as a number of folds >= 2 or None, got {cv!r}")
    if stratify and task != "classification":
        raise InvalidInput("stratify=True needs a classifier: regression targets have "
                           "no classes")
    n, n_y = _rows(X, "X"), _rows(y, "y")
    if n != n_y:
        raise InvalidInput(f"expected one y value per row of X, got {n} rows and "
                           f"{n_y} values")
    model = clone(estimator)
    if seed is not None:
        unset = [k for k, v in model.get_params(deep=True).items()
                 if k.endswith("random_state") and v is None]
        model.set_params(**dict.fromkeys(unset, seed))
    name = _label(estimator)
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed,
            stratify=y if stratify else None,
        )
        scores = None if cv is None else cross_val_score(
            clone(model), X_train, y_train, cv=cv, scoring=PRIMARY_METRIC[task],
            error_score="raise",
        ).tolist()
        model.fit(X_train, y_train)
    except ValueError as exc:
        raise InvalidInput(f"cannot train {name}: {_first_line(exc)}") from exc
    return TrainResult(
        model=model, evaluation=evaluate(model, X_test, y_test, name=name),
        cv_scores=scores, params=_jsonable(model.get_params(deep=False)),
        fingerprint=data_fingerprint(X, y), X_train=X_train, y_train=y_train,
        X_test=X_test, y_test=y_test, seed=seed, test_size=float(test_size),
        stratify=stratify, cv=cv,
    )
