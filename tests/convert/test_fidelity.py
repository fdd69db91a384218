"""The fidelity gate: measured agreement, automatic double precision, refusals that say what to do."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from model_matrix.cases import dataset, tumour_pipeline
from sklearn.linear_model import LogisticRegression, Ridge

import nbdeploy
from nbdeploy.convert.fidelity import FidelityRefused, check, gated_conversion, onnx_predictions
from nbdeploy.display.conversion import conversion_bundle, conversion_html
from nbdeploy.store import Store


@pytest.fixture(scope="module")
def tumours():
    X_train, X_test, y_train, y_test = dataset("tumours")
    return X_train, X_test, y_train, y_test, tumour_pipeline().fit(X_train, y_train)


class Overconfident(LogisticRegression):
    """Sharper probabilities than the logistic converter it is registered with computes (labels agree)."""

    def predict_proba(self, X):
        p = super().predict_proba(X) ** 2
        return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def unfaithful():
    """A model no conversion gets right: its registered converter computes something else."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.linear_classifier import convert_sklearn_linear_classifier
    from skl2onnx.shape_calculators.linear_classifier import calculate_linear_classifier_output_shapes

    update_registered_converter(Overconfident, "NbdeployTestOverconfident", calculate_linear_classifier_output_shapes,
                                convert_sklearn_linear_classifier,
                                options={"zipmap": [True, False, "columns"], "nocl": [True, False],
                                         "raw_scores": [True, False]})
    X_train, X_test, y_train, _ = dataset("breast_cancer")
    return X_train, X_test, Overconfident(max_iter=5000).fit(X_train, y_train)


def test_single_precision_failing_selects_double_precision_by_itself(tumours) -> None:
    X_train, X_test, _, _, model = tumours
    converted, report = gated_conversion(model, X_train, X_test, measure_latency=False)
    assert report.passed and report.precision == "FP64" and converted.precision == "FP64"
    assert len(report.attempts) == 2 and report.attempts[0].startswith("FAILED (FP32)")
    assert "double precision passed" in report.note and report.max_abs_diff < 1e-6
    assert report.agreement == 1.0 and report.n == len(X_test)


def test_the_gate_is_configurable(tumours) -> None:
    X_train, X_test, _, _, model = tumours
    _, report = gated_conversion(model, X_train, X_test, max_diff=0.5, measure_latency=False)
    assert report.passed and report.precision == "FP32"
    assert report.thresholds == {"min_agreement": 0.999, "max_proba_diff": 0.5}


def test_no_faithful_conversion_is_refused_with_the_worst_rows(unfaithful) -> None:
    X_train, X_test, model = unfaithful
    with pytest.raises(FidelityRefused) as caught:
        gated_conversion(model, X_train, X_test, measure_latency=False)
    message = caught.value.message
    assert "does not predict what the scikit-learn model predicts" in message
    assert "FAILED (FP32)" in message and "FAILED (FP64)" in message
    assert "Worst rows" in message and "probability diff" in message
    assert "force=True (--force)" in message and "relax the gate" in message
    report = caught.value.report
    assert not report.passed and len(report.worst_rows) == 5 and report.n_disagreeing > 0
    diffs = [r["diff"] for r in report.worst_rows if not r["labels_differ"]]
    assert diffs == sorted(diffs, reverse=True)  # worst first (rows whose label differs come before all)


def test_force_returns_the_best_conversion_with_its_figures(unfaithful) -> None:
    X_train, X_test, model = unfaithful
    converted, report = gated_conversion(model, X_train, X_test, force=True)
    assert report.forced and not report.passed and "deployed anyway" in report.note
    assert report.summary().startswith("FAILED, deployed with force")
    assert converted.onnx_bytes and report.latency


def test_regression_is_judged_on_relative_difference() -> None:
    X_train, X_test, y_train, _ = dataset("diabetes")
    model = Ridge().fit(X_train, y_train * 1e6)  # large values: absolute float32 error is large, relative is not
    converted, report = gated_conversion(model, X_train, X_test, measure_latency=False)
    assert report.passed and report.task == "regression" and report.max_rel_diff < 1e-6
    assert report.max_abs_diff > 1e-3 and report.agreement is None
    import onnxruntime as ort

    session = ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])
    strict = check(model, session, converted.signature, "regression", X_test, "FP32", max_diff=1e-12)
    assert not strict.passed and strict.n_disagreeing > 0
    assert len(strict.disagreeing_rows) == min(strict.n_disagreeing, 20)
    assert strict.worst_rows and strict.worst_rows[0]["diff"] == pytest.approx(strict.max_rel_diff)


def test_latency_is_measured_for_one_and_1000_rows(tumours) -> None:
    X_train, X_test, _, _, model = tumours
    _, report = gated_conversion(model, X_train, X_test)
    assert set(report.latency) == {"sklearn_1", "onnx_1", "sklearn_1000", "onnx_1000"}
    assert all(v > 0 for v in report.latency.values())
    assert report.onnx_bytes > 1000 and report.convert_seconds > 0


def test_the_conversion_report_renders_without_a_widget_renderer(tumours) -> None:
    X_train, X_test, _, _, model = tumours
    _, report = gated_conversion(model, X_train, X_test)
    page = conversion_html(report.to_dict())
    for text in ("conversion report", "passed", "FP64", "double precision passed", "KiB", "1,000 rows",
                 "scikit-learn", "ONNX Runtime", "labels agree on 100.00%"):
        assert text in page
    bundle = conversion_bundle(report.to_dict())
    assert "text/html" in bundle and "FP64" in bundle["text/plain"]
    assert report._repr_mimebundle_()["text/html"] == page


@pytest.mark.server
def test_the_mixed_frame_deploys_from_the_magic_with_no_option(tumours, tmp_path) -> None:
    """Numbers with NaN, two string categoricals (one with missing values), a bool and
    HistGradientBoosting: deployed by ``%deploy`` with no option, faithful on held-out data."""
    X_train, X_test, _, _, model = tumours
    shell = InteractiveShell()  # its own shell: the global test shell is started once, by test_magics
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.user_ns.update({"model": model, "X_train": X_train})
    shell.run_line_magic("config", f"DeployMagics.home = {str(tmp_path)!r}")
    try:
        shell.run_line_magic("deploy", "model --name tumours --sample X_train")
        dep = nbdeploy.get("tumours", home=str(tmp_path))
        meta = Store(str(tmp_path)).version("tumours", dep.version).meta
        assert meta["precision"] == "FP64" and meta["fidelity"]["passed"]
        assert "double precision" in meta["fidelity"]["note"]
        np.testing.assert_array_equal(dep.predict(X_test), model.predict(X_test))
        assert np.abs(dep.predict_proba(X_test) - model.predict_proba(X_test)).max() <= 1e-4
        assert X_test["clinic"].isna().any() and X_test["mean radius"].isna().any()
    finally:
        nbdeploy.shutdown(str(tmp_path))


@pytest.mark.server
def test_a_refused_deploy_stores_nothing_and_force_records_the_figures(unfaithful, tmp_path) -> None:
    X_train, X_test, model = unfaithful
    home = str(tmp_path)
    with pytest.raises(FidelityRefused):
        nbdeploy.deploy(model, X_train, name="sharp", test=X_test, home=home)
    assert Store(home).model_names() == []
    try:
        dep = nbdeploy.deploy(model, X_train, name="sharp", test=X_test, home=home, force=True)
        fidelity = Store(home).version("sharp", dep.version).meta["fidelity"]
        assert fidelity["forced"] and not fidelity["passed"] and fidelity["worst_rows"]
        np.testing.assert_allclose(dep.predict_proba(X_test[:5]),
                                   onnx_predictions_for(dep, X_test[:5]), atol=1e-6)
    finally:
        nbdeploy.shutdown(home)


def onnx_predictions_for(dep, X):
    """What the stored graph answers in-process, to compare with the endpoint."""
    import onnxruntime as ort

    record = Store(dep.home).version(dep.name, dep.version)
    session = ort.InferenceSession(record.onnx_path.read_bytes(), providers=["CPUExecutionProvider"])
    return onnx_predictions(session, dep.signature, X)["probabilities"]
