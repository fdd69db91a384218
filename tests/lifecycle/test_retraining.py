"""The retrain loop: drifted traffic, delayed labels, a fresh clone judged on recent labels, a swap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

import nbdeploy
from nbdeploy.errors import InvalidInput
from nbdeploy.lifecycle.artifacts import load_estimator
from nbdeploy.store import Store

pytestmark = pytest.mark.server


def world(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """The label bends away from x1 > 0 beyond x0 = 1.5; a shift moves traffic into the bend."""
    X = rng.normal(size=(n, 3))
    X[:, 0] += shift
    y = (X[:, 1] > np.where(X[:, 0] > 1.5, 2 * (X[:, 0] - 1.5), 0.0)).astype(int)
    return pd.DataFrame(X, columns=["x0", "x1", "x2"]), y


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    rng = np.random.default_rng(0)
    home = str(tmp_path_factory.mktemp("retrain"))
    X, y = world(rng, 1200)
    run = nbdeploy.train(HistGradientBoostingClassifier(max_iter=40), X, y, "bend", home=home)
    dep = nbdeploy.deploy(run.model, X, "bend", home=home)
    accuracy, pending = [], []
    for shift in (0.0, 0.0, 3.0, 3.0, 3.0):
        Xb, yb = world(rng, 200, shift)
        pred, ids = dep.predict(Xb, return_ids=True)
        accuracy.append(float((pred == yb).mean()))
        pending.append((ids, yb))
        if len(pending) > 1:  # labels arrive one batch late
            dep.feedback(*pending.pop(0))
    dep.feedback(*pending.pop(0))
    yield {"home": home, "dep": dep, "accuracy": accuracy, "rng": rng, "run": run}
    nbdeploy.shutdown(home)


def test_drift_drops_accuracy_and_the_monitor_says_so(drifted):
    before, after = np.mean(drifted["accuracy"][:2]), np.mean(drifted["accuracy"][2:])
    assert before > 0.95 and after < 0.92
    snapshot = drifted["dep"].health()
    assert snapshot["alert"]["level"] in {"WARN", "ALERT"}
    assert "x0" in snapshot["drift"]["drifted_features"]


def test_retrain_with_feedback_is_promoted_and_accuracy_recovers(drifted):
    home, dep = drifted["home"], drifted["dep"]
    pid = Store(home).server().pid
    without = nbdeploy.retrain("bend", home=home)  # training rows only: not promoted
    assert not without.promoted and without.n_feedback_train == 0
    assert "not promoted: " in without.summary()
    assert dep.version == 1
    result = nbdeploy.retrain("bend", with_feedback=True, promote=True, home=home)
    assert result.promoted and result.decision.passed and result.version == 3
    assert result.decision.challenger_score > result.decision.champion_score
    assert result.n_feedback_train + result.n_recent == 1000 and result.n_recent == 300
    Xb, yb = world(drifted["rng"], 400, 3.0)
    assert (dep.predict(Xb) == yb).mean() > 0.95
    assert dep.version == 3 and Store(home).server().pid == pid


def test_the_stored_estimator_round_trips_through_skops(drifted):
    store = Store(drifted["home"])
    restored = load_estimator(store.version("bend", 1))
    X, _ = world(np.random.default_rng(1), 50)
    np.testing.assert_array_equal(restored.predict(X), drifted["run"].model.predict(X))


def test_retrain_without_any_training_data_says_what_to_pass(tmp_path):
    X, y = world(np.random.default_rng(2), 100)
    model = LogisticRegression().fit(X, y)
    nbdeploy.deploy(model, X, "plain", home=str(tmp_path))
    try:
        with pytest.raises(InvalidInput, match=r"pass data=\(X, y\)"):
            nbdeploy.retrain("plain", home=str(tmp_path))
        result = nbdeploy.retrain("plain", data=(X, y), promote=True, home=str(tmp_path))
        assert result.version == 2 and not result.promoted and result.decision is None
        assert "no recent labelled traffic to judge it on" in result.summary()
        assert nbdeploy.get("plain", home=str(tmp_path)).version == 1
    finally:
        nbdeploy.shutdown(str(tmp_path))
