"""The estimator kept for retraining: loaded only as registered (sha256) and only with the exact types
recorded when it was saved; a file that would run code in the kernel is refused, naming the type."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from nbdeploy.lifecycle.artifacts import ESTIMATOR_FILE, UntrustedEstimator, load_estimator
from nbdeploy.lifecycle.registration import register
from nbdeploy.lifecycle.retraining import retrain
from nbdeploy.store import PRODUCTION, IntegrityError, Store


def data(n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"amount": rng.exponential(50, n), "age": rng.uniform(18, 80, n),
                      "plan": rng.choice(["free", "pro", "team"], n)})
    return X, ((np.log1p(X["amount"]) > 3.7) ^ (X["plan"] == "team")).to_numpy(int)


def pipeline(final: Any) -> Pipeline:
    """What users write: defaults first (OneHotEncoder refuses unknown categories by default)."""
    prep = ColumnTransformer([("log", FunctionTransformer(np.log1p), ["amount"]),
                              ("plan", OneHotEncoder(), ["plan"])], remainder="passthrough")
    return Pipeline([("prep", prep), ("model", final)])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict[str, Any]:
    """A store with the pipeline registered as version 1 of 'churn', in production (no server)."""
    home = tmp_path_factory.mktemp("artifacts")
    store = Store(home)
    X, y = data()
    model = pipeline(HistGradientBoostingClassifier(max_iter=20)).fit(X, y)
    version = register(model, X, "churn", store=store, train_data=(X, y)).version
    store.set_alias("churn", PRODUCTION, version)
    return {"home": home, "store": store, "model": model, "X": X, "y": y, "record": store.version("churn", version)}


def reduce_to(module: str, name: str, *args: str) -> dict[str, Any]:
    """A skops node that calls ``module.name(*args)`` when the file is loaded."""
    schema = json.loads(zipfile.ZipFile(io.BytesIO(sio.dumps(tuple(args)))).read("schema.json"))
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {k: v for k, v in schema.items() if k not in ("protocol", "_skops_version")}}


def with_log1p_replaced(data: bytes, node: dict[str, Any]) -> bytes:
    """The same skops file with the pipeline's ``numpy.log1p`` swapped for ``node``."""
    schema = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json"))

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("__loader__") == "FunctionNode" and value.get("__class__") == "log1p":
                return node
            return {k: swap(v) for k, v in value.items()}
        return [swap(v) for v in value] if isinstance(value, list) else value

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, json.dumps(swap(schema)) if item == "schema.json" else src.read(item))
    return out.getvalue()


def store_version(store: Store, record: Any, estimator: bytes, types: list[str]) -> int:
    """A version registered through the store with ``estimator`` and a record claiming ``types`` (as a
    store written by someone else could hold): its checksum is right, so only the type check is left."""
    meta = {k: v for k, v in record.meta.items() if k not in ("name", "version", "sha256", "files")}
    meta["estimator"] = {"types": types}
    version = store.register(record.name, record.onnx_bytes(), meta, files={ESTIMATOR_FILE: estimator})
    store.set_alias(record.name, PRODUCTION, version)
    return version


@pytest.mark.parametrize("final", [HistGradientBoostingClassifier(max_iter=20), LogisticRegression(max_iter=500)],
                         ids=["hist-gradient-boosting", "logistic-regression"])
def test_a_normal_pipeline_round_trips_and_retrains(tmp_path, final):
    X, y = data()
    model = pipeline(final).fit(X, y)
    store = Store(tmp_path)
    record = store.version("churn", register(model, X, "churn", store=store, train_data=(X, y)).version)
    store.set_alias("churn", PRODUCTION, record.version)
    recorded = record.meta["estimator"]["types"]
    assert all(t.startswith("sklearn.") for t in recorded)  # numpy.log1p and the estimators are skops defaults
    restored = load_estimator(record)
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))
    np.testing.assert_allclose(restored.predict_proba(X), model.predict_proba(X))
    assert retrain("churn", data=(X, y), home=str(tmp_path)).version == 2


def test_an_estimator_changed_after_registration_is_refused_by_its_checksum(deployed, tmp_path):
    record = deployed["record"]
    path = record.path / ESTIMATOR_FILE
    original = path.read_bytes()
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('code ran in the kernel')"
    path.write_bytes(with_log1p_replaced(original, reduce_to("builtins", "exec", code)))
    try:
        with pytest.raises(IntegrityError, match=r"estimator\.skops does not match its recorded sha256"):
            load_estimator(record)
        with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
            retrain("churn", data=(deployed["X"], deployed["y"]), home=str(deployed["home"]))
        assert not marker.exists()
    finally:
        path.write_bytes(original)
    assert load_estimator(record).predict(deployed["X"]).tolist() == deployed["model"].predict(deployed["X"]).tolist()


@pytest.mark.parametrize(("module", "name", "command"), [
    ("builtins", "exec", "open({marker!r}, 'w').write('code ran in the kernel')"),
    ("builtins", "eval", "open({marker!r}, 'w').write('code ran in the kernel')"),
    ("os", "system", "touch {marker}"),
])
def test_a_file_that_would_run_code_is_refused_naming_the_type(deployed, tmp_path, module, name, command):
    store, record = deployed["store"], deployed["record"]
    marker = tmp_path / "ran"
    evil = with_log1p_replaced(record.file_bytes(ESTIMATOR_FILE),
                               reduce_to(module, name, command.format(marker=str(marker))))
    version = store_version(store, record, evil, [*record.meta["estimator"]["types"], f"{module}.{name}"])
    try:
        with pytest.raises(UntrustedEstimator, match=rf"holds types nbdeploy does not load: {module}\.{name};"):
            load_estimator(store.version("churn", version))
        with pytest.raises(UntrustedEstimator, match=rf"{module}\.{name}"):
            retrain("churn", data=(deployed["X"], deployed["y"]), home=str(deployed["home"]))
        assert not marker.exists()
    finally:
        store.set_alias("churn", PRODUCTION, record.version)


def double(x: Any) -> Any:
    return x * 2


def test_a_valid_file_holding_a_type_that_was_not_recorded_is_refused(deployed):
    store, record = deployed["store"], deployed["record"]
    X, y = deployed["X"], deployed["y"]
    other = Pipeline([("prep", ColumnTransformer([("twice", FunctionTransformer(double), ["age"])])),
                      ("model", LogisticRegression())]).fit(X, y)
    version = store_version(store, record, sio.dumps(other), record.meta["estimator"]["types"])
    try:
        with pytest.raises(UntrustedEstimator, match=r"does not load: test_artifacts\.double;") as exc:
            load_estimator(store.version("churn", version))
        assert "skops.io.load(" in str(exc.value) and "\n" not in str(exc.value)
    finally:
        store.set_alias("churn", PRODUCTION, record.version)


def test_an_estimator_without_a_recorded_checksum_is_not_read(deployed):
    store, record = deployed["store"], deployed["record"]
    meta = {k: v for k, v in record.meta.items() if k not in ("name", "version", "sha256", "files")}
    version = store.register("churn", record.onnx_bytes(), meta)  # no extra files: nothing recorded
    bare = store.version("churn", version)
    Path(bare.path / ESTIMATOR_FILE).write_bytes(record.file_bytes(ESTIMATOR_FILE))  # put there afterwards
    with pytest.raises(IntegrityError, match="has no sha256 recorded in the registry"):
        load_estimator(bare)
