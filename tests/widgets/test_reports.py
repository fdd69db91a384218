"""widgets/reports.py: thin wrappers that show a result's own HTML report."""

from __future__ import annotations

import ipywidgets as widgets
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from nbdeploy.errors import InvalidInput
from nbdeploy.evaluation import evaluate
from nbdeploy.gate import compare
from nbdeploy.training import train
from nbdeploy.widgets.reports import ReportWidget, report_bundle, report_widget

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def results():
    X, y = load_iris(return_X_y=True, as_frame=True)
    run = train(make_pipeline(StandardScaler(), LogisticRegression()), X, y, stratify=True)
    stump = DecisionTreeClassifier(max_depth=1).fit(run.X_train, run.y_train)
    weak = evaluate(stump, run.X_test, run.y_test)
    return {"evaluation": run.evaluation, "train": run,
            "gate": compare(run.evaluation, weak)}


@pytest.mark.parametrize("kind", ["evaluation", "train", "gate"])
def test_bundle_has_the_result_html_and_a_plain_summary(results, kind):
    result = results[kind]
    bundle = report_bundle(result)
    assert set(bundle) == {"text/html", "text/plain"}
    assert bundle["text/html"].startswith("<div class=\"nbdeploy-")
    assert bundle["text/plain"] == result.summary()
    assert "\n" not in bundle["text/plain"]


def test_bundle_html_is_the_result_repr(results):
    result = results["evaluation"]  # classification report: no PNG, so byte-equal
    assert report_bundle(result)["text/html"] == result._repr_html_()


def test_widget_shows_the_report_and_carries_a_static_twin(results):
    widget = report_widget(results["evaluation"])
    assert isinstance(widget, widgets.HTML) and isinstance(widget, ReportWidget)
    assert widget.value == results["evaluation"]._repr_html_()
    bundle = widget._repr_mimebundle_()
    assert WIDGET_MIME in bundle
    assert bundle["text/html"] == widget.value
    assert bundle["text/plain"] == results["evaluation"].summary()
    widget.close()


def test_update_swaps_the_report_in_place(results):
    widget = report_widget(results["evaluation"])
    model_id = widget.model_id
    widget.update(results["gate"])
    assert "REFUSED" in widget.value and widget.model_id == model_id
    assert widget._repr_mimebundle_()["text/plain"].startswith("REFUSED")
    widget.close()


def test_regression_report_embeds_its_plot():
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    result = evaluate(Ridge().fit(X, y), X, y)
    assert "data:image/png;base64," in report_bundle(result)["text/html"]


@pytest.mark.parametrize("thing", [None, {"accuracy": 1.0}, "report"])
def test_non_results_are_invalid_input(thing):
    with pytest.raises(InvalidInput, match="expected an EvaluationResult"):
        report_bundle(thing)
    with pytest.raises(InvalidInput):
        report_widget(thing)
