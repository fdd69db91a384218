"""monitor/estimate.py: quality estimated without labels (CBPE, DLE), through the public functions, the
monitor over a real log, the alerts, and end to end through a real server, its log and feedback."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import nbdeploy
from nbdeploy.lifecycle.estimation import fit_calibration, fit_loss_model
from nbdeploy.monitor import evaluate_alerts
from nbdeploy.monitor.estimate import estimate_accuracy, estimate_binary, estimate_mae, estimated_quality
from nbdeploy.store import open_store
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog
from nbdeploy.store.reader import LogReader

COEF = np.array([4.0, -2.5, 1.5, 0.0])
REFERENCE = np.array([1.0, -0.5, 0.0, 0.0])
WINDOW = 500


def rows(rng: np.random.Generator, n: int, mean: np.ndarray = REFERENCE, coef: np.ndarray = COEF):
    """Inputs around ``mean``; labels drawn from a logistic p(y | x), so a logistic regression is calibrated."""
    X = rng.normal(mean, 1.0, (n, len(mean)))
    return X, (rng.random(n) < 1 / (1 + np.exp(-(X @ coef)))).astype(int)


@pytest.fixture(scope="module")
def fitted():
    """A logistic regression, and its calibration fitted on 2,000 held-out reference rows."""
    rng = np.random.default_rng(1)
    model = LogisticRegression().fit(*rows(rng, 5_000))
    X_h, y_h = rows(rng, 2_000)
    return model, fit_calibration(model.predict_proba(X_h), y_h, [0, 1]), (X_h, y_h)


def shifted_windows(model, seed: int, *, concept: bool = False):
    """Windows of 500 predictions while the inputs move to the decision boundary (or p(y | x) turns)."""
    rng = np.random.default_rng(seed)
    for step in range(10):
        f = step / 9
        mean, coef = (REFERENCE, COEF * [1, 1 - 2.5 * f, 1, 0] + [0, 0, 0, 2 * f]) if concept else (
            REFERENCE * (1 - f), COEF)
        X, y = rows(rng, WINDOW, mean, coef)
        yield model.predict_proba(X), model.predict(X), y


# -- classifiers: CBPE ------------------------------------------------------------------------
def test_cbpe_follows_accuracy_under_covariate_shift(fitted) -> None:
    model, calibration, _ = fitted
    errors, realised = [], []
    for proba, pred, y in shifted_windows(model, seed=10):
        est = estimate_accuracy(proba, calibration)
        realised.append((pred == y).mean())
        errors.append(abs(est["value"] - realised[-1]))
        assert est["n"] == WINDOW and est["low"] < est["value"] < est["high"] <= 1.0
    assert realised[0] - realised[-1] > 0.04  # the shift does cost accuracy ...
    assert max(errors) <= 0.03 and np.mean(errors) < 0.015  # ... and the estimate follows it


def test_on_the_held_out_rows_the_estimate_is_the_held_out_accuracy(fitted) -> None:
    model, calibration, (X_h, y_h) = fitted
    est = estimate_accuracy(model.predict_proba(X_h), calibration)
    # not exact: a calibration step may straddle the decision threshold
    assert est["value"] == pytest.approx((model.predict(X_h) == y_h).mean(), abs=0.005)
    assert calibration["reference"] == (model.predict(X_h) == y_h).mean()
    json.dumps(calibration, allow_nan=False)  # stored in model.json as plain JSON


def test_binary_models_get_expected_roc_auc_and_f1(fitted) -> None:
    model, calibration, _ = fitted
    proba, pred, y = list(shifted_windows(model, seed=12))[6]
    binary = estimate_binary(proba, calibration)
    assert binary["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]), abs=0.03)
    assert binary["f1"] == pytest.approx(f1_score(y, pred), abs=0.04)


def test_multiclass_models_are_calibrated_per_class() -> None:
    X, y = load_wine(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    fit, held = order[:90], order[90:]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(X[fit], y[fit])
    calibration = fit_calibration(model.predict_proba(X[held]), y[held], [0, 1, 2])
    assert len(calibration["curves"]) == 3
    est = estimate_accuracy(model.predict_proba(X[held]), calibration)
    assert est["value"] == pytest.approx((model.predict(X[held]) == y[held]).mean(), abs=0.02)
    assert estimate_binary(model.predict_proba(X[held]), calibration) is None


def test_concept_drift_is_where_cbpe_fails(fitted) -> None:
    """p(y | x) changes: the calibration no longer holds, the estimate stays while accuracy falls."""
    model, calibration, _ = fitted
    *_, (proba, pred, y) = shifted_windows(model, seed=13, concept=True)
    assert estimate_accuracy(proba, calibration)["value"] - (pred == y).mean() > 0.15


def test_an_empty_window_and_probabilities_of_another_model() -> None:
    calibration = {"classes": [0, 1], "curves": [{"x": [0.0, 1.0], "y": [0.0, 1.0]}]}
    assert estimate_accuracy(np.zeros((0, 2)), calibration) == {"value": None, "low": None, "high": None, "n": 0}
    with pytest.raises(ValueError, match="expected probabilities of 2 classes"):
        estimate_accuracy(np.full((4, 3), 1 / 3), calibration)


# -- regressors: DLE --------------------------------------------------------------------------
def regression_rows(rng: np.random.Generator, n: int, shift: float):
    X = np.column_stack([rng.normal(0, 1, n), rng.normal(shift, 1, n)])
    return X, 3 * X[:, 0] + rng.normal(0, 0.5 + np.abs(X[:, 1]), n)  # noisier as |x1| grows


def test_dle_follows_mae_as_inputs_move_into_a_noisier_region() -> None:
    rng = np.random.default_rng(2)
    model = LinearRegression().fit(*regression_rows(rng, 5_000, 0.0))
    X_h, y_h = regression_rows(rng, 2_000, 0.0)
    loss_model = fit_loss_model({"x0": X_h[:, 0], "x1": X_h[:, 1]}, model.predict(X_h), y_h)
    held = estimate_mae({"x0": X_h[:, 0], "x1": X_h[:, 1]}, model.predict(X_h), loss_model)
    assert held["value"] == pytest.approx(np.abs(y_h - model.predict(X_h)).mean())
    for shift in (0.0, 1.0):
        X, y = regression_rows(rng, WINDOW, shift)
        est = estimate_mae({"x0": X[:, 0], "x1": X[:, 1]}, model.predict(X), loss_model)
        assert est["value"] == pytest.approx(np.abs(y - model.predict(X)).mean(), rel=0.08)
    assert est["value"] > 1.1 * held["value"]  # the shift shows before any label
    missing = estimate_mae({"x0": X[:, 0]}, model.predict(X), loss_model)  # x1 absent: the held-out median
    assert missing["n"] == WINDOW and missing["value"] < est["value"]


# -- the monitor over a real log --------------------------------------------------------------
def log_window(home: Path, model, n: int, *, seed: int, labelled: int = 0,
               coef: np.ndarray = COEF) -> tuple[np.ndarray, np.ndarray]:
    """``n`` predictions of ``model`` in the log of ``home`` (one request each), the first ``labelled`` with
    feedback (drawn with ``coef``); returns their probabilities and the realised correctness."""
    log = PredictionLog(home, start=False)
    X, y = rows(np.random.default_rng(seed), n, REFERENCE * 0.3, coef)
    proba, pred = model.predict_proba(X).astype(np.float32), model.predict(X)
    log.write([PredictionEvent(id=f"{seed}-{i}", ts=1000.0 + i, model="m", version=1,
                               inputs={f"x{j}": X[i, j:j + 1] for j in range(4)},
                               outputs={"label": pred[i:i + 1], "probabilities": proba[i:i + 1]}, latency_ms=1.0,
                               status=200, error=None) for i in range(n)])
    if labelled:
        log.feedback("m", [{"id": f"{seed}-{i}", "label": int(y[i])} for i in range(labelled)])
    log.close()
    return proba, pred == y


def test_the_monitor_estimates_the_last_window_and_a_series(tmp_path: Path, fitted) -> None:
    model, calibration, _ = fitted
    proba, _ = log_window(tmp_path, model, 1_250, seed=5)
    notes: list[str] = []
    with LogReader(tmp_path) as reader:
        est = estimated_quality(reader, "m", 1, {"estimation": calibration}, window=WINDOW, windows=10, notes=notes)
    assert set(est) == {"metric", "value", "low", "high", "n", "window", "realised", "series", "binary", "note"}
    assert (est["metric"], est["n"], est["window"], est["realised"], est["note"]) == ("accuracy", WINDOW, WINDOW,
                                                                                      None, None)
    assert est["value"] == pytest.approx(estimate_accuracy(proba[-WINDOW:], calibration)["value"], abs=1e-6)
    assert [s["n"] for s in est["series"]] == [WINDOW, WINDOW]  # whole windows, ending at the newest
    assert est["series"][-1]["t"] == 1000.0 + 1_249 and est["series"][-1]["value"] == pytest.approx(est["value"])
    assert set(est["series"][0]) == {"t", "value", "low", "high", "n"}
    assert set(est["binary"]) == {"roc_auc", "f1"} and not notes
    json.dumps(est, allow_nan=False)


def test_realised_accuracy_appears_beside_the_estimate_with_enough_labels(tmp_path: Path, fitted) -> None:
    model, calibration, _ = fitted
    _, correct = log_window(tmp_path, model, WINDOW, seed=6, labelled=WINDOW)
    with LogReader(tmp_path) as reader:
        est = estimated_quality(reader, "m", 1, {"estimation": calibration}, window=WINDOW, windows=2, notes=[])
    assert est["realised"] == pytest.approx(correct.mean()) and abs(est["value"] - est["realised"]) <= 0.03


def test_labels_outside_the_band_point_at_concept_drift(tmp_path: Path, fitted) -> None:
    model, calibration, _ = fitted
    log_window(tmp_path, model, WINDOW, seed=8, labelled=100, coef=COEF * [1, -1, 1, 0])  # p(y | x) turned
    with LogReader(tmp_path) as reader:
        est = estimated_quality(reader, "m", 1, {"estimation": calibration}, window=WINDOW, windows=2, notes=[])
    assert est["realised"] < est["low"] and "concept drift" in est["note"]


def test_a_version_without_an_estimation_model_says_why(tmp_path: Path, fitted) -> None:
    log_window(tmp_path, fitted[0], 10, seed=7)
    notes: list[str] = []
    with LogReader(tmp_path) as reader:
        assert estimated_quality(reader, "m", 1, {"task": "classification"}, window=WINDOW, windows=2,
                                 notes=notes) is None
    assert "version 1 has no estimation model" in notes[0]


# -- alerts -----------------------------------------------------------------------------------
def estimate(value: float, n: int = 500, metric: str = "accuracy") -> dict:
    return {"metric": metric, "value": value, "low": value - 0.02, "high": value + 0.02, "n": n}


def test_without_labels_the_estimate_is_graded_against_the_baseline() -> None:
    baseline = {"accuracy": 0.94, "mae": 1.0}
    assert evaluate_alerts(baseline=baseline, estimated=estimate(0.93)).components["estimated"] == "OK"
    status = evaluate_alerts(baseline=baseline, estimated=estimate(0.80))
    assert status.level == "ALERT" and "estimated accuracy 0.800" in status.reasons[0]
    assert evaluate_alerts(baseline=baseline, estimated=estimate(1.15, metric="mae")).level == "WARN"


def test_realised_quality_decides_and_few_rows_are_not_judged() -> None:
    baseline = {"accuracy": 0.94}
    status = evaluate_alerts(baseline=baseline, quality={"accuracy": 0.93, "n": 100}, estimated=estimate(0.80))
    assert status.level == "OK" and status.components["estimated"] == "n/a"
    status = evaluate_alerts(baseline=baseline, estimated=estimate(0.80, n=50))
    assert status.level == "OK" and "estimated quality not judged: 50 predictions < 200" in status.notes


# -- end to end: a real server, its log, feedback ---------------------------------------------
@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    """A classifier (DataFrame inputs) and a regressor (an array), each deployed with labelled held-out rows."""
    home = str(tmp_path_factory.mktemp("estimate"))
    columns = ["a", "b", "c", "d"]
    rng = np.random.default_rng(3)
    X, y = rows(rng, 5_000)
    model = LogisticRegression().fit(pd.DataFrame(X, columns=columns), y)
    X_h, y_h = rows(rng, 2_000)
    frame = pd.DataFrame(X_h, columns=columns)
    regressor = LinearRegression().fit(*regression_rows(rng, 1_000, 0.0))
    Xr_h, yr_h = regression_rows(rng, 1_000, 0.0)
    deps = {"clf": nbdeploy.deploy(model, frame, name="clf", home=home, test=(frame, y_h)),
            "reg": nbdeploy.deploy(regressor, Xr_h, name="reg", home=home, test=(Xr_h, yr_h)),
            "plain": nbdeploy.deploy(regressor, Xr_h, name="plain", home=home)}  # no labelled held-out rows
    yield {"deps": deps, "columns": columns, "home": home}
    nbdeploy.shutdown(home)


@pytest.mark.server
def test_end_to_end_estimate_beside_realised_accuracy_and_on_metrics(deployed) -> None:
    dep = deployed["deps"]["clf"]
    X, y = rows(np.random.default_rng(21), WINDOW, REFERENCE * 0.2)  # shifted towards the boundary
    frame = pd.DataFrame(X, columns=deployed["columns"])
    before = dep.health()["estimated"]
    labels, ids = dep.predict(frame, return_ids=True)  # asks for labels only: the log keeps probabilities
    dep.feedback(ids, y)
    snap = dep.health()
    est = snap["estimated"]
    assert "series" not in est and est["n"] == WINDOW and est["metric"] == "accuracy"
    assert est["realised"] == pytest.approx((labels == y).mean())
    assert abs(est["value"] - est["realised"]) <= 0.03
    stored = open_store(deployed["home"]).version("clf", 1).meta["estimation"]
    assert est["value"] == pytest.approx(estimate_accuracy(dep.predict_proba(frame), stored)["value"], abs=1e-6)
    assert before["value"] is None and before["n"] == 0
    assert snap["alert"]["components"]["estimated"] == "n/a"  # labels arrived: realised quality decides
    reg = deployed["deps"]["reg"]
    Xr, _ = regression_rows(np.random.default_rng(22), 300, 1.0)
    reg.predict(Xr)
    deadline = time.monotonic() + 10  # predictions reach the log a moment after their answer
    while (est := reg.health()["estimated"])["n"] < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert est["metric"] == "mae" and est["n"] == 300 and est["value"] > 0
    plain = deployed["deps"]["plain"]
    plain.predict(Xr[:5])
    snap = plain.health()
    assert snap["estimated"] is None and any("no estimation model" in note for note in snap["notes"])
    text = urllib.request.urlopen(f"{dep.server_url}/metrics").read().decode()
    assert 'nbdeploy_estimated_accuracy{bound="value",model="clf",version="1"}' in text
    assert 'nbdeploy_estimated_mae{bound="high",model="reg",version="1"}' in text


@pytest.mark.server
def test_after_a_new_version_the_timeline_keeps_the_estimate_of_the_one_before(tmp_path: Path) -> None:
    from nbdeploy.monitor.live import Monitor
    from nbdeploy.monitor.timeline import Timeline

    home = str(tmp_path)
    columns = ["a", "b", "c", "d"]
    rng = np.random.default_rng(4)
    X, y = rows(rng, 3_000)
    model = LogisticRegression().fit(pd.DataFrame(X, columns=columns), y)
    X_h, y_h = rows(rng, 1_000)
    held = pd.DataFrame(X_h, columns=columns)
    try:
        first = nbdeploy.deploy(model, held, name="churn", home=home, test=(held, y_h))
        first.predict(pd.DataFrame(rows(rng, WINDOW)[0], columns=columns))
        deadline = time.monotonic() + 10  # predictions reach the log a moment after their answer
        while first.health()["estimated"]["n"] < WINDOW and time.monotonic() < deadline:
            time.sleep(0.1)
        nbdeploy.deploy(model, held, name="churn", home=home)  # version 2, with nothing to estimate with
        store = open_store(home)
        snap = Monitor(home, "churn", store=store, timeline=Timeline(store, "churn")).snapshot()
        earlier = snap["timeline"]["estimated_before"]
        assert snap["version"] == 2 and snap["estimated"] is None
        assert earlier and {p["version"] for p in earlier} == {1} and {p["metric"] for p in earlier} == {"accuracy"}
        assert earlier[-1]["n"] == WINDOW and 0.5 < earlier[-1]["value"] <= 1.0
    finally:
        nbdeploy.shutdown(home)
