"""The workflow in plain Python: deploy a fitted model, find deployments, call and stop them.

Everything the ``%deploy`` magic does is a call into this module, so it all works without IPython.
"""

from __future__ import annotations

import platform
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbdeploy import client
from nbdeploy.convert.conversion import Converted
from nbdeploy.convert.fidelity import MAX_DIFF, MIN_AGREEMENT, FidelityReport, gated_conversion
from nbdeploy.deployment import Deployment
from nbdeploy.display.registry import RegistryTable
from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.lifecycle.artifacts import ESTIMATOR_FILE, HOLDOUT_FILE, TRAIN_FILE, estimator_bytes, rows_json
from nbdeploy.lifecycle.evaluation import EvaluationResult, evaluate
from nbdeploy.lifecycle.gate import GateDecision
from nbdeploy.lifecycle.promotion import GateRefused, judge
from nbdeploy.lifecycle.promotion import evaluate_stored as evaluate_version
from nbdeploy.lifecycle.promotion import promote as _promote
from nbdeploy.lifecycle.promotion import rollback as _rollback
from nbdeploy.lifecycle.training import TrainResult
from nbdeploy.lifecycle.training import train as _train
from nbdeploy.local import OnnxPredictor
from nbdeploy.monitor import reference_profile
from nbdeploy.serve import process
from nbdeploy.store import PRODUCTION, SHADOW, Store, check_name

# Runs recorded by train(), by the fitted model they produced: deploy() finds its held-out data here.
_RUNS: weakref.WeakKeyDictionary[Any, tuple[int, TrainResult]] = weakref.WeakKeyDictionary()


def deploy(model: Any, sample: Any, name: str, *, test: Any = None, home: str | None = None,
           port: int | None = None, force: bool = False, min_score: float | None = None,
           tolerance: float = 0.0, min_agreement: float = MIN_AGREEMENT,
           max_diff: float = MAX_DIFF) -> Deployment:
    """Convert ``model`` to ONNX, check it, store it as a new version, and serve it.

    ``sample`` fixes the input schema. ``test`` is held-out data: ``(X, y)`` judges the new
    version through the promotion gate against the current production version (so does a run
    recorded by :func:`train` for this model); ``X`` alone is used for the fidelity check only.
    A refused version stays registered and :class:`GateRefused` is raised. Returns once the
    server answers with the new version.

    Every deploy first checks that the ONNX model predicts what ``model`` predicts on the held-out
    ``X`` (else the sample): labels agree on at least ``min_agreement`` of the rows and probabilities
    (regression: values, relative to ``max(|y|, 1)``) differ by at most ``max_diff``. Double precision
    is used by itself when only it passes; when no conversion passes, :class:`FidelityRefused` is
    raised and nothing is stored, unless ``force``.
    """
    started = time.perf_counter()
    store = Store(home)
    candidate = register(model, sample, name, test=test, store=store, force=force, min_score=min_score,
                         tolerance=tolerance, min_agreement=min_agreement, max_diff=max_diff)
    if candidate.refused:
        assert candidate.decision is not None
        raise GateRefused(name, candidate.version, candidate.decision)
    converted_at = time.perf_counter()
    store.set_alias(name, PRODUCTION, candidate.version)
    store.set_serving(name, True)
    _serve(store, port)
    _check_loaded(store, name, candidate.version)
    done = time.perf_counter()
    timings = {"convert_s": converted_at - started, "serve_s": done - converted_at, "total_s": done - started}
    return Deployment(name=name, home=str(store.home), fidelity=candidate.fidelity, timings=timings,
                      gate=candidate.decision)


@dataclass
class Candidate:
    """A version just registered: its number, fidelity and (with labelled data) the gate's decision."""

    version: int
    fidelity: FidelityReport
    decision: GateDecision | None
    refused: bool


def register(model: Any, sample: Any, name: str, *, test: Any = None, store: Store, force: bool = False,
             min_score: float | None = None, tolerance: float = 0.0, min_agreement: float = MIN_AGREEMENT,
             max_diff: float = MAX_DIFF, train_data: tuple[Any, Any] | None = None) -> Candidate:
    """Convert, check fidelity, judge against production when there is labelled held-out data, store.

    Nothing is served or promoted here. Kept beside the ONNX file: the held-out rows, the
    training rows (when known) and the estimator itself in skops format, so a later kernel can
    retrain it; the server never reads those.
    """
    check_name(name)
    check_fitted(model)
    run = _RUNS.get(model)
    holdout = _holdout(test, run)
    X_check = holdout[0] if holdout else (test if test is not None else sample)
    converted, fidelity = convert_checked(model, sample, X_check, min_agreement=min_agreement,
                                          max_diff=max_diff, force=force)  # raises FidelityRefused
    train_data = train_data or ((run[1].X_train, run[1].y_train) if run else None)
    meta = version_meta(converted, fidelity, sample)
    meta["profile"] = reference_profile(train_data[0] if train_data else sample)
    meta["run_id"] = run[0] if run else None
    files = {ESTIMATOR_FILE: estimator_bytes(model)}
    if train_data is not None:
        files[TRAIN_FILE] = rows_json(*train_data)
    decision = None
    if holdout is not None:
        X_h, y_h = holdout
        scored = evaluate(OnnxPredictor(converted.onnx_bytes, {**meta, "name": name}), X_h, y_h,
                          name=f"{name} (candidate)")
        decision = judge(store, name, scored, X_h, y_h, min_score=min_score, tolerance=tolerance)
        meta.update(gated=True, metrics=scored.to_dict(), gate=decision.to_dict())
        files[HOLDOUT_FILE] = rows_json(X_h, y_h)
    refused = decision is not None and not decision.passed and not force
    version = store.register(name, converted.onnx_bytes, meta, status="refused" if refused else "registered",
                             files=files)
    return Candidate(version, fidelity, decision, refused)


def _check_loaded(store: Store, name: str, version: int) -> None:
    state, error = store.served().get((name, version), ("missing", "the server did not load it"))
    if state != "ready":
        raise NbdeployError(f"the server could not load {name!r} version {version}: {error}", 500)


def _serve(store: Store, port: int | None = None) -> None:
    """Make sure the server runs and has caught up with the store."""
    generation = store.generation()
    process.ensure_server(store, port)
    process.wait_applied(store, generation)


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


def convert_checked(model: Any, sample: Any, X_check: Any, *, min_agreement: float = MIN_AGREEMENT,
                    max_diff: float = MAX_DIFF, force: bool = False) -> tuple[Converted, FidelityReport]:
    """Convert in single precision; use double when only double passes the fidelity gate.

    Raises :class:`ConversionError` naming the failing step, or showing the worst rows when no
    conversion passes the gate (unless ``force``); nothing is stored either way.
    """
    return gated_conversion(model, sample, X_check, min_agreement=min_agreement, max_diff=max_diff, force=force)


def version_meta(converted: Converted, fidelity: FidelityReport, sample: Any) -> dict[str, Any]:
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
                       "onnxruntime": onnxruntime.__version__, "nbdeploy": _version()},
    }


def deployments(home: str | None = None) -> list[Deployment]:
    """The models this store serves (also from a new kernel: the server keeps running)."""
    store = Store(home)
    return [Deployment(name=name, home=str(store.home)) for name in store.serving_models()]


def get(name: str, home: str | None = None) -> Deployment:
    store = Store(home)
    store.require_model(name)
    return Deployment(name=name, home=str(store.home))


def shutdown(home: str | None = None) -> bool:
    """Stop the store's server process, if one runs. Models stay registered."""
    return process.stop_server(Store(home))


def train(estimator: Any, X: Any, y: Any, name: str, *, test_size: float = 0.2, stratify: bool = False,
          cv: int | None = None, seed: int = 0, home: str | None = None) -> TrainResult:
    """Split, fit a clone, evaluate on the held-out part, and record the run in the store.

    Deploying the returned ``result.model`` later uses this run's held-out rows for the
    promotion gate and its training rows as the drift reference.
    """
    check_name(name)
    result = _train(estimator, X, y, test_size=test_size, stratify=stratify, cv=cv, seed=seed)
    store = Store(home)
    summary = {**result.to_dict(), "profile": reference_profile(result.X_train)}
    run_id = store.add_run(name, summary)
    _RUNS[result.model] = (run_id, result)
    result.run_id = run_id
    return result


def promote(name: str, version: int, alias: str = PRODUCTION, *, min_score: float | None = None,
            tolerance: float = 0.0, force: bool = False, home: str | None = None) -> Deployment:
    """Point ``alias`` at ``version``. For ``production`` the gate judges it on its held-out data."""
    store = Store(home)
    decision = _promote(store, name, int(version), alias, min_score=min_score, tolerance=tolerance, force=force)
    if alias == PRODUCTION:
        store.set_serving(name, True)
    if store.server() is not None or alias == PRODUCTION:
        _serve(store)
    return Deployment(name=name, home=str(store.home), gate=decision)


def shadow(name: str, version: int | None, *, home: str | None = None) -> Deployment:
    """Send a copy of ``name``'s live traffic to ``version`` too (None stops it).

    Clients only ever get production's answer; the shadow's answers are logged beside them and the
    monitor shows how often the two agree. The gate is not involved: nothing is promoted.
    """
    store = Store(home)
    store.require_model(name)
    if version is None:
        store.remove_alias(name, SHADOW)
    else:
        store.version(name, int(version))
        store.set_alias(name, SHADOW, int(version))
    if store.server() is not None:
        _serve(store)
    return Deployment(name=name, home=str(store.home))


def rollback(name: str, *, alias: str = PRODUCTION, home: str | None = None) -> Deployment:
    """Serve the version ``alias`` had before its last move (repeat to go further back)."""
    store = Store(home)
    _rollback(store, name, alias)
    if store.server() is not None:
        _serve(store)
    return Deployment(name=name, home=str(store.home))


def evaluate_stored(name: str, X: Any, y: Any, *, version: int | str | None = None,
                    home: str | None = None) -> EvaluationResult:
    """Evaluate a stored version (default: production) as it is served, on labelled rows."""
    store = Store(home)
    store.require_model(name)
    aliases = store.aliases(name)
    if version is None or str(version) in aliases:
        number = aliases.get(str(version) if version is not None else PRODUCTION)
        if number is None:
            raise InvalidInput(f"{name!r} has no production version; pass a version number")
    elif str(version).isdigit():
        number = int(version)
    else:
        raise InvalidInput(f"{name!r} has no alias {version!r}; aliases: {', '.join(aliases) or 'none'}")
    return evaluate_version(store.version(name, number), X, y)


def models(home: str | None = None) -> RegistryTable:
    """Every model in the store: versions, aliases, status, URL and the key metric."""
    store = Store(home)
    server = process.running_server(store)
    served = store.served() if server else {}
    serving = set(store.serving_models())
    rows = []
    for name in store.model_names():
        versions = store.versions(name)
        aliases = store.aliases(name)
        production = aliases.get(PRODUCTION)
        meta = next((v.meta for v in versions if v.version == production), {})
        metrics = (meta.get("metrics") or {})
        primary = metrics.get("primary_metric")
        score = (metrics.get("metrics") or {}).get(primary) if primary else None
        if name not in serving:
            status = "stopped"
        elif server is None:
            status = "server down"
        else:
            status = served.get((name, production or -1), ("starting", None))[0]
        rows.append({
            "name": name, "versions": [v.version for v in versions],
            "refused": [v.version for v in versions if v.status == "refused"], "aliases": aliases,
            "status": status, "url": f"{server.url}/v2/models/{name}" if server and name in serving else None,
            "metric": primary, "score": score,
        })
    return RegistryTable(rows)


def check_fitted(model: Any) -> None:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, BaseEstimator):
        raise InvalidInput(f"expected a fitted scikit-learn estimator or pipeline, got {type(model).__name__}")
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise InvalidInput(f"{type(model).__name__} is not fitted yet; call .fit(X, y) before deploying") from None


def _version() -> str:
    from nbdeploy import __version__

    return __version__
