"""What notebooks write without options converts faithfully: exact ties, pandas categories, isotonic
calibration, NumPy functions, target encoding, binning, quantiles, distance-weighted neighbours."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from model_matrix.data import dataset, mixed_frame
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    OneHotEncoder,
    OrdinalEncoder,
    QuantileTransformer,
    SplineTransformer,
    StandardScaler,
    TargetEncoder,
)
from sklearn.svm import LinearSVC

from nbdeploy.convert.conversion import to_onnx
from nbdeploy.convert.fidelity import gated_conversion, onnx_predictions
from nbdeploy.errors import ConversionError
from nbdeploy.signature import from_sample

PRECISIONS = ["FP32", "FP64"]


def _predict(model, X_fit, X, precision: str = "FP32", threads: int = 1) -> dict[str, np.ndarray]:
    converted = to_onnx(model, from_sample(X_fit), precision)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(converted.onnx_bytes, options, providers=["CPUExecutionProvider"])
    return onnx_predictions(session, converted.signature, X)


def _assert_faithful(model, got: dict[str, np.ndarray], X, atol: float) -> None:
    """Labels equal on every row; probabilities within ``atol``, in [0, 1], rows summing to 1."""
    np.testing.assert_array_equal(got["label"], model.predict(X))
    proba = got["probabilities"].astype(np.float64)
    np.testing.assert_allclose(proba, model.predict_proba(X), atol=atol, rtol=0)
    assert proba.min() >= 0.0 and proba.max() <= 1.0
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def _ties(model, X) -> int:
    top = np.sort(model.predict_proba(X), axis=1)
    return int((top[:, -1] == top[:, -2]).sum())


@pytest.fixture(scope="module")
def cancer():
    return dataset("breast_cancer-df")


@pytest.mark.parametrize("model", [
    RandomForestClassifier(n_estimators=10, random_state=0),
    RandomForestClassifier(n_estimators=20, random_state=0),
    ExtraTreesClassifier(n_estimators=20, random_state=0),
    KNeighborsClassifier(n_neighbors=4),
], ids=["forest-10", "forest-20", "extra-trees-20", "knn-4"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("threads", [1, 2])
def test_exact_ties_get_the_first_class_as_in_scikit_learn(cancer, model, precision, threads) -> None:
    X_train, X_test, y_train, _ = cancer
    model.fit(X_train, y_train)
    assert _ties(model, X_test) > 0  # the held-out rows do hold exact 0.5 ties
    _assert_faithful(model, _predict(model, X_train, X_test, precision, threads), X_test, atol=1e-6)


def test_ties_among_three_classes_and_string_labels() -> None:
    X_train, X_test, y_train, _ = dataset("wine")
    names = np.array(["barolo", "grignolino", "barbera"])[y_train]
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=4)).fit(X_train, names)
    assert _ties(model, X_test) > 0
    _assert_faithful(model, _predict(model, X_train, X_test), X_test, atol=1e-6)


def test_a_forest_with_even_trees_passes_the_gate(cancer) -> None:
    X_train, X_test, y_train, _ = cancer
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(X_train, y_train)
    _, report = gated_conversion(model, X_train, X_test, measure_latency=False)
    assert report.passed and report.agreement == 1.0 and report.precision == "FP32"


# -- HistGradientBoosting on pandas categories ---------------------------------------------------
def _categorical_frame() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """The mixed frame with its text columns as categories; the test rows add a missing and an unseen
    city, and integer categories with missing values (so the model's encoder keeps them as floats)."""
    X, y, values = mixed_frame()
    X = X.drop(columns=["referrals", "newsletter"]).astype({"city": "category", "plan": "category"})
    X["floor"] = pd.Categorical(np.random.default_rng(4).integers(0, 5, len(X)) * 10)
    X.loc[X.index[::9], "floor"] = np.nan
    train, test = X.iloc[:420], X.iloc[420:].copy()
    test["city"] = test["city"].cat.add_categories(["rome"])
    test.loc[test.index[:5], "city"] = None
    test.loc[test.index[5:10], "city"] = "rome"
    return train, test, y, values


@pytest.mark.parametrize("precision", PRECISIONS)
def test_native_categorical_splits_route_categories_as_scikit_learn(precision) -> None:
    train, test, y, _ = _categorical_frame()
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(train, y[:420])
    assert model.is_categorical_.sum() == 4  # city, plan, tier, floor
    _assert_faithful(model, _predict(model, train, test, precision), test, atol=1e-6)


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_native_categorical_regression(loss, precision) -> None:
    train, test, _, values = _categorical_frame()
    model = HistGradientBoostingRegressor(loss=loss, max_iter=30, random_state=0).fit(train, values[:420])
    want = model.predict(test)
    got = _predict(model, train, test, precision)["label"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_three_classes_and_an_explicit_mask_on_ordinal_codes() -> None:
    train, test, _, values = _categorical_frame()
    y = np.digitize(values, [48, 56])
    prep = ColumnTransformer([("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                               ["city", "plan", "tier", "floor"]), ("num", "passthrough", ["age", "income"])])
    model = make_pipeline(prep, HistGradientBoostingClassifier(max_iter=20, categorical_features=[0, 1, 2, 3],
                                                               random_state=0)).fit(train, y[:420])
    _assert_faithful(model, _predict(model, train, test), test, atol=1e-6)


def test_a_bare_model_on_categories_deploys_through_the_gate() -> None:
    X_train, X_test, y_train, _ = dataset("mixed-cat")
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X_train, y_train)
    converted, report = gated_conversion(model, X_train, X_test, measure_latency=False)
    assert report.passed and report.agreement == 1.0
    assert {s.name: s.datatype for s in converted.signature.inputs}["city"] == "BYTES"


# -- isotonic calibration ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["breast_cancer", "iris"])
@pytest.mark.parametrize("estimator", [LogisticRegression(max_iter=5000),
                                       make_pipeline(StandardScaler(), LinearSVC())], ids=["logreg", "pipeline"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_isotonic_calibration_interpolates_as_scikit_learn(name, estimator, precision) -> None:
    X_train, X_test, y_train, _ = dataset(name)
    model = CalibratedClassifierCV(estimator, method="isotonic", cv=3).fit(X_train, y_train)
    _assert_faithful(model, _predict(model, X_train, X_test, precision), X_test,
                     atol=1e-12 if precision == "FP64" else 1e-5)


# -- FunctionTransformer with NumPy functions -----------------------------------------------------
@pytest.mark.parametrize(("func", "kw_args"), [
    (np.log1p, None), (np.log, None), (np.exp, None), (np.expm1, None), (np.sqrt, None), (np.abs, None),
    (np.clip, {"a_min": 0.5, "a_max": 20.0}), (np.clip, {"a_min": None, "a_max": 3.0}),
])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_numpy_functions_convert(func, kw_args, precision) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.lognormal(size=200), "b": rng.integers(1, 9, 200), "c": rng.normal(size=200)})
    X.loc[::7, "a"] = np.nan
    y = rng.normal(size=200)
    columns = ["c"] if func in (np.exp, np.expm1) else ["a", "b"]
    prep = ColumnTransformer([("f", FunctionTransformer(func, kw_args=kw_args), columns),
                              ("rest", "passthrough", ["c"])])
    model = make_pipeline(prep, SimpleImputer(), Ridge()).fit(X, y)
    got = _predict(model, X, X, precision)["label"]
    np.testing.assert_allclose(got, model.predict(X), rtol=1e-12 if precision == "FP64" else 1e-5, atol=1e-6)


@pytest.mark.parametrize(("transformer", "says"), [
    (FunctionTransformer(lambda x: np.log(x + 1)), "runs the Python function '<lambda>'"),
    (FunctionTransformer(np.sin), "np.log, np.log1p, np.exp, np.expm1, np.sqrt, np.abs, np.clip"),
    (FunctionTransformer(np.log1p, kw_args={"out": None}), "passes kw_args to np.log1p"),
    (FunctionTransformer(np.clip, kw_args={"a_min": 0, "a_max": 5, "casting": "unsafe"}),
     "np.clip with arguments 'casting'"),
])
def test_other_functions_are_refused_naming_the_step(transformer, says) -> None:
    X = pd.DataFrame({"a": np.arange(1.0, 41.0)})
    model = make_pipeline(ColumnTransformer([("log", transformer, ["a"])]), Ridge())
    where = r"pipeline step 'columntransformer' -> 'log' \(FunctionTransformer\)"
    with pytest.raises(ConversionError, match=where) as e:
        to_onnx(model.fit(X, np.arange(40.0)), from_sample(X))
    assert says in e.value.message


# -- encoders, binning, quantiles ------------------------------------------------------------------
@pytest.mark.parametrize("target", ["binary", "multiclass", "continuous"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_target_encoder_with_missing_and_unseen_categories(target, precision) -> None:
    X_train, X_test, y_train, _ = dataset("mixed")
    _, _, values, _ = dataset("mixed-reg")
    X_test = X_test.copy()
    X_test.loc[X_test.index[:3], "city"] = "rome"
    y = {"binary": y_train, "multiclass": np.digitize(values, [48, 56]), "continuous": values}[target]
    prep = ColumnTransformer([("te", TargetEncoder(), ["city", "plan", "tier", "visits"]),
                              ("age", SimpleImputer(), ["age"])])
    final = Ridge() if target == "continuous" else LogisticRegression(max_iter=1000)
    model = make_pipeline(prep, final).fit(X_train, y)
    got = _predict(model, X_train, X_test, precision)
    tolerance = 1e-12 if precision == "FP64" else 1e-5
    if target == "continuous":
        np.testing.assert_allclose(got["label"], model.predict(X_test), rtol=tolerance)
    else:
        _assert_faithful(model, got, X_test, atol=tolerance)


@pytest.mark.parametrize("encoder", [OneHotEncoder(), OrdinalEncoder()], ids=["onehot", "ordinal"])
def test_default_encoders_convert(encoder) -> None:
    X_train, X_test, y_train, _ = dataset("mixed")
    prep = ColumnTransformer([("num", SimpleImputer(), ["age", "income"]), ("cat", encoder, ["city", "plan", "tier"])])
    model = make_pipeline(prep, HistGradientBoostingClassifier(max_iter=10, random_state=0)).fit(X_train, y_train)
    converted = to_onnx(model, from_sample(X_train))
    session = ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])
    # Straight to ONNX Runtime: the rows hold only categories seen in training, which is all that
    # handle_unknown="error" accepts (scikit-learn raises on others, ONNX Runtime fails the call)
    feeds = converted.signature.feeds(converted.signature.encode(X_test))
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    _assert_faithful(model, got, X_test, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Bins whose width are too small")  # the binary column "sex"
@pytest.mark.parametrize("encode", ["onehot", "onehot-dense", "ordinal"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_kbins_discretizer_with_every_encoding(encode, precision) -> None:
    X_train, X_test, y_train, _ = dataset("diabetes-df")
    model = make_pipeline(KBinsDiscretizer(encode=encode), Ridge()).fit(X_train, y_train)
    got = _predict(model, X_train, pd.concat([X_test, X_train.iloc[:50]]), precision)["label"]  # rows on the edges
    np.testing.assert_allclose(got, model.predict(pd.concat([X_test, X_train.iloc[:50]])), rtol=1e-5)


def test_quantile_transformer_converts_in_moments_and_exactly(cancer) -> None:
    X_train, X_test, y_train, _ = cancer
    model = make_pipeline(QuantileTransformer(n_quantiles=300), LogisticRegression(max_iter=1000))
    model.fit(X_train, y_train)
    started = time.perf_counter()
    got = _predict(model, X_train, pd.concat([X_test, X_train.iloc[:40]]), "FP64")
    assert time.perf_counter() - started < 5  # skl2onnx's own converter takes ~25 s for these 30 columns
    _assert_faithful(model, got, pd.concat([X_test, X_train.iloc[:40]]), atol=1e-12)


def test_quantile_transformer_with_normal_output_is_refused(cancer) -> None:
    X_train, _, y_train, _ = cancer
    model = make_pipeline(QuantileTransformer(n_quantiles=50, output_distribution="normal"), LogisticRegression())
    with pytest.raises(ConversionError, match=r"QuantileTransformer.*inverse normal CDF.*'uniform'"):
        to_onnx(model.fit(X_train, y_train), from_sample(X_train))


@pytest.mark.parametrize("options", [
    {}, {"extrapolation": "linear"}, {"extrapolation": "continue"}, {"include_bias": False},
    {"degree": 2, "n_knots": 7, "knots": "quantile"}, {"handle_missing": "zeros"},
], ids=["default", "linear", "continue", "no-bias", "quantile-knots", "missing-zeros"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_spline_transformer(options, precision) -> None:
    X_train, X_test, y_train, _ = dataset("diabetes-df")
    rows = pd.concat([X_test, X_test * 2.5])  # half of them beyond the fitted range
    if options.get("handle_missing") == "zeros":
        X_train, rows = X_train.mask(X_train > 0.08), rows.mask(rows > 0.08)
    model = make_pipeline(SplineTransformer(**options), Ridge()).fit(X_train, y_train)
    got = _predict(model, X_train, rows, precision)["label"]
    np.testing.assert_allclose(got, model.predict(rows), rtol=1e-12 if precision == "FP64" else 1e-3)


def test_periodic_splines_are_refused_naming_the_step() -> None:
    X_train, _, y_train, _ = dataset("diabetes-df")
    model = make_pipeline(SplineTransformer(extrapolation="periodic"), Ridge()).fit(X_train, y_train)
    with pytest.raises(ConversionError, match=r"'splinetransformer' \(SplineTransformer\).*'periodic'"):
        to_onnx(model, from_sample(X_train))


# -- distance-weighted neighbours -------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_distance_weighted_neighbours_weigh_by_distance(cancer, precision) -> None:
    X_train, X_test, y_train, _ = cancer
    rows = pd.concat([X_test, X_train.iloc[:20]])  # training rows: neighbours at distance 0
    model = KNeighborsClassifier(weights="distance").fit(X_train, y_train)
    _assert_faithful(model, _predict(model, X_train, rows, precision), rows, atol=1e-5)
    values = X_train["mean area"].to_numpy()
    regressor = KNeighborsRegressor(weights="distance").fit(X_train, values)
    got = _predict(regressor, X_train, rows, precision)["label"]
    np.testing.assert_allclose(got, regressor.predict(rows), rtol=1e-5 if precision == "FP32" else 1e-6)
