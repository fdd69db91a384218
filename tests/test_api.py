"""The Python API end to end: deploy, redeploy, reattach from a new process, stop."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

import nbdeploy
from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.serve.process import pid_alive
from nbdeploy.store import Store

pytestmark = pytest.mark.server


def test_deploy_predicts_through_the_endpoint_like_the_model(tmp_path, iris):
    X, _, model = iris
    dep = nbdeploy.deploy(model, X, name="iris", home=str(tmp_path))
    try:
        assert dep.version == 1 and dep.status == "ready"
        assert dep.url.startswith("http://127.0.0.1:") and dep.url.endswith("/v2/models/iris")
        np.testing.assert_array_equal(dep.predict(X), model.predict(X))
        np.testing.assert_allclose(dep.predict_proba(X.head(10)), model.predict_proba(X.head(10)), atol=1e-5)
        assert dep.fidelity.passed and dep.fidelity.agreement == 1.0
        assert dep.classes == [0, 1, 2]
    finally:
        nbdeploy.shutdown(str(tmp_path))


def test_the_curl_example_works(tmp_path, iris):
    X, _, model = iris
    dep = nbdeploy.deploy(model, X, name="iris", home=str(tmp_path))
    try:
        out = subprocess.run(dep.curl(), shell=True, capture_output=True, text=True, check=True).stdout
        assert json.loads(out)["outputs"][0]["data"] == model.predict(X.head(1)).tolist()
    finally:
        nbdeploy.shutdown(str(tmp_path))


def test_redeploy_makes_version_2_and_the_endpoint_serves_it(tmp_path, iris):
    X, y, first = iris
    home = str(tmp_path)
    dep1 = nbdeploy.deploy(first, X, name="iris", home=home)
    try:
        pid = Store(home).server().pid
        tree = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)  # predicts only two classes
        dep2 = nbdeploy.deploy(tree, X, name="iris", home=home)
        assert dep2.version == 2 and dep1.version == 2  # a handle follows the name
        assert Store(home).server().pid == pid  # same server, no restart
        np.testing.assert_array_equal(dep1.predict(X), tree.predict(X))
    finally:
        nbdeploy.shutdown(home)


def test_a_new_process_finds_the_running_server_and_its_deployments(tmp_path, iris, diabetes):
    X, _, model = iris
    home = str(tmp_path)
    nbdeploy.deploy(model, X, name="iris", home=home)
    try:
        code = (
            "import json, nbdeploy; deps = nbdeploy.deployments(); "
            "print(json.dumps([[d.name, d.version, d.status, d.url] for d in deps]))"
        )
        env = {**os.environ, "NBDEPLOY_HOME": home}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        [[name, version, status, url]] = json.loads(out.stdout)
        assert (name, version, status) == ("iris", 1, "ready")
        assert url == nbdeploy.get("iris", home=home).url
    finally:
        nbdeploy.shutdown(home)


def test_stopping_the_last_model_stops_the_server(tmp_path, iris):
    X, _, model = iris
    home = str(tmp_path)
    dep = nbdeploy.deploy(model, X, name="iris", home=home)
    pid = Store(home).server().pid
    dep.stop()
    assert not pid_alive(pid)
    assert nbdeploy.deployments(home) == []
    assert dep.status == "stopped"


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (LogisticRegression(), "not fitted"),
        (object(), "expected a fitted scikit-learn estimator"),
    ],
)
def test_bad_models_are_refused_before_anything_is_stored(tmp_path, iris, model, needle):
    X, _, _ = iris
    with pytest.raises(InvalidInput, match=needle):
        nbdeploy.deploy(model, X, name="iris", home=str(tmp_path))
    assert Store(tmp_path).model_names() == []


def test_a_handle_reads_its_store_once_and_asks_the_server_only_for_status(tmp_path, iris, monkeypatch):
    X, _, model = iris
    home = str(tmp_path)
    dep = nbdeploy.deploy(model, X, name="iris", home=home)
    try:
        dep.predict(X.head(1))
        opened, probes = [], []
        monkeypatch.setattr("nbdeploy.deployment.Store", lambda *a: opened.append(a) or Store(*a))
        real_live = nbdeploy.serve.process._live
        monkeypatch.setattr("nbdeploy.serve.process._live", lambda *a, **k: probes.append(a) or real_live(*a, **k))
        for _ in range(3):
            dep.predict(X.head(1))
        labels, ids = dep.predict(X.head(2), return_ids=True)
        assert dep.feedback(ids, labels)["accepted"] == 2
        assert opened == [] and probes == []
        assert dep.status == "ready" and len(probes) == 1
        copy = pickle.loads(pickle.dumps(dep))  # the store is reopened, not pickled
        np.testing.assert_array_equal(copy.predict(X.head(3)), model.predict(X.head(3)))
    finally:
        nbdeploy.shutdown(home)
    with pytest.raises(NbdeployError, match=r"the server for 'iris' is not running; serve it again with "
                                            r"nbdeploy.get\('iris'\).serve\(\)"):
        dep.predict(X.head(1))


def test_autoscale_is_parsed_by_the_api():
    from nbdeploy.api import parse_autoscale

    assert parse_autoscale("1,4") == {"min_replicas": 1, "max_replicas": 4}
    assert parse_autoscale(None) is None
    for bad in ("4", "a,b", "3,1", "0,0", "1,2,3"):
        with pytest.raises(InvalidInput, match="autoscale"):
            parse_autoscale(bad)
