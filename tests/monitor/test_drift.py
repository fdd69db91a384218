"""Drift against a reference profile, as a user watching a deployment would see it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris, load_wine
from sklearn.model_selection import train_test_split

from nbdeploy.monitor import (
    DriftReport,
    DriftThresholds,
    feature_drift,
    reference_profile,
)
from nbdeploy.monitor.drift import psi


def split(loader, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    X = loader(as_frame=True).data
    train, test = train_test_split(X, test_size=0.33, random_state=seed)
    return train, test


@pytest.fixture
def shop() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference and a same-distribution current batch with numeric and categorical columns."""
    rng = np.random.default_rng(7)

    def draw(n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "price": rng.normal(100, 15, n),
                "items": rng.poisson(3, n).astype(float),
                "country": pd.array(rng.choice(["FR", "DE", "IT"], n, p=[0.5, 0.3, 0.2]), dtype="string"),
            }
        )

    return draw(3000), draw(600)


@pytest.mark.parametrize("loader", [load_iris, load_wine])
def test_fresh_sample_from_same_distribution_does_not_drift(loader) -> None:
    train, test = split(loader)
    report = feature_drift(reference_profile(train), test)
    assert report.overall == "OK", report.to_dict()
    assert report.drifted_features == []
    assert all(row.test == "ks" and row.p_value is not None for row in report.rows)


def test_same_distribution_with_categories_does_not_drift(shop) -> None:
    ref, cur = shop
    report = feature_drift(reference_profile(ref), cur)
    assert report.overall == "OK", report.to_dict()
    assert report["country"].test == "chi2"
    assert report["country"].unseen_count == 0


def test_shift_of_two_std_alerts_on_that_feature_only() -> None:
    train, test = split(load_iris)
    feature = "petal length (cm)"
    shifted = test.assign(**{feature: test[feature] + 2 * train[feature].std()})
    report = feature_drift(reference_profile(train), shifted)
    assert report.overall == "ALERT"
    assert report.drifted_features == [feature]
    row = report[feature]
    assert row.status == "ALERT"
    assert row.psi > 0.2 and row.p_value < 0.05
    assert any("distribution shift" in r for r in row.reasons)
    assert row.out_of_range_count > 0


def test_unseen_categories_are_counted_and_flagged(shop) -> None:
    ref, cur = shop
    cur = cur.copy()
    cur.loc[:59, "country"] = "ES"  # 10 % of rows, a country never seen in training
    row = feature_drift(reference_profile(ref), cur)["country"]
    assert row.unseen_count == 60
    assert row.unseen_rate == pytest.approx(0.1)
    assert row.status in ("WARN", "ALERT")
    assert any("unseen" in r for r in row.reasons)


def test_out_of_range_values_are_counted_and_flagged(shop) -> None:
    ref, cur = shop
    cur = cur.copy()
    cur.loc[:17, "price"] = 10_000.0  # 3 % far above anything seen
    row = feature_drift(reference_profile(ref), cur)["price"]
    assert row.out_of_range_count == 18
    assert row.out_of_range_rate == pytest.approx(0.03)
    assert row.status == "WARN"
    assert any("out of reference range" in r for r in row.reasons)


def test_missing_rate_jump_is_flagged(shop) -> None:
    ref, cur = shop
    cur = cur.copy()
    cur.loc[:179, "items"] = np.nan  # 0 % -> 30 % missing
    report = feature_drift(reference_profile(ref), cur)
    row = report["items"]
    assert row.missing_rate_ref == 0.0 and row.missing_rate_cur == pytest.approx(0.3)
    assert row.status == "WARN"
    assert any("missing rate" in r for r in row.reasons)
    assert report.drifted_features == ["items"]


def test_column_absent_from_current_data_alerts(shop) -> None:
    ref, cur = shop
    row = feature_drift(reference_profile(ref), cur.drop(columns="price"))["price"]
    assert row.status == "ALERT"
    assert row.missing_rate_cur == 1.0
    assert row.reasons == ["all values missing"]


def test_tiny_sample_never_alerts() -> None:
    train, test = split(load_iris)
    tiny = test.head(10) + 100.0  # absurd values, but only 10 rows
    report = feature_drift(reference_profile(train), tiny)
    assert report.overall == "OK"
    assert all(row.reasons == ["not enough data (n=10 < 30)"] for row in report.rows)
    assert report.rows[0].out_of_range_count == 10  # still measured, just not judged
    empty = feature_drift(reference_profile(train), test.head(0))
    assert empty.overall == "OK" and empty.rows[0].psi is None


def test_json_round_trip_gives_the_same_report(shop) -> None:
    ref, cur = shop
    cur = cur.assign(price=cur["price"] + 20)
    profile = reference_profile(ref)
    loaded = json.loads(json.dumps(profile, allow_nan=False))
    assert feature_drift(loaded, cur).to_dict() == feature_drift(profile, cur).to_dict()
    json.dumps(feature_drift(loaded, cur).to_dict(), allow_nan=False)


def test_records_arrays_and_frames_agree() -> None:
    train, test = split(load_iris)
    profile = reference_profile(train)
    from_frame = feature_drift(profile, test).to_dict()
    assert feature_drift(profile, test.to_dict("records")).to_dict() == from_frame
    assert feature_drift(profile, test.to_numpy()).to_dict() == from_frame  # by position


def test_records_from_json_with_nulls() -> None:
    train, test = split(load_iris)
    records = json.loads(test.to_json(orient="records"))
    records[0]["sepal width (cm)"] = None
    del records[1]["petal width (cm)"]
    report = feature_drift(reference_profile(train), records)
    assert report["sepal width (cm)"].missing_rate_cur == pytest.approx(1 / len(records))
    assert report["petal width (cm)"].missing_rate_cur == pytest.approx(1 / len(records))
    assert report.overall == "OK"


def test_stricter_thresholds_flag_more() -> None:
    train, test = split(load_iris)
    shifted = test.assign(**{"sepal width (cm)": test["sepal width (cm)"] + 0.3})
    profile = reference_profile(train)
    default = feature_drift(profile, shifted)["sepal width (cm)"]
    relaxed = feature_drift(profile, shifted, DriftThresholds(psi_warn=5, psi_alert=10))
    assert default.status != "OK"
    assert relaxed["sepal width (cm)"].status == "OK"


def test_psi_smooths_empty_bins() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    value = psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
    assert np.isfinite(value) and value > 1


def test_report_views(shop) -> None:
    ref, cur = shop
    cur = cur.assign(price=cur["price"] + 40)
    report: DriftReport = feature_drift(reference_profile(ref), cur)
    assert [r.feature for r in report.rows] == ["price", "items", "country"]
    assert [r.status for r in report.rows] == ["ALERT", "OK", "OK"]
    page = report._repr_html_()
    assert "<table>" in page and "ALERT" in page and "price" in page
    data = report.to_dict()
    assert data["overall"] == "ALERT" and data["drifted_features"] == ["price"]
    assert data["thresholds"]["psi_alert"] == 0.2


def test_report_html_escapes_names_and_reasons() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"<b>x</b>": rng.normal(0, 1, 300)})
    page = feature_drift(reference_profile(ref), ref.assign(**{"<b>x</b>": ref["<b>x</b>"] + 5}))._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "distribution shift: PSI" in page and "1 of 1 features flagged" in page
