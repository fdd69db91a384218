"""Train and test in one call: split, fit a clone, evaluate on the held-out part, cross-validate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import cross_val_score, train_test_split

from nbdeploy.errors import InvalidInput
from nbdeploy.lifecycle.evaluation import (
    PRIMARY_METRIC,
    EvaluationResult,
    estimator_label,
    evaluate,
    first_line,
    jsonable,
    n_rows,
    task_of,
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
        return jsonable({
            "estimator": self.evaluation.name, "task": self.evaluation.task,
            "params": self.params, "fingerprint": self.fingerprint, "seed": self.seed,
            "test_size": self.test_size, "stratify": self.stratify, "cv": self.cv,
            "cv_scores": cv, "cv_mean": float(np.mean(cv)) if cv else None,
            "cv_std": float(np.std(cv)) if cv else None,
            "n_train": n_rows(self.X_train, "X"), "n_test": n_rows(self.X_test, "X"),
            "evaluation": self.evaluation.to_dict(),
        })

    def _repr_html_(self) -> str:
        from nbdeploy.display.reports import train_html

        return train_html(self)


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
    n, n_y = n_rows(X, "X"), n_rows(y, "y")
    if n != n_y:
        raise InvalidInput(f"expected one y value per row of X, got {n} rows and "
                           f"{n_y} values")
    model = clone(estimator)
    if seed is not None:
        unset = [k for k, v in model.get_params(deep=True).items()
                 if k.endswith("random_state") and v is None]
        model.set_params(**dict.fromkeys(unset, seed))
    name = estimator_label(estimator)
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
        raise InvalidInput(f"cannot train {name}: {first_line(exc)}") from exc
    return TrainResult(
        model=model, evaluation=evaluate(model, X_test, y_test, name=name),
        cv_scores=scores, params=jsonable(model.get_params(deep=False)),
        fingerprint=data_fingerprint(X, y), X_train=X_train, y_train=y_train,
        X_test=X_test, y_test=y_test, seed=seed, test_size=float(test_size),
        stratify=stratify, cv=cv,
    )
