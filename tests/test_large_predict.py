"""Large predictions from the kernel: many requests, answers and ids in the order of the rows, progress, errors."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

import nbdeploy
from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.store.reader import LogReader

pytestmark = pytest.mark.server
ROWS = 100_000


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(ROWS, 8)), columns=[f"f{i}" for i in range(8)])
    return X, X["f0"] * 2 - X["f1"] + rng.normal(scale=0.1, size=ROWS)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, frame) -> Iterator[dict]:
    """A regressor (every answer tells its row) and a three-class classifier, on one real server."""
    X, y = frame
    home = str(tmp_path_factory.mktemp("large"))
    classes = pd.cut(y, [-np.inf, -1, 1, np.inf], labels=False)
    deps = {
        "reg": nbdeploy.deploy(Ridge().fit(X.head(2000), y.head(2000)), X.head(500), name="reg", home=home),
        "clf": nbdeploy.deploy(LogisticRegression().fit(X.head(2000), classes.head(2000)), X.head(500), name="clf",
                               home=home),
    }
    yield {"home": home, **deps}
    nbdeploy.shutdown(home)


def test_a_large_frame_predicts_as_the_local_predictor_in_the_order_of_its_rows(deployed, frame):
    X, _ = frame
    local = nbdeploy.load("reg", home=deployed["home"])
    values, ids = deployed["reg"].predict(X, return_ids=True)
    np.testing.assert_allclose(values.ravel(), local.predict(X).ravel(), rtol=1e-6)
    assert len(ids) == len(set(ids)) == ROWS
    keys = [i.split(":") for i in ids]
    requests = [k for k, row in keys if row == "0"]
    assert len(requests) > 1 and len(set(requests)) == len(requests)  # several requests, each its own key
    assert all(int(row) == (int(prev) + 1 if key == pkey else 0)  # rows 0, 1, 2 … within each request, in order
               for (pkey, prev), (key, row) in itertools.pairwise(keys))

    # each id is the logged prediction of its own row: the log holds the value this row got
    sample = [ids[i] for i in range(0, ROWS, 997)] + [ids[-1]]
    with LogReader(deployed["home"]) as log:
        deadline = time.monotonic() + 30
        while len(logged := log.predictions(sample)) < len(sample) and time.monotonic() < deadline:
            time.sleep(0.1)
    rows = [*range(0, ROWS, 997), ROWS - 1]
    np.testing.assert_allclose([float(logged[ids[r]].label) for r in rows], values.ravel()[rows], rtol=1e-6)


def test_probabilities_of_a_large_frame_match_the_local_predictor(deployed, frame):
    X, _ = frame
    local = nbdeploy.load("clf", home=deployed["home"])
    np.testing.assert_allclose(deployed["clf"].predict_proba(X), local.predict_proba(X), atol=1e-6)
    assert deployed["clf"].predict(X).tolist() == local.predict(X).tolist()


def test_a_progress_bar_shows_when_asked_and_not_otherwise(deployed, frame, capsys):
    X, _ = frame
    dep = deployed["reg"]
    dep.predict(X.head(20_000))  # several requests, over long before a bar would show
    dep.predict(X, progress=False)
    dep.predict(X.head(100), progress=True)  # one request: nothing to show progress of
    assert capsys.readouterr().err == ""
    dep.predict(X.head(20_000), progress=True)
    err = capsys.readouterr().err
    assert "predict" in err and "100%" in err and "20.0k/20.0k" in err


def test_a_row_the_server_refuses_mid_way_is_named_and_nothing_is_returned(deployed, frame):
    X, _ = frame
    bad = X.copy()
    bad.iloc[70_000, 3] = np.nan  # the model was fitted without missing values: the server refuses it
    with pytest.raises(NbdeployError) as info:
        deployed["reg"].predict(bad)
    error = info.value
    assert error.status == 400 and 70_000 in error.rows and error.rows.start > 0
    assert f"rows {error.rows.start:,}-{error.rows.stop - 1:,} of 100,000 were not predicted" in error.message
    assert "'f3'" in error.message and "nothing is returned" in error.message
    assert isinstance(error, InvalidInput) and "at row 70,000;" in error.message  # the row of the whole frame
    assert deployed["reg"].predict(X.head(3)).shape == (3,)  # the endpoint keeps serving


def test_a_refusal_raises_what_the_local_predictor_raises_for_the_same_rows(deployed, frame):
    X, _ = frame
    bad = X.head(5).copy()
    bad.iloc[2, 3] = np.nan
    with pytest.raises(InvalidInput) as served:
        deployed["reg"].predict(bad)
    with pytest.raises(InvalidInput) as local:
        nbdeploy.load("reg", home=deployed["home"]).predict(bad)
    assert served.value.message == local.value.message and "at row 2" in served.value.message


def test_a_server_with_a_smaller_body_limit_gets_smaller_requests(tmp_path: Path, frame, monkeypatch):
    X, y = frame
    monkeypatch.setenv("NBDEPLOY_MAX_BODY_BYTES", "200000")  # the server this deploy starts reads it
    home = str(tmp_path / "small")
    model = Ridge().fit(X.head(2000), y.head(2000))
    dep = nbdeploy.deploy(model, X.head(500), name="small", home=home)
    try:
        values, ids = dep.predict(X.head(30_000), return_ids=True)
        local = nbdeploy.load("small", home=home).predict(X.head(30_000))
        np.testing.assert_allclose(values.ravel(), local.ravel(), rtol=1e-6)
        assert len(set(ids)) == 30_000
    finally:
        nbdeploy.shutdown(home)


def test_an_unknown_category_deep_in_a_large_frame_is_refused_before_any_request(tmp_path: Path, frame):
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    X, y = frame
    X = X.assign(plan=pd.Categorical(np.where(X["f2"] > 0, "pro", "basic")))
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["plan"]), remainder="passthrough"), Ridge())
    home = str(tmp_path / "strict")
    dep = nbdeploy.deploy(model.fit(X.head(2000), y.head(2000)), X.head(500), name="strict", home=home)
    try:
        bad = X.assign(plan=X["plan"].cat.add_categories(["gold"]))
        bad.loc[70_123, "plan"] = "gold"
        with pytest.raises(InvalidInput, match="got the unknown category 'gold' at row 70123; the model's encoder"):
            dep.predict(bad)
        assert dep.health()["traffic"]["requests"] == 0  # nothing was sent, so nothing half-predicted was logged
        assert dep.predict(X.head(30_000)).shape == (30_000,)
    finally:
        nbdeploy.shutdown(home)
