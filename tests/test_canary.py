"""Canary rollouts from the notebook: start, promote, abort on labels, stop, restart, and the mistakes users make."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest
from IPython.core.error import UsageError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

import nbdeploy
from nbdeploy.errors import Conflict, InvalidInput, NotFound
from nbdeploy.lifecycle.registration import register
from nbdeploy.serve import process
from nbdeploy.serve.canary import bucket
from nbdeploy.store import PRODUCTION, Store
from nbdeploy.store.alerts import alerts
from nbdeploy.store.canary import canaries, current_canary

pytestmark = pytest.mark.server


@pytest.fixture
def home(tmp_path):
    yield str(tmp_path)
    nbdeploy.shutdown(str(tmp_path))


def _ask(client: httpx.Client, url: str, X, row: int, user: str | None = None) -> tuple[str, str]:
    """One row through the un-versioned endpoint: (answering version, prediction id)."""
    body = {"inputs": [{"name": c, "datatype": "FP64", "shape": [1, 1], "data": [float(X[c].iloc[row])]}
                       for c in X.columns]}
    r = client.post(f"{url}/infer", json=body, headers={"X-Client-ID": user} if user else {})
    assert r.status_code == 200, r.text
    doc = r.json()
    return doc["model_version"], doc["parameters"]["prediction_id"]


def _applied(home: str) -> None:
    """The server has followed the store's latest change (as the API waits for it)."""
    store = Store(home)
    process.wait_applied(store, store.generation())


def _until(condition: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_canary_that_keeps_its_guards_is_promoted_and_rollback_undoes_it(home, iris):
    X, y, model = iris
    dep = nbdeploy.deploy(model, X, "iris", home=home)
    register(LogisticRegression(C=0.5, max_iter=500).fit(X, y), X, "iris", store=Store(home))  # no held-out rows
    status = nbdeploy.canary("iris", 2, percent=50, promote_after=20, home=home)
    assert status["state"] == "running" and status["version"] == 2 and status["production"] == 1
    assert status["gate"] is None and "nothing to gate on" in status["promotion"]
    assert status["guards"]["min_requests"] == 50 and status["guards"]["min_labels"] == 30  # the defaults
    assert dep.health()["canary"]["state"] == "running"
    client = httpx.Client()
    answered = set()
    i = 0
    while current_canary(Store(home), "iris") is not None:  # until the guard promotes it
        assert i < 2000, "the canary was not promoted"
        answered.add(_ask(client, dep.url, X, i % 150, user=f"u{i}")[0])
        i += 1
    assert answered == {"1", "2"}
    [ended] = canaries(Store(home), "iris")
    assert ended.state == "promoted" and "nothing to gate on" in ended.reason
    assert dep.version == 2
    _applied(home)
    assert {_ask(client, dep.url, X, i)[0] for i in range(10)} == {"2"}
    health = dep.health()["canary"]
    assert health["state"] == "promoted" and health["arms"]["canary"]["requests"] >= 20
    nbdeploy.rollback("iris", home=home)
    assert dep.version == 1
    assert {_ask(client, dep.url, X, i)[0] for i in range(10)} == {"1"}


def test_a_less_accurate_canary_is_held_by_its_gate_then_aborted_on_labels(home, iris):
    X, y, model = iris
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    dep = nbdeploy.deploy(model, X, "iris", test=(X_test, y_test), home=home)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X_train, y_train)  # about 2/3 right
    register(stump, X, "iris", test=(X_test, y_test), store=Store(home))
    # the estimated-accuracy guard would abort it before any label (see the next test): off here
    status = nbdeploy.canary("iris", 2, percent=50, promote_after=10, guards={"estimated_tolerance": 1}, home=home)
    assert status["gate"]["passed"] is False and "will not be promoted automatically" in status["promotion"]
    client = httpx.Client()
    answers = [(i, *_ask(client, dep.url, X, i % 150, user=f"u{i}")) for i in range(300)]
    time.sleep(1.5)  # past promote_after, judged several times: held, not promoted
    held = dep.health()["canary"]
    assert held["state"] == "running", held["reason"]
    assert held["progress"] >= 10 and "promotion gate refused" in held["hold"]
    text = httpx.get(dep.url.split("/v2/")[0] + "/metrics").text
    assert 'nbdeploy_canary_requests{arm="canary",model="iris",version="2"}' in text
    ids = [pid for _, _, pid in answers]
    dep.feedback(ids, [y.iloc[i % 150] for i, _, _ in answers])
    _until(lambda: current_canary(Store(home), "iris") is None, "the accuracy guard")
    [ended] = canaries(Store(home), "iris")
    assert ended.state == "aborted" and "accuracy" in ended.reason, ended.reason
    assert [a.reasons for a in alerts(Store(home), "iris") if a.source == "canary"] == [[ended.reason]]
    arms = dep.health()["canary"]["arms"]
    assert arms["canary"]["accuracy"] < arms["production"]["accuracy"] - 0.05
    assert arms["canary"]["labelled"] >= 30
    assert dep.version == 1 and "canary" not in Store(home).aliases("iris")
    _applied(home)
    assert {_ask(client, dep.url, X, i, user=f"u{i}")[0] for i in range(20)} == {"1"}


def test_a_canary_estimated_to_be_worse_is_aborted_before_labels_arrive(home, iris):
    X, y, model = iris
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    dep = nbdeploy.deploy(model, X, "iris", test=(X_test, y_test), home=home)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X_train, y_train)
    register(stump, X, "iris", test=(X_test, y_test), store=Store(home))  # its held-out rows fit its estimation
    nbdeploy.canary("iris", 2, percent=50, home=home)
    client = httpx.Client()
    i = 0
    while current_canary(Store(home), "iris") is not None:
        assert i < 3000, "the estimated-accuracy guard did not abort the canary"
        _ask(client, dep.url, X, i % 150, user=f"u{i}")
        i += 1
    [ended] = canaries(Store(home), "iris")
    assert ended.state == "aborted" and "estimated accuracy" in ended.reason, ended.reason
    arms = dep.health()["canary"]["arms"]
    assert arms["canary"]["labelled"] == 0 and arms["canary"]["estimated_accuracy"] < 0.8
    assert arms["production"]["estimated_accuracy"] > 0.9


def test_stop_and_a_restart_keep_the_routing_in_the_store(home, iris):
    X, y, model = iris
    dep = nbdeploy.deploy(model, X, "iris", home=home)
    register(LogisticRegression(C=0.5, max_iter=500).fit(X, y), X, "iris", store=Store(home))
    nbdeploy.canary("iris", 2, percent=50, key="X-User", home=home)
    users = [f"user-{i}" for i in range(12)]
    expected = {u: "2" if bucket("iris", u.encode()) < 50 else "1" for u in users}

    def answers() -> dict[str, str]:
        with httpx.Client() as client:
            return {u: client.post(f"{dep.url}/infer", headers={"X-User": u}, json={"inputs": [
                {"name": c, "datatype": "FP64", "shape": [1, 1], "data": [1.0]} for c in X.columns]}
            ).json()["model_version"] for u in users}

    assert answers() == expected
    nbdeploy.shutdown(home)
    dep.serve()  # a new server process reads the running canary from the store
    assert current_canary(Store(home), "iris").version == 2
    assert answers() == expected
    status = nbdeploy.canary("iris", stop=True, home=home)
    assert status["state"] == "stopped" and status["reason"] == "stopped by the user"
    assert set(answers().values()) == {"1"} and dep.version == 1
    with pytest.raises(Conflict, match="no canary running"):
        nbdeploy.canary("iris", stop=True, home=home)
    # production moving by hand while a canary runs leaves no arm to compare with: the canary stops
    nbdeploy.canary("iris", 2, percent=50, home=home)
    nbdeploy.promote("iris", 2, home=home)
    _until(lambda: current_canary(Store(home), "iris") is None, "the guard to stop the canary")
    assert canaries(Store(home), "iris")[-1].reason == "production moved to version 2 while the canary ran"


def test_mistakes_are_refused_and_change_nothing(home, iris):
    X, y, model = iris
    nbdeploy.deploy(model, X, "iris", home=home)
    store = Store(home)
    register(LogisticRegression(C=0.5, max_iter=500).fit(X, y), X, "iris", store=store)
    before = (store.aliases("iris"), canaries(store), store.generation())
    mistakes: list[tuple[dict[str, Any], type, str]] = [
        ({"version": 1}, InvalidInput, "version 1 of 'iris' is production already"),
        ({"version": 9}, NotFound, "has no version 9"),
        ({"version": 2, "percent": 0}, InvalidInput, "between 0 and 100"),
        ({"version": 2, "percent": 100}, InvalidInput, "between 0 and 100"),
        ({"version": 2, "percent": "10"}, InvalidInput, "between 0 and 100"),
        ({"version": 2, "promote_after": 0}, InvalidInput, "positive number of requests"),
        ({"version": 2, "key": "X User"}, InvalidInput, "name of a request header"),
        ({"version": 2, "guards": {"min_request": 5}}, InvalidInput, "did you mean 'min_requests'"),
        ({"version": 2, "guards": {"p99_ratio": -1}}, InvalidInput, "p99_ratio must be a number >= 0"),
        ({}, InvalidInput, "give the version"),
        ({"version": 2, "stop": True}, InvalidInput, "give no version"),
        ({"stop": True}, Conflict, "no canary running"),
    ]
    for kwargs, error, message in mistakes:
        with pytest.raises(error, match=message):
            nbdeploy.canary("iris", home=home, **kwargs)
        assert (store.aliases("iris"), canaries(store), store.generation()) == before, kwargs
    with pytest.raises(NotFound, match="did you mean 'iris'"):
        nbdeploy.canary("irsi", 2, home=home)
    nbdeploy.canary("iris", 2, percent=5, home=home)
    running = (store.aliases("iris"), canaries(store))
    register(LogisticRegression(C=0.1, max_iter=500).fit(X, y), X, "iris", store=store)
    with pytest.raises(Conflict, match="has a canary running already"):
        nbdeploy.canary("iris", 3, home=home)
    assert (store.aliases("iris"), canaries(store)) == running
    nbdeploy.get("iris", home=home).stop()
    nbdeploy.canary("iris", stop=True, home=home)
    with pytest.raises(Conflict, match="is not served"):
        nbdeploy.canary("iris", 2, home=home)
    assert store.aliases("iris")[PRODUCTION] == 1


def test_the_magic_starts_and_stops_a_canary(home, iris, capsys, ipython):
    X, y, model = iris
    nbdeploy.deploy(model, X, "iris", home=home)
    register(LogisticRegression(C=0.5, max_iter=500).fit(X, y), X, "iris", store=Store(home))
    shell = ipython
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.run_line_magic("config", f"DeployMagics.home = {home!r}")
    shell.run_line_magic("deploy", "canary iris 2 --percent 20 --key X-User --promote-after 500")
    out = capsys.readouterr().out
    assert "version 2 answers 20 % of requests (keyed by X-User)" in out and "promoted after 500" in out
    canary = current_canary(Store(home), "iris")
    assert (canary.percent, canary.key, canary.promote_after) == (20.0, "X-User", 500)
    with pytest.raises(UsageError, match="give a VERSION to run as the canary, or --stop"):
        shell.run_line_magic("deploy", "canary iris")
    with pytest.raises(UsageError, match=r"has a canary running already \(version 2\); stop it first "
                                         r"\(%deploy canary iris --stop, or stop=True\)"):
        shell.run_line_magic("deploy", "canary iris 2")
    shell.run_line_magic("deploy", "canary iris --stop")
    assert "canary of version 2 stopped; production (version 1) answers all traffic" in capsys.readouterr().out
    assert np.array_equal([c.state for c in canaries(Store(home), "iris")], ["stopped"])


def test_the_status_of_a_canary_whose_version_was_deleted_or_pruned_still_shows(home, iris, tmp_path):
    X, y, model = iris
    dep = nbdeploy.deploy(model, X, "iris", home=home)
    store = Store(home)
    register(LogisticRegression(C=0.5, max_iter=500).fit(X, y), X, "iris", store=store)
    register(LogisticRegression(C=0.2, max_iter=500).fit(X, y), X, "iris", store=store)
    nbdeploy.canary("iris", 2, percent=50, home=home)
    client = httpx.Client()
    assert {_ask(client, dep.url, X, i, user=f"u{i}")[0] for i in range(40)} == {"1", "2"}
    nbdeploy.canary("iris", stop=True, home=home)
    print(nbdeploy.prune("iris", keep=1, home=home)[0])  # version 2, no longer aliased, goes
    assert [v.version for v in store.versions("iris")] == [1, 3]
    canary = dep.health()["canary"]
    assert (canary["state"], canary["version"], canary["arms"]["canary"]["estimated_accuracy"]) == ("stopped", 2, None)
    nbdeploy.report("iris", to=tmp_path / "iris.html", home=home)
    assert "canary v2 stopped" in (tmp_path / "iris.html").read_text()
    nbdeploy.canary("iris", 3, percent=50, home=home)
    nbdeploy.delete("iris", 3, force=True, home=home)  # the running canary's version
    canary = dep.health()["canary"]
    assert canary["state"] == "stopped" and canary["reason"] == "version 3 was deleted"
