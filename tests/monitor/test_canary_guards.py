"""A canary's arms and its guards' verdict, from plain counts (no server, no log)."""

from __future__ import annotations

import numpy as np
import pytest

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor.canary import DEFAULT_GUARDS, ArmCounts, canary_status, guard_thresholds
from nbdeploy.store.batch import LATENCY_EDGES_MS
from nbdeploy.store.canary import Canary


def _canary(**fields) -> Canary:
    base = {"id": 1, "name": "iris", "version": 2, "production": 1, "percent": 10.0, "key": None,
            "promote_after": None, "guards": dict(DEFAULT_GUARDS), "started_at": 100.0}
    return Canary(**{**base, **fields})


def _latency(ms: float, n: int) -> np.ndarray:
    hist = np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64)
    hist[np.searchsorted(LATENCY_EDGES_MS, ms, "right")] = n
    return hist


def _arms(production: dict | None = None, canary: dict | None = None) -> dict[str, ArmCounts]:
    return {"production": ArmCounts(version=1, **(production or {})), "canary": ArmCounts(version=2, **(canary or {}))}


def test_defaults_and_a_fresh_canary_continue():
    assert guard_thresholds() == DEFAULT_GUARDS
    assert guard_thresholds({"min_requests": 10.0, "max_p99_ms": 50})["min_requests"] == 10
    status = canary_status(_canary(), _arms())
    assert status["verdict"] == "continue" and status["progress"] == 0 and status["breach"] is None
    assert status["arms"]["canary"] == {"version": 2, "requests": 0, "errors": 0, "error_rate": None, "p99_ms": None,
                                        "accuracy": None, "labelled": 0, "estimated_accuracy": None, "drift": None}
    assert "nothing to gate on" in status["promotion"]


@pytest.mark.parametrize(("guards", "message"), [
    ({"min_request": 5}, "did you mean 'min_requests'"),
    ({"min_requests": 0}, "whole number >= 1"),
    ({"min_labels": 2.5}, "whole number >= 1"),
    ({"accuracy_tolerance": -0.1}, "number >= 0"),
    ({"p99_ratio": "2"}, "number >= 0"),
    ({"max_error_rate_increase": float("nan")}, "number >= 0"),
])
def test_bad_guards_are_refused(guards, message):
    with pytest.raises(InvalidInput, match=message):
        guard_thresholds(guards)


def test_errors_are_judged_against_production_after_min_requests():
    worse = {"requests": 49, "errors": 10}
    assert canary_status(_canary(), _arms(canary=worse))["verdict"] == "continue"  # too few to judge
    status = canary_status(_canary(), _arms({"requests": 500, "errors": 5}, {"requests": 50, "errors": 10}))
    assert status["verdict"] == "abort"
    assert status["breach"] == "error rate 20.0% on 50 canary requests exceeds production's 1.0% by more than 2.0%"
    same = canary_status(_canary(), _arms({"requests": 500, "errors": 50}, {"requests": 50, "errors": 5}))
    assert same["verdict"] == "continue"  # no worse than production: bad inputs fail on both arms


def test_latency_needs_enough_requests_on_both_arms():
    fast, slow = _latency(1.0, 300), _latency(80.0, 300)
    status = canary_status(_canary(), _arms({"requests": 300, "latency": fast}, {"requests": 300, "latency": slow}))
    assert status["verdict"] == "abort" and "p99 latency" in status["breach"]
    few = canary_status(_canary(), _arms({"requests": 300, "latency": fast},
                                         {"requests": 199, "latency": _latency(80.0, 199)}))
    assert few["verdict"] == "continue"  # a p99 of 199 requests is their maximum: one pause is not a breach
    ceiling = _canary(guards={**DEFAULT_GUARDS, "max_p99_ms": 50.0})
    assert "exceeds 50.0 ms" in canary_status(ceiling, _arms(canary={"requests": 300, "latency": slow}))["breach"]


def test_accuracy_against_production_labels_else_its_held_out_figure():
    worse = {"requests": 40, "labelled": 40, "correct": 28}  # 0.70
    status = canary_status(_canary(), _arms({"requests": 400, "labelled": 400, "correct": 380}, worse))
    assert status["verdict"] == "abort" and "production's 0.950 on 400 labels" in status["breach"]
    status = canary_status(_canary(), _arms({"baseline_accuracy": 0.97}, worse))
    assert status["verdict"] == "abort" and "production's held-out 0.970" in status["breach"]
    few = canary_status(_canary(), _arms({"baseline_accuracy": 0.97}, {"labelled": 29, "correct": 10}))
    assert few["verdict"] == "continue"


def test_estimated_accuracy_is_judged_once_both_arms_have_enough_predictions():
    production = {"estimated": {"value": 0.95, "low": 0.9, "high": 0.99, "n": 200}}
    candidate = {"estimated": {"value": 0.7, "low": 0.6, "high": 0.8, "n": 60}}
    status = canary_status(_canary(), _arms(production, candidate))
    assert status["verdict"] == "abort" and "estimated accuracy 0.700 on 60" in status["breach"]
    early = {"estimated": {**candidate["estimated"], "n": 49}}
    assert canary_status(_canary(), _arms(production, early))["verdict"] == "continue"


def test_promotion_waits_for_promote_after_and_a_gate_that_did_not_refuse():
    due = {"requests": 100}
    assert canary_status(_canary(promote_after=101), _arms(canary=due))["verdict"] == "continue"
    assert canary_status(_canary(promote_after=100), _arms(canary=due))["verdict"] == "promote"
    passed = _canary(promote_after=100, gate={"passed": True, "reason": "challenger accuracy 0.97 >= ..."})
    assert canary_status(passed, _arms(canary=due))["verdict"] == "promote"
    refused = _canary(promote_after=100, gate={"passed": False, "reason": "challenger accuracy 0.60 < ..."})
    status = canary_status(refused, _arms(canary=due))
    assert status["verdict"] == "continue" and "promotion gate refused it (challenger accuracy 0.60" in status["hold"]
    ended = _canary(state="aborted", reason="...", ended_at=200.0)
    assert canary_status(ended, _arms(canary={"requests": 50, "errors": 50}))["verdict"] == "continue"
