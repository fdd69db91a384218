"""Train, test, the registry's aliases and the promotion gate, from plain Python (no IPython)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

import nbdeploy
from nbdeploy.errors import InvalidInput, NotFound
from nbdeploy.store import Store

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def cancer():
    return load_breast_cancer(return_X_y=True, as_frame=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, cancer):
    """v1 a shallow tree, v2 a worse stump (refused), v3 a better scaled logistic regression."""
    X, y = cancer
    home = str(tmp_path_factory.mktemp("registry"))
    runs = {
        "v1": nbdeploy.train(DecisionTreeClassifier(max_depth=2), X, y, "cancer", stratify=True, home=home),
        "worse": nbdeploy.train(DecisionTreeClassifier(max_depth=1), X, y, "cancer", stratify=True, home=home),
        "better": nbdeploy.train(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), X, y,
                                 "cancer", stratify=True, home=home),
    }
    first = nbdeploy.deploy(runs["v1"].model, X, "cancer", home=home)
    with pytest.raises(nbdeploy.GateRefused) as refused:
        nbdeploy.deploy(runs["worse"].model, X, "cancer", home=home)
    third = nbdeploy.deploy(runs["better"].model, X, "cancer", home=home)
    yield {"home": home, "runs": runs, "first": first, "refused": refused.value, "third": third, "X": X, "y": y}
    nbdeploy.shutdown(home)


def test_train_records_a_run_with_held_out_metrics(registry):
    runs = Store(registry["home"]).runs("cancer")
    assert len(runs) == 3
    assert runs[0]["evaluation"]["metrics"]["accuracy"] == pytest.approx(registry["runs"]["v1"].score)
    assert runs[0]["fingerprint"] == runs[1]["fingerprint"]  # same data, same split
    assert set(runs[0]["profile"]["features"]) == set(registry["X"].columns)


def test_worse_candidate_is_refused_with_both_figures_and_stays_registered(registry):
    refused = registry["refused"]
    decision = refused.decision
    assert not decision.passed and refused.version == 2
    assert decision.champion_score == pytest.approx(registry["runs"]["v1"].score)
    assert decision.challenger_score == pytest.approx(registry["runs"]["worse"].score)
    html = refused._repr_html_()
    assert f"{decision.champion_score:.4f}" in html and f"{decision.challenger_score:.4f}" in html
    store = Store(registry["home"])
    assert store.version("cancer", 2).status == "refused"


def test_better_candidate_is_promoted_and_served_without_restart(registry):
    store = Store(registry["home"])
    assert registry["third"].gate.passed
    assert store.aliases("cancer")["production"] == 3
    X = registry["X"]
    np.testing.assert_array_equal(registry["third"].predict(X), registry["runs"]["better"].model.predict(X))
    table = nbdeploy.models(registry["home"])
    assert table["cancer"]["versions"] == [1, 2, 3] and table["cancer"]["refused"] == [2]
    assert table["cancer"]["metric"] == "accuracy" and table["cancer"]["score"] > 0.95


def test_rollback_and_promote_move_production(registry):
    home, X = registry["home"], registry["X"]
    pid = Store(home).server().pid
    assert nbdeploy.rollback("cancer", home=home).version == 1
    np.testing.assert_array_equal(nbdeploy.get("cancer", home=home).predict(X), registry["runs"]["v1"].model.predict(X))
    with pytest.raises(InvalidInput, match="no earlier production version"):
        nbdeploy.rollback("cancer", home=home)
    with pytest.raises(nbdeploy.GateRefused):
        nbdeploy.promote("cancer", 2, home=home)
    assert nbdeploy.promote("cancer", 3, home=home).version == 3
    assert nbdeploy.promote("cancer", 1, alias="staging", home=home).version == 3  # staging is not served
    assert Store(home).aliases("cancer") == {"production": 3, "staging": 1}
    assert Store(home).server().pid == pid  # every move without a restart


def test_alias_and_version_routes(registry):
    import httpx

    url = nbdeploy.get("cancer", home=registry["home"]).url
    assert httpx.get(f"{url}/versions/staging").json()["versions"] == ["1"]
    assert httpx.get(f"{url}/versions/production").json()["versions"] == ["3"]


def test_the_gate_can_be_loosened_or_tightened(registry):
    home, X = registry["home"], registry["X"]
    stump = registry["runs"]["worse"]
    dep = nbdeploy.deploy(stump.model, X, "cancer", test=(stump.X_test, stump.y_test), tolerance=0.2, home=home)
    assert dep.version == 4 and dep.gate.passed
    with pytest.raises(nbdeploy.GateRefused, match=r"floor|min"):
        nbdeploy.promote("cancer", 3, min_score=0.999, home=home)
    nbdeploy.promote("cancer", 3, home=home)


def test_test_a_stored_version_as_served_or_a_fitted_model(registry):
    run, home = registry["runs"]["better"], registry["home"]
    for version in (3, "3", None, "production"):
        result = nbdeploy.api.test("cancer", run.X_test, run.y_test, version=version, home=home)
        assert result.score == pytest.approx(run.score, abs=1e-9)
    fitted = nbdeploy.api.test(run.model, run.X_test, run.y_test, name="better")
    assert fitted.score == pytest.approx(run.score, abs=1e-9)
    with pytest.raises(NotFound, match="did you mean 'cancer'"):
        nbdeploy.api.test("cancr", run.X_test, run.y_test, home=home)
    with pytest.raises(NotFound, match="no 'canary' alias"):
        nbdeploy.api.test("cancer", run.X_test, run.y_test, version="canary", home=home)
    with pytest.raises(InvalidInput, match="applies to a stored model"):
        nbdeploy.api.test(run.model, run.X_test, run.y_test, version=3)
