"""The retrain loop: a fresh clone of the deployed pipeline, fitted on training data plus labelled
production traffic, judged against the live model on recent labels it never trained on.

:func:`retrain` registers the challenger as a new version and stops there; promoting and serving
it is :func:`nbdeploy.api.retrain`'s part.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbdeploy.errors import InvalidInput
from nbdeploy.lifecycle.artifacts import TRAIN_FILE, load_estimator, read_rows, restore_dtypes
from nbdeploy.lifecycle.gate import GateDecision
from nbdeploy.lifecycle.registration import register
from nbdeploy.signature import Signature
from nbdeploy.store import PRODUCTION, Store, VersionRecord
from nbdeploy.store.reader import LogReader


@dataclass
class RetrainResult:
    """What a retrain did: the new version, the data it saw, and the gate's verdict on recent labels."""

    name: str
    version: int
    champion_version: int
    decision: GateDecision | None
    promoted: bool
    n_train: int
    n_feedback_train: int
    n_recent: int
    reason: str = field(default="", repr=False)  # why it was not promoted

    def summary(self) -> str:
        verdict = self.decision.summary() if self.decision else "not judged (no recent labels)"
        action = "promoted to production" if self.promoted else "registered, not promoted"
        if self.reason and not self.promoted:
            action += f": {self.reason}"
        return (f"{self.name!r} v{self.version} ({action}); trained on {self.n_train} rows "
                f"({self.n_feedback_train} from feedback), judged on {self.n_recent} recent labels: {verdict}")

    def _repr_html_(self) -> str:
        gate = self.decision._repr_html_() if self.decision else ""
        return f"<p><b>retrain</b>: {html.escape(self.summary())}</p>{gate}"


def labelled_traffic(store: Store, name: str, signature: Signature) -> tuple[Any, np.ndarray, np.ndarray]:
    """Inputs, true labels and prediction times of every logged prediction of ``name`` with feedback."""
    with LogReader(store.location) as reader:
        rows = reader.labelled_traffic(name)
    labels = np.asarray([r.label for r in rows])
    times = np.asarray([r.ts for r in rows], dtype=float)
    if not rows:
        return _empty(signature), labels, times
    # Through the signature, as the served model saw them: the training frame's dtypes, missing text as
    # missing (not the wire's sentinel), categories as categories; a refit then sees what ONNX sees.
    if not signature.frame:
        values = np.asarray([list(r.inputs.values()) for r in rows], dtype=object).reshape(len(rows), -1)
        return signature.decode(signature.encode(values)), labels, times
    return signature.as_served([r.inputs for r in rows]), labels, times


def retrain(name: str, *, data: tuple[Any, Any] | None = None, with_feedback: bool = False,
            recent: float = 0.3, min_score: float | None = None, tolerance: float = 0.0,
            home: str | None = None) -> RetrainResult:
    """Fit a fresh clone of ``name``'s production pipeline and register it as a new version.

    Training data: ``data=(X, y)``, else the rows the production version was trained on. The
    most recent ``recent`` share of labelled production traffic is kept apart to judge
    challenger against champion; with ``with_feedback`` the older labelled traffic joins the
    training data. Nothing is promoted here (``result.reason`` says what promoting needs):
    :func:`nbdeploy.retrain` promotes when asked and the gate passed.
    """
    from sklearn.base import clone

    if not 0 < recent < 1:
        raise InvalidInput(f"recent must be a share between 0 and 1, got {recent}")
    store = Store(home)
    store.require_model(name)
    champion_version = store.aliases(name).get(PRODUCTION)
    if champion_version is None:
        raise InvalidInput(f"{name!r} has no production version to retrain")
    record = store.version(name, champion_version)
    base = data if data is not None else read_rows(record, TRAIN_FILE)
    signature = Signature.from_dict(record.meta["signature"])
    X_fb, y_fb, _ = labelled_traffic(store, name, signature)
    n_fb = len(y_fb)
    cut = n_fb - round(n_fb * recent) if n_fb else 0
    X_recent, y_recent = (_take(X_fb, slice(cut, None)), y_fb[cut:]) if n_fb else (None, y_fb)
    parts = [base] if base is not None else []
    if cut and with_feedback:
        parts.append((_take(X_fb, slice(0, cut)), y_fb[:cut]))
    if not parts:
        raise InvalidInput(f"no training data for {name!r}: pass data=(X, y) (--data X y), or send labels "
                           "with feedback, or deploy from a `train` run so its rows are kept")
    X_train, y_train = _concat(parts, record)
    challenger = clone(load_estimator(record)).fit(X_train, _labels_like(y_train, record))
    sample = X_train[:200] if not hasattr(X_train, "iloc") else X_train.iloc[:200]
    test = (X_recent, _labels_like(y_recent, record)) if len(y_recent) else None
    candidate = register(challenger, sample, name, test=test, store=store, min_score=min_score,
                         tolerance=tolerance, train_data=(X_train, y_train),
                         origin={"retrained_from": champion_version, "feedback_rows": cut if with_feedback else 0})
    if candidate.decision is None:
        reason = (f"no recent labelled traffic to judge it on; send feedback and retrain, or promote it "
                  f"yourself (promote({name!r}, {candidate.version}))")
    elif not candidate.decision.passed:
        reason = "the gate refused it"
    else:
        reason = "not asked to (promote=True, --promote)"
    return RetrainResult(name, candidate.version, champion_version, candidate.decision, False,
                         len(y_train), cut if with_feedback else 0, len(y_recent), reason=reason)


def _empty(signature: Signature) -> Any:
    if not signature.frame:
        return np.empty((0, signature.inputs[0].shape[1]))
    import pandas as pd

    return pd.DataFrame(columns=signature.names)


def _take(X: Any, rows: slice) -> Any:
    return X.iloc[rows] if hasattr(X, "iloc") else X[rows]


def _concat(parts: list[tuple[Any, Any]], record: VersionRecord) -> tuple[Any, np.ndarray]:
    y = np.concatenate([np.asarray(p[1]) for p in parts])
    if not hasattr(parts[0][0], "iloc"):
        return np.vstack([np.asarray(p[0], dtype=float) for p in parts]), y
    import pandas as pd

    first = parts[0][0]
    frame = pd.concat([p[0][list(first.columns)] for p in parts], ignore_index=True)
    return restore_dtypes(frame, {str(c): str(t) for c, t in first.dtypes.items()}), y


def _labels_like(y: np.ndarray, record: VersionRecord) -> np.ndarray:
    """Feedback labels arrive as JSON: give them the type of the model's classes."""
    classes = record.meta.get("classes")
    if not classes or not len(y):
        return np.asarray(y)
    kind = type(classes[0])
    try:
        return np.asarray([kind(v) for v in y])
    except (TypeError, ValueError):
        return np.asarray(y)
