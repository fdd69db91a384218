"""A fitted model becomes a stored version: convert, check fidelity, judge against production, store.

Nothing here serves or promotes: :mod:`nbdeploy.api` does, after :func:`register` says what the
gate decided. The kernel also remembers which fitted model came from which ``train`` run (the
run itself is in the store), so deploying that model later is judged on the run's held-out rows.
"""

from __future__ import annotations

import platform
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbdeploy import client
from nbdeploy._version import __version__
from nbdeploy.convert.conversion import Converted
from nbdeploy.convert.fidelity import MAX_DIFF, MIN_AGREEMENT, FidelityReport, gated_conversion
from nbdeploy.errors import InvalidInput
from nbdeploy.lifecycle.artifacts import ESTIMATOR_FILE, HOLDOUT_FILE, TRAIN_FILE, estimator_file, rows_json
from nbdeploy.lifecycle.estimation import estimation_meta
from nbdeploy.lifecycle.evaluation import evaluate
from nbdeploy.lifecycle.gate import GateDecision
from nbdeploy.lifecycle.promotion import judge
from nbdeploy.lifecycle.training import TrainResult
from nbdeploy.local import OnnxPredictor
from nbdeploy.monitor import reference_profile
from nbdeploy.store import Store, check_name

# The train runs of this kernel, by the fitted model they produced (weakly: a model dropped is forgotten).
_RUNS: weakref.WeakKeyDictionary[Any, tuple[int, TrainResult]] = weakref.WeakKeyDictionary()


@dataclass
class Candidate:
    """A version just registered: its number, fidelity and (with labelled data) the gate's decision."""

    version: int
    fidelity: FidelityReport
    decision: GateDecision | None
    refused: bool


def record_run(store: Store, name: str, result: TrainResult) -> int:
    """Keep a ``train`` run in the store (metrics, data profile) and remember its model; returns its id."""
    summary = {**result.to_dict(), "profile": reference_profile(result.X_train)}
    run_id = store.add_run(name, summary)
    _RUNS[result.model] = (run_id, result)
    result.run_id = run_id
    return run_id


def register(model: Any, sample: Any, name: str, *, test: Any = None, store: Store, force: bool = False,
             min_score: float | None = None, tolerance: float = 0.0, min_agreement: float = MIN_AGREEMENT,
             max_diff: float = MAX_DIFF, train_data: tuple[Any, Any] | None = None,
             origin: dict[str, Any] | None = None) -> Candidate:
    """Convert, check fidelity, judge against production when there is labelled held-out data, store.

    Labelled held-out data is ``test=(X, y)``, else the held-out rows of the ``train`` run that
    produced ``model``. Kept beside the ONNX file: the held-out rows, the training rows (when
    known) and the estimator itself in skops format, so a later kernel can retrain it; the server
    never reads those. The store records each file's sha256; ``meta["estimator"]`` records the
    types the estimator may be loaded with (see :mod:`nbdeploy.lifecycle.artifacts`). A refused
    candidate is stored with status ``refused``.
    """
    check_name(name)
    check_fitted(model)
    run = _RUNS.get(model)
    holdout = _holdout(test, run)
    X_check = holdout[0] if holdout else (test if test is not None else sample)
    # single precision, else double when only double passes; FidelityRefused when none does (unless force)
    converted, fidelity = gated_conversion(model, sample, X_check, min_agreement=min_agreement,
                                           max_diff=max_diff, force=force)
    train_data = train_data or ((run[1].X_train, run[1].y_train) if run else None)
    meta = version_meta(converted, fidelity, sample)
    meta["profile"] = reference_profile(train_data[0] if train_data else sample)
    meta["run_id"] = run[0] if run else None
    meta.update(origin or {})  # where it came from, e.g. {"retrained_from": 1}: the timeline marks it
    estimator, meta["estimator"] = estimator_file(model)  # the file, and the types it may be loaded with
    files = {ESTIMATOR_FILE: estimator}
    if train_data is not None:
        files[TRAIN_FILE] = rows_json(*train_data)
    decision = None
    if holdout is not None:
        X_h, y_h = holdout
        served = OnnxPredictor(converted.onnx_bytes, {**meta, "name": name})
        scored = evaluate(served, X_h, y_h, name=f"{name} (candidate)")
        decision = judge(store, name, scored, X_h, y_h, min_score=min_score, tolerance=tolerance)
        # what the monitor estimates quality with before labels arrive (calibration or loss model)
        meta.update(gated=True, metrics=scored.to_dict(), gate=decision.to_dict(),
                    estimation=estimation_meta(served, X_h, y_h))
        files[HOLDOUT_FILE] = rows_json(X_h, y_h)
    refused = decision is not None and not decision.passed and not force
    version = store.register(name, converted.onnx_bytes, meta, status="refused" if refused else "registered",
                             files=files)
    return Candidate(version, fidelity, decision, refused)


def _holdout(test: Any, run: tuple[int, TrainResult] | None) -> tuple[Any, Any] | None:
    if isinstance(test, tuple):
        if len(test) == 2:
            return test
        if len(test) != 1:
            raise InvalidInput(f"test must be X or (X, y); got a tuple of {len(test)}")
        return None
    if test is None and run is not None:
        return run[1].X_test, run[1].y_test
    return None


def version_meta(converted: Converted, fidelity: FidelityReport, sample: Any) -> dict[str, Any]:
    """What ``model.json`` records of a conversion: task, signature, an example, fidelity, library versions."""
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    head = sample.head(1) if hasattr(sample, "head") else np.asarray(sample)[:1]
    return {
        "task": converted.task,
        "classes": converted.classes,
        "outputs": converted.outputs,
        "signature": converted.signature.to_dict(),
        "example": client.v2_inputs(converted.signature, head),
        "fidelity": fidelity.to_dict(),
        "precision": converted.precision,
        "convert_seconds": converted.seconds,
        "onnx_bytes": len(converted.onnx_bytes),
        "created_by": {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
                       "skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__,
                       "onnxruntime": onnxruntime.__version__, "nbdeploy": __version__},
    }


def check_fitted(model: Any) -> None:
    """Refuse what is not a fitted scikit-learn estimator, before anything is converted or stored."""
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, BaseEstimator):
        raise InvalidInput(f"expected a fitted scikit-learn estimator or pipeline, got {type(model).__name__}")
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise InvalidInput(f"{type(model).__name__} is not fitted yet; call .fit(X, y) before deploying") from None
