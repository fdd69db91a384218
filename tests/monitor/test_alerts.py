"""One alert level per deployment, from each monitored component."""

from __future__ import annotations

import json

import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from nbdeploy.monitor import AlertThresholds, evaluate_alerts, feature_drift, reference_profile


def window(accuracy: float, n: int = 200) -> dict:
    return {"n": n, "accuracy": accuracy, "f1_macro": accuracy, "roc_auc": None}


def test_nothing_known_is_ok_and_not_judged() -> None:
    status = evaluate_alerts()
    assert status.level == "OK" and status.reasons == []
    assert status.components == {"quality": "n/a", "drift": "n/a", "errors": "n/a", "latency": "n/a"}


def test_healthy_deployment_is_ok() -> None:
    status = evaluate_alerts(baseline={"accuracy": 0.95}, quality=window(0.94), error_rate=0.0, p99_latency_ms=12.0)
    assert status.level == "OK"
    assert status.components == {"quality": "OK", "drift": "n/a", "errors": "OK", "latency": "OK"}


@pytest.mark.parametrize(
    ("current", "level"),
    [(0.93, "OK"), (0.90, "WARN"), (0.88, "WARN"), (0.85, "ALERT"), (0.50, "ALERT")],
)
def test_accuracy_drop_levels(current: float, level: str) -> None:
    status = evaluate_alerts(baseline={"accuracy": 0.95}, quality=window(current))
    assert status.level == level
    assert status.components["quality"] == level
    if level != "OK":
        assert "accuracy" in status.reasons[0] and "baseline 0.950" in status.reasons[0]


def test_too_few_labels_are_not_judged() -> None:
    status = evaluate_alerts(baseline={"accuracy": 0.95}, quality=window(0.2, n=12))
    assert status.level == "OK"
    assert status.components["quality"] == "n/a"
    assert status.notes == ["quality not judged: 12 labelled < 30"]
    empty = evaluate_alerts(baseline={"accuracy": 0.95}, quality={"n": 0, "accuracy": None})
    assert empty.level == "OK" and empty.components["quality"] == "n/a"


@pytest.mark.parametrize(("rmse", "level"), [(10.5, "OK"), (11.2, "WARN"), (13.0, "ALERT"), (8.0, "OK")])
def test_regression_compares_relative_rmse_increase(rmse: float, level: str) -> None:
    status = evaluate_alerts(baseline={"rmse": 10.0}, quality={"n": 100, "rmse": rmse, "mae": 1.0})
    assert status.level == level
    if level != "OK":
        assert status.reasons[0].startswith("RMSE")


def test_perfect_baseline_rmse_does_not_divide_by_zero() -> None:
    assert evaluate_alerts(baseline={"rmse": 0.0}, quality={"n": 50, "rmse": 0.1}).level == "ALERT"
    assert evaluate_alerts(baseline={"rmse": 0.0}, quality={"n": 50, "rmse": 0.0}).level == "OK"


@pytest.mark.parametrize(("rate", "level"), [(0.0, "OK"), (0.01, "WARN"), (0.03, "WARN"), (0.05, "ALERT")])
def test_error_rate_levels(rate: float, level: str) -> None:
    status = evaluate_alerts(error_rate=rate)
    assert status.level == level and status.components["errors"] == level


@pytest.mark.parametrize(("p99", "level"), [(20.0, "OK"), (150.0, "WARN"), (900.0, "ALERT")])
def test_latency_levels(p99: float, level: str) -> None:
    status = evaluate_alerts(p99_latency_ms=p99)
    assert status.level == level and status.components["latency"] == level
    if level != "OK":
        assert status.reasons == [f"p99 latency {p99:.0f} ms"]


def test_drift_component_and_level_is_the_worst() -> None:
    X = load_iris(as_frame=True).data
    train, test = train_test_split(X, test_size=0.33, random_state=0)
    profile = reference_profile(train)
    calm = feature_drift(profile, test)
    shifted = feature_drift(profile, test.assign(**{"petal width (cm)": test["petal width (cm)"] + 2}))

    assert evaluate_alerts(drift=calm).components["drift"] == "OK"
    status = evaluate_alerts(drift=shifted, error_rate=0.02, baseline={"accuracy": 0.95}, quality=window(0.95))
    assert status.components == {"quality": "OK", "drift": "ALERT", "errors": "WARN", "latency": "n/a"}
    assert status.level == "ALERT"
    assert any(r.startswith("drift ALERT: petal width (cm)") for r in status.reasons)
    assert "error rate 2.0%" in status.reasons


def test_custom_thresholds_and_dict() -> None:
    strict = AlertThresholds(p99_latency_ms_warn=10, p99_latency_ms_alert=20)
    status = evaluate_alerts(p99_latency_ms=15, thresholds=strict)
    assert status.level == "WARN"
    data = status.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["level"] == "WARN" and data["components"]["latency"] == "WARN"
