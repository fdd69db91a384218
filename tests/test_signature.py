"""Input schemas captured from samples, and requests checked against them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nbdeploy.errors import InvalidInput
from nbdeploy.signature import MISSING_STRING, Signature, from_sample


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "price (€)": [1.5, np.nan, 3.0],
        "rooms": np.array([1, 2, 3], dtype=np.int64),
        "garden": [True, False, True],
        "city": pd.array(["paris", None, "lyon"], dtype="str"),
        "note": pd.Series(["a", None, "c"], dtype=object),
        "tier": pd.Categorical(["gold", "silver", None], categories=["silver", "gold"]),
        "floors": pd.array([1, None, 2], dtype="Int64"),
        "pets": pd.array([True, None, False], dtype="boolean"),
        "parking": pd.array([True, False, True], dtype="boolean"),
    })


def test_numpy_arrays_become_one_input() -> None:
    sig = from_sample(np.zeros((4, 3), dtype=np.int64))
    assert not sig.frame and sig.names == ["input"]
    assert sig.inputs[0].datatype == "FP32" and sig.inputs[0].shape == (-1, 3)
    assert from_sample(np.ones((2, 2)), float_type="FP64").inputs[0].datatype == "FP64"


def test_each_column_gets_its_onnx_type(frame) -> None:
    sig = from_sample(frame)
    by_name = {s.name: s for s in sig.inputs}
    assert sig.frame and sig.names == list(frame.columns)
    assert {n: s.datatype for n, s in by_name.items()} == {
        "price (€)": "FP32", "rooms": "INT64", "garden": "BOOL", "city": "BYTES", "note": "BYTES",
        "tier": "BYTES", "floors": "FP32", "pets": "FP32", "parking": "FP32",
    }
    assert by_name["tier"].categories == ("silver", "gold")
    assert [s.name for s in sig.inputs if s.has_missing] == ["price (€)", "city", "note", "tier", "floors", "pets"]
    assert all(s.shape == (-1, 1) for s in sig.inputs)
    assert by_name["pets"].logical == "bool" and by_name["floors"].logical == "integer"


def test_signature_round_trips_through_json_with_the_missing_marker(frame) -> None:
    sig = from_sample(frame)
    data = sig.to_dict()
    city = next(i for i in data["inputs"] if i["name"] == "city")
    assert city["missing"] == MISSING_STRING and city["has_missing"]
    assert next(i for i in data["inputs"] if i["name"] == "rooms")["missing"] is None
    assert Signature.from_dict(data) == sig


def test_missing_strings_travel_as_the_sentinel(frame) -> None:
    sig = from_sample(frame)
    tensors = sig.encode(frame)
    assert list(tensors["city"]) == ["paris", MISSING_STRING, "lyon"]
    assert list(tensors["tier"]) == ["gold", "silver", MISSING_STRING]
    assert np.isnan(tensors["pets"][1]) and tensors["pets"][0] == 1.0
    feeds = sig.feeds({**tensors, "city": np.array(["nice", None], dtype=object),
                       **{k: v[:2] for k, v in tensors.items() if k != "city"}})
    assert feeds["city"].tolist() == [["nice"], [MISSING_STRING]]  # a null from JSON reads as missing too


def test_requests_are_checked_by_the_users_column_names(frame) -> None:
    sig = from_sample(frame)
    tensors = sig.encode(frame)
    feeds = sig.feeds(tensors)
    assert "price____" in feeds and feeds["price____"].dtype == np.float32
    with pytest.raises(InvalidInput, match="did you mean 'rooms'"):
        sig.feeds({**tensors, "room": tensors["rooms"]})
    with pytest.raises(InvalidInput, match=r"expected integers \(INT64\), got the number 1.5 at row 0"):
        sig.feeds({**tensors, "rooms": np.array([1.5, 2.0, 3.0])})


def test_a_missing_bool_where_the_sample_had_none_says_what_to_do(frame) -> None:
    sig = from_sample(frame)
    tensors = sig.encode(frame)
    refused = r"input 'garden': expected booleans.*got a missing value \(null\) at row 1.*deploy with a sample"
    with pytest.raises(InvalidInput, match=refused):
        sig.feeds({**tensors, "garden": np.array([1.0, np.nan, 0.0])})


@pytest.mark.parametrize(("sample", "message"), [
    (pd.DataFrame({"when": pd.to_datetime(["2024-01-01"])}), "convert it to numbers, booleans, strings"),
    (pd.Series([1.0, 2.0]), "pass a DataFrame"),
    (np.array(["a", "b"], dtype=object).reshape(-1, 1), "Use a DataFrame for text"),
    (pd.DataFrame(), "no columns"),
])
def test_unservable_samples_are_refused_with_a_way_out(sample, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_sample(sample)
