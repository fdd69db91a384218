"""The workflow in plain Python: deploy a fitted model, find deployments, call and stop them.

Everything the ``%deploy`` magic does is a call into this module, so it all works without IPython.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbdeploy import client
from nbdeploy.convert import Converted, task_of, to_onnx
from nbdeploy.errors import ConversionError, InvalidInput, NbdeployError, NotFound
from nbdeploy.fidelity import FidelityReport, check
from nbdeploy.serve import process
from nbdeploy.signature import Signature, from_sample
from nbdeploy.store import PRODUCTION, Store, check_name


@dataclass
class Deployment:
    """A model name served from a store. Properties read the store, so a handle stays current."""

    name: str
    home: str
    fidelity: FidelityReport | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def _store(self) -> Store:
        return Store(self.home)

    @property
    def version(self) -> int | None:
        """The version the endpoint serves by default (the ``production`` alias)."""
        return self._store.aliases(self.name).get(PRODUCTION)

    @property
    def server_url(self) -> str | None:
        record = process.running_server(self._store)
        return record.url if record else None

    @property
    def url(self) -> str | None:
        base = self.server_url
        return f"{base}/v2/models/{self.name}" if base else None

    @property
    def status(self) -> str:
        store = self._store
        if self.name not in store.serving_models():
            return "stopped"
        record = process.running_server(store)
        if record is None:
            return "server down"
        state = store.served().get((self.name, self.version or -1))
        if state is None:
            return "starting"
        return state[0] if state[1] is None else f"failed: {state[1]}"

    @property
    def signature(self) -> Signature:
        return Signature.from_dict(self._meta()["signature"])

    def _meta(self) -> dict[str, Any]:
        version = self.version
        if version is None:
            raise NotFound(f"model {self.name!r} has no production version")
        return self._store.version(self.name, version).meta

    def _infer(self, X: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        url = self.url
        if url is None:
            raise NbdeployError(f"the server for {self.name!r} is not running; deploy again to start it", 503)
        payload = {"inputs": client.v2_inputs(self.signature, X), "outputs": [{"name": o} for o in outputs]}
        return client.outputs_by_name(client.post_json(f"{url}/infer", payload))

    def predict(self, X: Any) -> np.ndarray:
        """Labels (classifiers, clusterers) or values (regressors), through the HTTP endpoint."""
        return self._infer(X, ["label"])["label"]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes``, through the HTTP endpoint."""
        if self._meta().get("task") != "classification":
            raise InvalidInput(f"{self.name!r} is not a classifier: predict_proba needs class probabilities")
        return self._infer(X, ["probabilities"])["probabilities"]

    @property
    def classes(self) -> list[Any] | None:
        return self._meta().get("classes")

    def curl(self) -> str:
        """A copy-paste ``curl`` call of the endpoint with one example row."""
        example = {"inputs": self._meta().get("example", [])}
        import json

        return (f"curl -s -X POST {self.url}/infer -H 'Content-Type: application/json' "
                f"-d '{json.dumps(example)}'")

    def stop(self) -> None:
        """Stop serving this model; the server exits when it serves nothing else."""
        store = self._store
        store.set_serving(self.name, False)
        if not store.serving_models():
            process.stop_server(store)
        elif process.running_server(store):
            process.wait_applied(store, store.generation())

    def info(self) -> dict[str, Any]:
        meta = self._meta() if self.version is not None else {}
        return {
            "name": self.name, "version": self.version, "status": self.status, "url": self.url,
            "curl": self.curl() if self.url and meta else None, "task": meta.get("task"),
            "signature": meta.get("signature"), "fidelity": meta.get("fidelity"), "timings": self.timings,
            "gated": meta.get("gated", False),
        }

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from nbdeploy.widgets.card import card_bundle

        return card_bundle(self.info())

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r}, version={self.version}, url={self.url!r}, status={self.status!r})"


def deploy(model: Any, sample: Any, name: str, *, test: Any = None, home: str | None = None,
           port: int | None = None, force: bool = False) -> Deployment:
    """Convert ``model`` to ONNX, check it, store it as a new version, and serve it.

    ``sample`` fixes the input schema; ``test`` (``X`` or ``(X, y)``) is the held-out data
    the fidelity check runs on (default: the sample). Returns once the server answers with
    the new version.
    """
    started = time.perf_counter()
    check_name(name)
    check_fitted(model)
    store = Store(home)
    X_check = test[0] if isinstance(test, tuple) else test
    X_check = sample if X_check is None else X_check
    converted, fidelity = convert_checked(model, sample, X_check)
    if not fidelity.passed and not force:
        raise ConversionError(
            f"the ONNX model does not predict what the scikit-learn model predicts: {fidelity.summary()}; "
            f"rows that disagree: {fidelity.disagreeing_rows[:5]}. Use force=True (--force) to deploy anyway"
        )
    converted_at = time.perf_counter()
    meta = version_meta(converted, fidelity, sample)
    version = store.register(name, converted.onnx_bytes, meta)
    store.set_alias(name, PRODUCTION, version)
    store.set_serving(name, True)
    generation = store.generation()
    process.ensure_server(store, port)
    process.wait_applied(store, generation)
    state, error = store.served().get((name, version), ("missing", "the server did not load it"))
    if state != "ready":
        raise NbdeployError(f"the server could not load {name!r} version {version}: {error}", 500)
    done = time.perf_counter()
    timings = {"convert_s": converted_at - started, "serve_s": done - converted_at, "total_s": done - started}
    return Deployment(name=name, home=str(store.home), fidelity=fidelity, timings=timings)


def convert_checked(model: Any, sample: Any, X_check: Any) -> tuple[Converted, FidelityReport]:
    """Convert in single precision; fall back to double when only double is faithful."""
    import onnxruntime as ort

    task = task_of(model)
    signature = from_sample(sample)
    first: tuple[Converted, FidelityReport] | None = None
    for precision in ("FP32", "FP64"):
        try:
            converted = to_onnx(model, signature.with_float_type(precision))
        except ConversionError:
            if first is None and precision == "FP32":
                raise
            break
        session = ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])
        report = check(model, session, converted.signature, task, X_check, precision)
        if report.passed:
            return converted, report
        first = first or (converted, report)
        if not any(s.datatype in {"FP32", "FP64"} for s in signature.inputs):
            break
    assert first is not None
    return first


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
