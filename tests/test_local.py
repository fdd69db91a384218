"""``nbdeploy.load``: the stored model in-process, answering and refusing exactly as the endpoint does."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import nbdeploy
from nbdeploy.errors import InvalidInput, NbdeployError, NotFound
from nbdeploy.store import PRODUCTION, Store

pytestmark = pytest.mark.server


def pets() -> tuple[pd.DataFrame, np.ndarray]:
    """A text column, a number and string labels."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"kind": rng.choice(["cat", "dog", "fish"], 90), "age": rng.uniform(0, 15, 90).round(1)})
    y = np.where((X["kind"] == "dog") | (X["age"] > 10), "walks", "stays")
    return X, y


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, iris, diabetes) -> Iterator[dict]:
    """One server with a DataFrame classifier, an array regressor and a text + number classifier."""
    home = str(tmp_path_factory.mktemp("library"))
    Xi, _, iris_model = iris
    Xd, _, diabetes_model = diabetes
    Xp, yp = pets()
    pets_model = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["kind"]),
                                                       remainder="passthrough"), LogisticRegression()).fit(Xp, yp)
    deps = {
        "iris": (nbdeploy.deploy(iris_model, Xi, name="iris", home=home), Xi, iris_model),
        "diabetes": (nbdeploy.deploy(diabetes_model, Xd, name="diabetes", home=home), Xd, diabetes_model),
        "pets": (nbdeploy.deploy(pets_model, Xp, name="pets", home=home), Xp, pets_model),
    }
    yield {"home": home, **deps}
    nbdeploy.shutdown(home)


@pytest.mark.parametrize("name", ["iris", "diabetes", "pets"])
def test_load_answers_what_the_endpoint_answers(deployed, name):
    dep, X, model = deployed[name]
    predictor = nbdeploy.load(name, home=deployed["home"])
    rows = X.iloc[:40] if isinstance(X, pd.DataFrame) else X[:40]
    labels = predictor.predict(rows)
    # The endpoint's JSON carries float32 values in their shortest form: equal once read as float32.
    np.testing.assert_array_equal(labels, dep.predict(rows).astype(labels.dtype))
    if name == "diabetes":
        np.testing.assert_allclose(labels, model.predict(rows), rtol=1e-5)
    else:
        np.testing.assert_array_equal(labels, model.predict(rows))
        proba = predictor.predict_proba(rows)
        np.testing.assert_array_equal(proba, dep.predict_proba(rows).astype(proba.dtype))
        assert predictor.classes_.tolist() == dep.classes


@pytest.mark.parametrize("name", ["iris", "pets"])
def test_dataframe_models_take_records_dicts_and_arrays(deployed, name):
    _, X, _ = deployed[name]
    predictor = nbdeploy.load(name, home=deployed["home"])
    rows = X.iloc[:12]
    expected = predictor.predict(rows)
    np.testing.assert_array_equal(predictor.predict(rows.to_dict("records")), expected)
    np.testing.assert_array_equal(predictor.predict({c: rows[c].tolist() for c in rows.columns}), expected)
    np.testing.assert_array_equal(predictor.predict(rows.to_numpy()), expected)  # columns in order
    np.testing.assert_array_equal(predictor.predict(rows.values.tolist()), expected)
    np.testing.assert_array_equal(predictor.predict(rows.iloc[0].to_dict()), expected[:1])  # one record
    np.testing.assert_array_equal(predictor.predict(rows.to_numpy()[0]), expected[:1])  # one row


def test_missing_values_in_records_and_arrays(deployed):
    predictor = nbdeploy.load("pets", home=deployed["home"])
    from_frame = predictor.predict(pd.DataFrame({"kind": [None, "dog"], "age": [5.0, 3.0]}))
    np.testing.assert_array_equal(predictor.predict([{"kind": None, "age": 5}, {"kind": "dog", "age": 3.0}]),
                                  from_frame)
    np.testing.assert_array_equal(predictor.predict(np.array([[None, 5], ["dog", 3.0]], dtype=object)), from_frame)
    # a missing age would make the logistic regression answer NaN: refused, as the endpoint refuses it
    refused = r"input 'age': expected a number, got a missing value \(null/NaN\) at row 0"
    with pytest.raises(InvalidInput, match=refused):
        predictor.predict([{"kind": "dog", "age": None}])


@pytest.mark.parametrize(("name", "bad", "message"), [
    ("iris", lambda X: X.drop(columns=["petal width (cm)"]), "missing input 'petal width (cm)'"),
    ("iris", lambda X: X.to_numpy()[:, :3], "takes 4 columns"),
    ("diabetes", lambda X: X[:, :5], "expected shape [-1, 10], got [3, 5]"),
    ("pets", lambda X: X.assign(age="old").to_numpy(),
     "input 'age': expected numbers (FP32), got the text 'old' at row 0"),
])
def test_refuses_what_the_endpoint_refuses(deployed, name, bad, message):
    dep, X, _ = deployed[name]
    rows = bad(X.iloc[:3] if isinstance(X, pd.DataFrame) else X[:3])
    predictor = nbdeploy.load(name, home=deployed["home"])
    with pytest.raises(InvalidInput) as local:
        predictor.predict(rows)
    assert message in str(local.value)
    if isinstance(rows, pd.DataFrame) or name == "diabetes":  # what the kernel's client can send
        with pytest.raises(NbdeployError) as remote:
            dep.predict(rows)
        assert str(local.value) in str(remote.value)


def test_predict_proba_needs_a_classifier(deployed):
    _, X, _ = deployed["diabetes"]
    with pytest.raises(InvalidInput, match="no probabilities output"):
        nbdeploy.load("diabetes", home=deployed["home"]).predict_proba(X[:2])


@pytest.fixture
def versions(deployed, tmp_path) -> str:
    """A store with iris versions 1 (staging) and 2 (production), copied from the served store."""
    record = Store(deployed["home"]).version("iris", 1)
    store = Store(tmp_path / "versions")
    for _ in range(2):
        store.register("iris", record.onnx_bytes(), record.meta)
    store.set_alias("iris", PRODUCTION, 2)
    store.set_alias("iris", "staging", 1)
    return str(store.home)


def test_version_and_alias_select_what_is_loaded(versions):
    assert nbdeploy.load("iris", home=versions).version == 2
    assert nbdeploy.load("iris", alias="staging", home=versions).version == 1
    assert nbdeploy.load("iris", version=1, home=versions).version == 1
    assert nbdeploy.load("iris", version="2", home=versions).version == 2


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"name": "irsi"}, NotFound, "no model named 'irsi' (did you mean 'iris'?)"),
    ({"name": "iris", "version": 7}, NotFound, "has no version 7; versions: 1, 2"),
    ({"name": "iris", "version": "staging"}, InvalidInput, "for an alias, pass alias='staging'"),
    ({"name": "iris", "version": 1, "alias": "staging"}, InvalidInput, "not both"),
    ({"name": "iris", "alias": "canary"}, NotFound,
     "no 'canary' alias; versions: 1, 2; aliases: production -> 2, staging -> 1"),
    ({"name": "iris", "alias": "stagin"}, NotFound, "no 'stagin' alias (did you mean 'staging'?)"),
    ({"name": "iris", "alias": "2"}, InvalidInput, "for a version, pass version='2'"),
    ({"name": "iris", "version": True}, InvalidInput, "a version is a number or an alias name, got True"),
])
def test_errors_are_one_line_and_name_the_fix(versions, kwargs, error, message):
    with pytest.raises(error) as exc:
        nbdeploy.load(home=versions, **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_no_store_is_not_created(tmp_path):
    with pytest.raises(NotFound, match="no nbdeploy store at"):
        nbdeploy.load("iris", home=tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_a_url_is_not_taken_for_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput, match="home is a mysql:// URL") as exc:
        nbdeploy.load("iris", home="mysql://user:secret@db/models")
    assert "secret" not in str(exc.value)  # a database URL may carry a password
    assert list(tmp_path.iterdir()) == []


def test_repr_names_the_version_and_inputs(deployed):
    text = repr(nbdeploy.load("iris", home=deployed["home"]))
    assert text.startswith("OnnxPredictor(name='iris', version=1, task='classification'")
    assert "sepal length (cm)" in text and "'probabilities'" in text


def test_log_puts_library_calls_in_the_prediction_log(deployed):
    _, X, _ = deployed["iris"]
    predictor = nbdeploy.load("iris", home=deployed["home"], log=True)
    predictor.predict(X.iloc[:5])
    first = predictor.last_id
    predictor.predict_proba(X.iloc[:1])
    second = predictor.last_id
    with pytest.raises(InvalidInput):
        predictor.predict(X.iloc[:2, :3])
    failed = predictor.last_id
    assert predictor.flush()
    with sqlite3.connect(Path(deployed["home"]) / "log.db") as db:
        rows = db.execute("SELECT id, model, version, status, label FROM predictions ORDER BY seq").fetchall()
    ours = [r for r in rows if r[0].split(":")[0] in {first, second, failed}]
    assert [r[0] for r in ours[:5]] == [f"{first}:{i}" for i in range(5)]
    assert {(r[1], r[2]) for r in ours} == {("iris", 1)}
    assert [r[3] for r in ours] == [200] * 6 + [400]
    assert [r[4] for r in ours[:6]] == [*predictor.predict(X.iloc[:5]).tolist(), predictor.predict(X.iloc[:1])[0]]


LIGHT = """
import json, sys
import numpy as np
from nbdeploy import load
iris, pets = load("iris", home=sys.argv[1]), load("pets", home=sys.argv[1])
labels = [iris.predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist(),
          pets.predict(np.array([["dog", 3.0], [None, 12.5]], dtype=object)).tolist()]
heavy = ["pandas", "sklearn", "scipy", "IPython", "ipywidgets", "matplotlib", "skl2onnx", "onnx", "jupyter_server"]
print(json.dumps({"labels": labels, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def test_load_and_predict_on_arrays_import_nothing_heavy(deployed):
    """No scikit-learn, IPython or pandas: only numpy, ONNX Runtime and the standard library."""
    out = subprocess.run([sys.executable, "-c", LIGHT, deployed["home"]], capture_output=True, text=True,
                         check=True, timeout=120)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert result["labels"] == [[0], ["walks", "walks"]]
