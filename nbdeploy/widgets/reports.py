"""Notebook display of evaluation, gate and training reports.

The HTML is built by the result objects (``_repr_html_``); this module only wraps it.
A ``ReportWidget`` shows it as a live widget that ``update()`` can replace, and its
mimebundle also carries ``text/html``, so a saved notebook or static HTML export (where
widget views stay blank offline) still shows the report.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from nbdeploy.errors import InvalidInput

__all__ = ["ReportWidget", "report_bundle", "report_widget"]


def _check(result: Any) -> Any:
    if not callable(getattr(result, "_repr_html_", None)):
        raise InvalidInput(
            "expected an EvaluationResult, GateDecision or TrainResult, "
            f"got {type(result).__name__}"
        )
    return result


def _plain(result: Any) -> str:
    summary = getattr(result, "summary", None)
    return summary() if callable(summary) else repr(result)


def report_bundle(result: Any) -> dict[str, str]:
    """The report as a mimebundle, for ``IPython.display.display(bundle, raw=True)``."""
    _check(result)
    return {"text/html": result._repr_html_(), "text/plain": _plain(result)}


class ReportWidget(widgets.HTML):
    """An ``ipywidgets.HTML`` with one report; ``update(result)`` swaps it in place."""

    def __init__(self, result: Any, **kwargs: Any) -> None:
        super().__init__(value=report_bundle(result)["text/html"], **kwargs)
        self.result = result

    def update(self, result: Any) -> None:
        """Show another result (e.g. after a retrain) in the same output area."""
        self.value = report_bundle(result)["text/html"]
        self.result = result

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        return {**data, "text/html": self.value, "text/plain": _plain(self.result)}


def report_widget(result: Any) -> ReportWidget:
    """A widget showing ``result``'s HTML report, with a static ``text/html`` twin."""
    return ReportWidget(result)
