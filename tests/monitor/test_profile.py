"""Reference profiles: per-feature summaries that survive strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor import reference_profile


@pytest.fixture
def mixed() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "visits": pd.array(rng.integers(0, 5, n), dtype="Int64"),
            "member": rng.random(n) < 0.3,
            "city": pd.array(rng.choice(["Paris", "Lyon", "Nice"], n), dtype="string"),
            "plan": pd.Categorical(rng.choice(["free", "pro"], n)),
        }
    )
    frame.loc[:19, "age"] = np.nan
    frame.loc[:9, "visits"] = pd.NA
    frame.loc[:4, "city"] = None
    return frame


def test_numpy_array_gets_positional_names_and_numeric_summaries() -> None:
    X = load_iris().data
    profile = reference_profile(X)
    assert profile["features"] == ["x0", "x1", "x2", "x3"]
    col = profile["columns"]["x2"]
    assert col["kind"] == "numeric"
    assert col["count"] == 150 and col["missing_rate"] == 0.0
    assert col["min"] == pytest.approx(X[:, 2].min()) and col["max"] == pytest.approx(X[:, 2].max())
    assert col["mean"] == pytest.approx(X[:, 2].mean())
    assert col["std"] == pytest.approx(X[:, 2].std(ddof=1))
    edges = col["bin_edges"]
    assert edges == sorted(set(edges))  # deduplicated, increasing
    assert len(col["bin_proportions"]) == len(edges) + 1
    assert sum(col["bin_proportions"]) == pytest.approx(1.0)
    assert len(col["sample"]) == 150


def test_dataframe_kinds_and_missing_rates(mixed: pd.DataFrame) -> None:
    profile = reference_profile(mixed)
    cols = profile["columns"]
    assert profile["features"] == list(mixed.columns)
    assert {name: c["kind"] for name, c in cols.items()} == {
        "age": "numeric",
        "visits": "numeric",
        "member": "categorical",
        "city": "categorical",
        "plan": "categorical",
    }
    assert cols["age"]["missing_rate"] == pytest.approx(0.1)
    assert cols["visits"]["missing_rate"] == pytest.approx(0.05)
    assert cols["city"]["missing_rate"] == pytest.approx(0.025)
    assert set(cols["member"]["frequencies"]) == {"True", "False"}
    assert set(cols["city"]["frequencies"]) == {"Paris", "Lyon", "Nice"}
    assert sum(cols["city"]["frequencies"].values()) == pytest.approx(1.0)
    assert sum(cols["city"]["counts"].values()) == 195


def test_rare_categories_are_pooled_as_other() -> None:
    values = ["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 5 + ["e"] * 5
    col = reference_profile(pd.DataFrame({"v": values}), max_categories=2)["columns"]["v"]
    assert col["counts"] == {"a": 50, "b": 30, "__other__": 20}
    assert col["truncated"] is True
    assert col["n_categories"] == 5


def test_sample_is_capped_and_seeded() -> None:
    X = np.random.default_rng(1).normal(size=(1000, 2))
    a = reference_profile(X, sample_size=100, seed=3)["columns"]["x0"]["sample"]
    b = reference_profile(X, sample_size=100, seed=3)["columns"]["x0"]["sample"]
    c = reference_profile(X, sample_size=100, seed=4)["columns"]["x0"]["sample"]
    assert len(a) == 100 and a == b and a != c


def test_profile_is_strict_json(mixed: pd.DataFrame) -> None:
    mixed["empty"] = np.nan
    mixed["constant"] = 1.0
    mixed.loc[50, "age"] = np.inf  # non-finite counts as missing
    profile = reference_profile(mixed)
    text = json.dumps(profile, allow_nan=False)
    assert json.loads(text) == profile
    assert profile["columns"]["empty"]["missing_rate"] == 1.0
    assert profile["columns"]["empty"]["mean"] is None
    assert profile["columns"]["constant"]["std"] == 0.0
    assert profile["columns"]["age"]["missing_rate"] == pytest.approx(21 / 200)


def test_records_profile_like_a_dataframe() -> None:
    records = [{"a": 1.5, "b": "x"}, {"a": None, "b": "y"}, {"a": 3.0, "b": None}]
    profile = reference_profile(records)
    assert profile["columns"]["a"]["kind"] == "numeric"
    assert profile["columns"]["a"]["missing_rate"] == pytest.approx(1 / 3)
    assert profile["columns"]["b"]["frequencies"] == {"x": 0.5, "y": 0.5}


def test_bad_input_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        reference_profile(np.zeros(5))
    with pytest.raises(InvalidInput):
        reference_profile(np.zeros((5, 2)), bins=0)
