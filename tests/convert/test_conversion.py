"""scikit-learn -> ONNX: graph shape, column names, missing values, double precision, clear failures."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import LinearSVC

import nbdeploy
from nbdeploy.convert.conversion import to_onnx
from nbdeploy.convert.fidelity import onnx_predictions
from nbdeploy.convert.precision import double_threshold
from nbdeploy.errors import ConversionError
from nbdeploy.signature import MISSING_STRING, from_sample
from nbdeploy.store import Store


def _session(converted):
    return ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])


def _frame(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "sepal length (cm)": rng.normal(5, 1, n),
        "1-count": rng.integers(0, 9, n),
        "flag": rng.random(n) < 0.5,
        "city": pd.array(rng.choice(["paris", "lyon", "nice"], n), dtype="str"),
    })
    X.loc[rng.random(n) < 0.1, "city"] = None
    X.loc[rng.random(n) < 0.1, "sepal length (cm)"] = np.nan
    y = ((X["flag"].to_numpy() ^ (X["city"] == "nice").to_numpy()) | (X["1-count"] > 6).to_numpy()).astype(int)
    return X, y


def _prep(encoder) -> ColumnTransformer:
    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["sepal length (cm)", "1-count"]),
        ("flag", "passthrough", ["flag"]),
        ("cat", encoder, ["city"]),
    ])


def test_inputs_keep_the_users_names_and_types() -> None:
    X, y = _frame()
    model = Pipeline([("prep", _prep(OneHotEncoder(handle_unknown="ignore"))), ("clf", LogisticRegression())])
    converted = to_onnx(model.fit(X, y), from_sample(X))
    assert converted.signature.names == list(X.columns)
    graph = onnx.load_model_from_string(converted.onnx_bytes).graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert types == {s.onnx_name: t for s, t in zip(converted.signature.inputs, (
        onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.STRING), strict=True)}
    assert [o.name for o in graph.output] == ["label", "probabilities"]
    assert converted.outputs == ["label", "probabilities"] and converted.classes == [0, 1]


@pytest.mark.parametrize("encoder", [
    OneHotEncoder(handle_unknown="ignore"),
    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
    make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
    make_pipeline(SimpleImputer(strategy="constant", fill_value="unknown"),
                  OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)),
], ids=["onehot", "ordinal", "impute-most-frequent", "impute-constant"])
@pytest.mark.parametrize("precision", ["FP32", "FP64"])
def test_missing_strings_mean_in_onnx_what_they_mean_in_sklearn(encoder, precision) -> None:
    X, y = _frame()
    model = Pipeline([("prep", _prep(encoder)), ("clf", HistGradientBoostingClassifier(max_iter=10))]).fit(X, y)
    converted = to_onnx(model, from_sample(X), precision)
    test, _ = _frame(seed=1)
    test.loc[0, "city"] = "brest"  # never seen in training
    got = onnx_predictions(_session(converted), converted.signature, test)
    np.testing.assert_array_equal(got["label"], model.predict(test))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(test), atol=1e-5)


def test_forests_send_missing_values_where_sklearn_does() -> None:
    X, y = _frame()
    numeric = X[["sepal length (cm)", "1-count"]]
    model = RandomForestClassifier(n_estimators=15, random_state=0).fit(numeric, y)
    converted = to_onnx(model, from_sample(numeric))
    got = onnx_predictions(_session(converted), converted.signature, numeric)
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(numeric), atol=1e-5)


def test_the_double_graph_has_no_float_imputer_and_double_tree_thresholds() -> None:
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(100, 3)), columns=list("abc"))
    X.iloc[::5, 0] = np.nan
    y = (X["b"] > 0).astype(int)
    model = make_pipeline(SimpleImputer(strategy="median"), HistGradientBoostingClassifier(max_iter=5)).fit(X, y)
    converted = to_onnx(model, from_sample(X), "FP64")
    proto = onnx.load_model_from_string(converted.onnx_bytes)
    ops = [n.op_type for n in proto.graph.node]
    assert "Imputer" not in ops and {"IsNaN", "Where"} <= set(ops)
    tree = next(n for n in proto.graph.node if n.op_type == "TreeEnsembleClassifier")
    assert "nodes_values_as_tensor" in {a.name for a in tree.attribute}
    assert converted.signature.inputs[0].datatype == "FP64" and converted.precision == "FP64"
    got = onnx_predictions(_session(converted), converted.signature, X)
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), atol=1e-6)


@given(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e-3, 1e-3))
def test_double_threshold_matches_sklearns_float32_comparison(t, offset) -> None:
    w = double_threshold(t)
    for x in (w, np.nextafter(w, np.inf), np.nextafter(w, -np.inf), t, t + offset * abs(t)):
        assert (x <= w) == (float(np.float32(x)) <= t)  # sklearn: float32 feature vs double threshold


def test_text_is_lowercased_like_python_without_the_en_us_locale() -> None:
    X = pd.DataFrame({"review": pd.array(["GREAT École", "awful ÉCOLE", "great thing", "Awful day"] * 10,
                                         dtype="str")})
    y = np.array([1, 0, 1, 0] * 10)
    model = Pipeline([("prep", ColumnTransformer([("text", TfidfVectorizer(), "review")])),
                      ("clf", LogisticRegression())]).fit(X, y)
    converted = to_onnx(model, from_sample(X))
    got = onnx_predictions(_session(converted), converted.signature, X)
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), atol=1e-5)


def test_classifiers_without_probabilities_serve_labels_only() -> None:
    X, y = _frame()
    numeric = X[["1-count"]]
    converted = to_onnx(make_pipeline(StandardScaler(), LinearSVC()).fit(numeric, y), from_sample(numeric))
    assert converted.outputs == ["label"]
    assert [o.name for o in _session(converted).get_outputs()] == ["label"]


class Doubler(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X * 2


@pytest.mark.parametrize(("step", "where", "advice"), [
    (("text", FunctionTransformer(lambda frame: frame * 2), ["1-count"]),
     "pipeline step 'prep' -> 'text' (FunctionTransformer)", "apply the function to the data before the model"),
    (("text", FunctionTransformer(np.sin), ["1-count"]),
     "pipeline step 'prep' -> 'text' (FunctionTransformer)", "np.log, np.log1p"),
    (("double", Doubler(), ["1-count"]), "pipeline step 'prep' -> 'double' (Doubler)",
     "skl2onnx.update_registered_converter"),
])
def test_unsupported_steps_are_named_by_their_path(step, where, advice) -> None:
    X, y = _frame()
    model = Pipeline([("prep", ColumnTransformer([step, ("num", "passthrough", ["flag"])])),
                      ("clf", LogisticRegression())]).fit(X, y)
    with pytest.raises(ConversionError, match=f"cannot convert {re.escape(where)}.*{re.escape(advice)}"):
        to_onnx(model, from_sample(X))


def test_an_estimator_skl2onnx_cannot_convert_is_named() -> None:
    X, y = _frame()
    numeric = X[["1-count"]]
    with pytest.raises(ConversionError, match=r"pipeline step 'kernelridge' \(KernelRidge\).*replace it"):
        to_onnx(make_pipeline(StandardScaler(), KernelRidge()).fit(numeric, y), from_sample(numeric))


def test_a_failing_converter_is_traced_to_its_step() -> None:
    X = pd.DataFrame({"n": np.random.default_rng(0).choice([1.0, 2.0, np.nan], 60)})
    y = np.arange(60) % 2
    model = Pipeline([("prep", ColumnTransformer([("cat", OneHotEncoder(), ["n"])])),
                      ("clf", LogisticRegression())]).fit(X, y)
    with pytest.raises(ConversionError, match=r"pipeline step 'prep' -> 'cat' \(OneHotEncoder\).*change that step"):
        to_onnx(model, from_sample(X))


def test_text_needs_a_column_transformer() -> None:
    X, y = _frame()
    with pytest.raises(ConversionError, match=r"column 'city' holds text.*ColumnTransformer"):
        to_onnx(LogisticRegression().fit(X[["1-count"]], y), from_sample(X))


def test_nothing_is_stored_when_conversion_fails(tmp_path) -> None:
    X, y = _frame()
    model = Pipeline([("prep", ColumnTransformer([("double", Doubler(), ["1-count"])])),
                      ("clf", LogisticRegression())]).fit(X, y)
    with pytest.raises(ConversionError, match="Doubler"):
        nbdeploy.deploy(model, X, name="broken", home=str(tmp_path))
    assert Store(str(tmp_path)).model_names() == []
    assert not list(tmp_path.glob("models/*"))


def test_the_missing_sentinel_is_documented_in_the_signature() -> None:
    X, y = _frame()
    model = Pipeline([("prep", _prep(OneHotEncoder(handle_unknown="ignore"))), ("clf", LogisticRegression())])
    converted = to_onnx(model.fit(X, y), from_sample(X))
    city = next(i for i in converted.signature.to_dict()["inputs"] if i["name"] == "city")
    assert city["missing"] == MISSING_STRING and city["datatype"] == "BYTES"
