"""One validation path: the server, the client, the library predictor and the fidelity check decide alike.

One battery of frames with the mistakes of real work goes to all four: through the HTTP endpoint as
an outside client would send it (plain V2 JSON built from the frame's own values), through
``Deployment.predict``, through ``nbdeploy.load(...).predict`` and as the held-out data of a deploy's
fidelity check. Each must accept it with the same labels or refuse it with the same message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import nbdeploy
from nbdeploy.convert.fidelity import FidelityRefused, gated_conversion
from nbdeploy.errors import NbdeployError

pytestmark = pytest.mark.server


def customers(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "tenure": rng.uniform(0, 60, n).round(1),  # no missing values in the sample (imputed all the same)
        "income": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(10, 0.4, n)),  # imputed
        "plan": rng.choice(["basic", "plus", "pro"], n).astype(object),
        "city": pd.Series(rng.choice(["paris", "lyon", None], n), dtype="str"),
        "age": rng.integers(18, 80, n),
        "member": rng.random(n) < 0.4,
        "score": rng.normal(0, 1, n),  # passed through as it is: the model cannot take a missing value here
    })
    y = (X["tenure"] / 60 + X["member"] * 0.5 + rng.normal(0, 0.2, n) > 0.6).astype(int).to_numpy()
    return X, y


def pipeline() -> Pipeline:
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["tenure", "income", "age"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "city"]),
        ("flag", "passthrough", ["member", "score"]),
    ])
    return make_pipeline(prep, LogisticRegression(max_iter=500))


X, y = customers()
ROWS = X.iloc[:4].reset_index(drop=True)

BATTERY: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "as trained": lambda f: f,
    "columns in another order": lambda f: f[list(reversed(f.columns))],
    "strings in a number column": lambda f: f.assign(tenure=["ten", "twelve", "3", "4"]),
    "numbers in a text column": lambda f: f.assign(plan=[3, 4, 5, 6]),
    "a missing column": lambda f: f.drop(columns=["plan"]),
    "an extra column": lambda f: f.assign(churned=[0, 1, 0, 1]),
    "fractional numbers in an integer column": lambda f: f.assign(age=[30.5, 40.0, 50.0, 60.0]),
    "NaN in a column the sample had none in (imputed)": lambda f: f.assign(tenure=[1.0, np.nan, 3.0, 4.0]),
    "NaN where the model takes none": lambda f: f.assign(score=[0.1, np.nan, 0.3, 0.4]),
    "NaN where the model imputes": lambda f: f.assign(income=[np.nan, 1.0, np.nan, 2.0]),
    "None in a boolean column": lambda f: f.assign(member=pd.Series([True, None, False, True], dtype=object)),
    "pd.NA in a nullable integer column": lambda f: f.assign(age=pd.array([30, pd.NA, 50, 60], dtype="Int64")),
    "a nullable integer column without NA": lambda f: f.assign(age=pd.array([30, 40, 50, 60], dtype="Int64")),
    "a nullable boolean column": lambda f: f.assign(member=pd.array([True, False, True, False], dtype="boolean")),
    "None and pd.NA in a text column": lambda f: f.assign(city=pd.Series([None, pd.NA, "paris", "lyon"],
                                                                          dtype=object)),
    "a category column": lambda f: f.assign(plan=f["plan"].astype("category")),
}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    home = str(tmp_path_factory.mktemp("validation"))
    model = pipeline().fit(X, y)
    dep = nbdeploy.deploy(model, X, name="customers", home=home)
    yield {"dep": dep, "model": model, "home": home,
           "library": nbdeploy.load("customers", home=home),
           "inputs": {i["name"]: i["datatype"] for i in requests.get(dep.url, timeout=10).json()["inputs"]}}
    nbdeploy.shutdown(home)


def _json_value(v):
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def over_http(deployed, frame: pd.DataFrame):
    """What an outside V2 client sends: each column's own values, under the model's declared datatype."""
    types = {**{c: {"i": "INT64", "f": "FP64", "b": "BOOL"}.get(frame[c].dtype.kind, "BYTES") for c in frame.columns},
             **deployed["inputs"]}
    body = {"inputs": [{"name": c, "datatype": types[c], "shape": [len(frame), 1],
                        "data": [_json_value(v) for v in frame[c].astype(object)]} for c in frame.columns]}
    answer = requests.post(f"{deployed['dep'].url}/infer", json=body, timeout=30)
    if answer.status_code != 200:
        assert 400 <= answer.status_code < 500, answer.text
        return ("refused", answer.json()["error"])
    return ("answered", answer.json()["outputs"][0]["data"])


def _outcome(call):
    try:
        return ("answered", np.asarray(call()).tolist())
    except NbdeployError as exc:
        assert 400 <= exc.status < 500, exc.message
        return ("refused", exc.message)


def fidelity_check(deployed, frame: pd.DataFrame):
    """The fidelity check's decision on the data: refused as input, or taken (its labels are the library's:
    whether scikit-learn agrees with ONNX Runtime on that data is what the check then measures)."""
    def check():
        with contextlib.suppress(FidelityRefused):
            gated_conversion(deployed["model"], X, frame, measure_latency=False)
        return deployed["library"].predict(frame)
    return _outcome(check)


@pytest.mark.parametrize("case", list(BATTERY))
def test_the_four_places_decide_alike(deployed, case) -> None:
    frame = BATTERY[case](ROWS.copy())
    outcomes = {
        "server": over_http(deployed, frame),
        "client": _outcome(lambda: deployed["dep"].predict(frame)),
        "library": _outcome(lambda: deployed["library"].predict(frame)),
        "fidelity check": fidelity_check(deployed, frame),
    }
    decisions = {place: o[0] for place, o in outcomes.items()}
    assert len(set(decisions.values())) == 1, f"{case}: {outcomes}"
    details = {place: o[1] for place, o in outcomes.items()}
    if decisions["server"] == "refused":
        assert len(set(details.values())) == 1, f"{case}: messages differ: {details}"
    else:
        assert all(d == details["library"] for d in details.values()), f"{case}: labels differ: {details}"


def test_refusals_name_the_input_the_value_and_what_was_expected(deployed) -> None:
    frame = BATTERY["strings in a number column"](ROWS.copy())
    with pytest.raises(NbdeployError, match=r"^input 'tenure': expected numbers \(FP(32|64)\), got the text 'ten' "
                                            r"at row 0$"):
        deployed["library"].predict(frame)
