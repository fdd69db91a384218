"""Run the coverage matrix through a real server and write ``docs/supported-models.md`` from it.

    PYTHONPATH=tests python -m model_matrix                                   # run, print the table
    PYTHONPATH=tests python -m model_matrix --write docs/supported-models.md  # run, regenerate the page
    PYTHONPATH=tests python -m model_matrix --check docs/supported-models.md  # run, fail if the page is stale

Every row is fitted, deployed with :func:`nbdeploy.deploy` into one store (one server), and then
called over HTTP: the endpoint's answers must match scikit-learn's within the fidelity gate.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_matrix.cases import Case, cases, dataset

HEADER = ["Row", "Family", "Model", "Data", "Status", "Precision", "Label agreement", "Max diff",
          "1-row speed-up"]
COMMAND = "PYTHONPATH=tests python -m model_matrix --write docs/supported-models.md"


@dataclass
class Row:
    """One case's outcome: the fidelity figures of its deploy and whether the endpoint agreed."""

    case: str
    family: str
    model: str
    dataset: str
    expect: str
    status: str = "error"  # passed | refused | unsupported | failed | skipped | error
    precision: str = ""
    n: int = 0
    agreement: float | None = None
    max_diff: float | None = None  # probabilities (classification) or relative (regression)
    diff_kind: str = ""  # probability | relative | ""
    latency: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        """The row behaves as the matrix expects (or cannot run here)."""
        return self.status in (self.expect, "skipped")


def run_case(case: Case, home: str) -> Row:
    """Fit, deploy and call one case; never raises for the case's own failures."""
    from nbdeploy import api
    from nbdeploy.convert.boosters import available
    from nbdeploy.convert.fidelity import FidelityRefused
    from nbdeploy.errors import ConversionError, NbdeployError

    row = Row(case.name, case.family, case.model, case.dataset, case.expect)
    if case.requires and not available().get(case.requires):
        row.status, row.detail = "skipped", f"{case.requires} not installed (pip install nbdeploy[boosting])"
        return row
    started = time.perf_counter()
    X_train, X_test, y_train, _ = dataset(case.dataset)
    model = case.build().fit(X_train, y_train)
    try:
        deployment = api.deploy(model, X_train, name=case.name, test=X_test, home=home)
    except FidelityRefused as exc:
        _figures(row, exc.report.to_dict())
        row.status, row.detail = "refused", exc.report.attempts[-1] if exc.report.attempts else ""
    except ConversionError as exc:
        row.status, row.detail = "unsupported", exc.message
    except NbdeployError as exc:  # converted and stored, but the server did not take it
        row.status, row.detail = "failed", exc.message
    else:
        _figures(row, deployment.fidelity.to_dict() if deployment.fidelity else {})
        try:
            row.status, row.detail = _endpoint_check(model, deployment, X_test)
        except NbdeployError as exc:
            row.status, row.detail = "failed", f"calling the endpoint: {exc.message}"
    row.seconds = time.perf_counter() - started
    return row


def _figures(row: Row, report: dict[str, Any]) -> None:
    row.precision = report.get("precision", "")
    row.n = report.get("n", 0)
    row.agreement = report.get("agreement")
    row.latency = report.get("latency") or {}
    if report.get("task") == "regression":
        row.max_diff, row.diff_kind = report.get("max_rel_diff"), "relative"
    elif report.get("task") == "classification" and report.get("thresholds", {}).get("max_proba_diff") is not None:
        row.max_diff, row.diff_kind = report.get("max_abs_diff"), "probability"


def _endpoint_check(model: Any, deployment: Any, X: Any) -> tuple[str, str]:
    """The deployed endpoint, called over HTTP, answers like scikit-learn within the gate."""
    from nbdeploy.convert.conversion import has_probabilities
    from nbdeploy.convert.fidelity import MAX_DIFF, MIN_AGREEMENT

    want = np.asarray(model.predict(X))
    have = np.asarray(deployment.predict(X))
    if deployment.fidelity.task == "regression":
        rel = np.abs(want.astype(float) - have.astype(float)) / np.maximum(np.abs(want.astype(float)), 1.0)
        return ("passed", "") if rel.max() <= MAX_DIFF else ("failed", f"endpoint relative diff {rel.max():.3g}")
    agree = float(np.mean([str(a) == str(b) for a, b in zip(want, have, strict=True)]))
    if agree < MIN_AGREEMENT:
        return "failed", f"endpoint labels agree on {agree:.2%}"
    if has_probabilities(model):
        served = np.asarray(deployment.predict_proba(X), dtype=np.float64)
        diff = float(np.abs(np.asarray(model.predict_proba(X)) - served).max())
        if diff > MAX_DIFF:
            return "failed", f"endpoint probabilities differ by {diff:.3g}"
        if served.min() < 0 or served.max() > 1 or np.abs(served.sum(axis=1) - 1).max() > 1e-6:
            return "failed", "endpoint probabilities leave [0, 1] or do not sum to 1"
    return "passed", ""


def run_matrix(home: str | None = None, names: list[str] | None = None) -> list[Row]:
    """Run the selected cases (all by default) into one store; stops the server when it made the store."""
    import tempfile

    from nbdeploy import api

    own = home is None
    home = home or tempfile.mkdtemp(prefix="nbdeploy-matrix-")
    try:
        return [run_case(c, home) for c in cases() if names is None or c.name in names]
    finally:
        if own:
            api.shutdown(home)


# -- the page ---------------------------------------------------------------------------------
def _fmt(value: float | None, kind: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.2%}" if kind == "pct" else f"{value:.1e}"


def _speedup(latency: dict[str, float]) -> str:
    sk, ort = latency.get("sklearn_1"), latency.get("onnx_1")
    return f"{sk / ort:.0f}×" if sk and ort else "–"


def summary(rows: list[Row]) -> dict[str, Any]:
    """Rows behaving as expected, and the worst figure among the rows that passed."""
    ran = [r for r in rows if r.status != "skipped"]
    passed = [r for r in ran if r.status == "passed"]
    worst = max((r for r in passed if r.max_diff is not None), key=lambda r: r.max_diff or 0.0, default=None)
    lowest = min((r for r in passed if r.agreement is not None), key=lambda r: r.agreement or 0.0, default=None)
    count = {status: sum(r.status == status for r in ran) for status in ("refused", "unsupported")}
    return {"rows": len(rows), "ran": len(ran), "as_expected": sum(r.ok for r in ran), "passed": len(passed),
            **count, "fp64": sum(r.precision == "FP64" for r in passed),
            "worst_diff": (worst.max_diff, worst.diff_kind, worst.case) if worst else None,
            "lowest_agreement": (lowest.agreement, lowest.case) if lowest else None}


def render(rows: list[Row]) -> str:
    """The markdown page: how to read it, the summary, the table, and why rows did not pass."""
    s = summary(rows)
    worst, lowest = s["worst_diff"], s["lowest_agreement"]
    figures = []
    if worst:
        figures.append(f"worst difference among passing rows: {worst[0]:.1e} ({worst[1]}) on `{worst[2]}`")
    if lowest:
        figures.append(f"lowest label agreement: {lowest[0]:.2%} on `{lowest[1]}`")
    lines = [
        "# Supported models",
        "",
        "Generated by the coverage matrix (`tests/model_matrix/cases.py`); every row is fitted, deployed with",
        "`nbdeploy.deploy()` through a real server, and called over HTTP. Regenerate with:",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"**{s['passed']} of {s['ran']} rows deploy faithfully** ({s['fp64']} of them in double precision, chosen",
        f"by the fidelity gate); {s['refused']} row(s) are refused by the gate and {s['unsupported']} before "
        "converting, as expected" + (f"; {'; '.join(figures)}." if figures else "."),
        "",
        "Status: **passed** = the fidelity gate passed (labels agree on ≥ 99.9 % of held-out rows, probabilities",
        "within 1e-4, regression values within 1e-4 relative) and the endpoint answered the same; **refused** = no",
        "conversion passed the gate, so `deploy()` refuses it (use `force=True` to serve it anyway);",
        "**unsupported** = `deploy()` refuses the model before converting it, naming the step and what to do",
        "instead (below); **failed** = a row that should pass and does not. Precision is what the served graph",
        "computes in. *Max diff* is the largest probability difference (classifiers) or relative difference",
        "(regressors). *1-row speed-up* is scikit-learn's single-row latency over ONNX Runtime's, measured during",
        "the deploy on the machine that generated this page (indicative only). Rows marked *exact ties* hold",
        "held-out rows whose two best classes have exactly the same probability: the served label is the first",
        "of them, as scikit-learn's.",
        "",
        "Served probabilities are in [0, 1] and each row sums to 1 (within 1e-6), as float32 when the graph",
        "computes in FP32 and float64 in FP64, from the endpoint, `Deployment.predict_proba` and `nbdeploy.load`",
        "alike. Encoders that refuse unknown categories (`OneHotEncoder()` and `OrdinalEncoder()` as scikit-learn",
        "makes them) deploy: the categories they know are in the model metadata (`parameters.input_details`),",
        "and a request with another value gets a 400 naming the input and the value, as scikit-learn raises.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for r in rows:
        cells = [f"`{r.case}`", r.family, r.model, r.dataset, r.status, r.precision or "–",
                 _fmt(r.agreement, "pct"), _fmt(r.max_diff), _speedup(r.latency)]
        lines.append("| " + " | ".join(cells) + " |")
    others = [r for r in rows if r.status not in ("passed", "skipped") and r.detail]
    if others:
        lines += ["", "## Rows that do not pass", ""]
        lines += [f"- `{r.case}` ({r.status}): {_one_line(r.detail)}" for r in others]
    lines += ["", "Estimators outside this list may convert too: the fidelity gate checks every deploy.", ""]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """A message as one markdown line (no store paths or ports: they change from run to run)."""
    text = " ".join(text.split())
    return re.sub(r"'[^']*nbdeploy-matrix-[^']*'|https?://127\.0\.0\.1:\d+", "…", text)


def parse(text: str) -> dict[str, dict[str, str]]:
    """The table of a generated page, by row name."""
    table: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if m:
            cells = [c.strip() for c in m.group(2).split("|")]
            table[m.group(1)] = dict(zip(HEADER[1:], cells, strict=False))
    return table


def stale(rows: list[Row], text: str) -> list[str]:
    """Differences between a page and a run: rows, status and precision must match (figures vary)."""
    page = parse(text)
    problems = [f"{r.case}: missing from the page" for r in rows if r.case not in page]
    problems += [f"{name}: on the page but not in the matrix" for name in page if name not in {r.case for r in rows}]
    for r in rows:
        shown = page.get(r.case)
        if shown is None or r.status == "skipped":
            continue
        for key, value in (("Status", r.status), ("Precision", r.precision or "–")):
            if shown.get(key) != value:
                problems.append(f"{r.case}: page says {key} {shown.get(key)!r}, the matrix gives {value!r}")
    return problems
