"""HTML of the lifecycle's results: evaluation, promotion gate, training run and retrain.

The result objects hold data only; their ``_repr_html_`` calls the function here, so the same
HTML shows in a live kernel, a saved notebook, nbconvert's static HTML and GitHub. Figures are
``matplotlib.figure.Figure`` objects (no pyplot state, safe from threads) embedded as PNG.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbdeploy.lifecycle.evaluation import EvaluationResult
    from nbdeploy.lifecycle.gate import GateDecision
    from nbdeploy.lifecycle.training import TrainResult

FLEX = '<div style="display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start">'
GREEN, RED = "#1a7f37", "#cf222e"


def fmt(v: Any) -> str:
    """A cell value: floats to four places, None as a dash, everything else escaped."""
    if v is None:
        return "—"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def html_table(head: list[Any], rows: list[list[Any]], caption: str = "") -> str:
    """An HTML table whose first column is a row header; values go through :func:`fmt`."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(f"<tr><th>{fmt(r[0])}</th>" + "".join(f"<td>{fmt(c)}</td>" for c in r[1:]) + "</tr>"
                   for r in rows)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def png_data_uri(fig: Any) -> str:
    """Figure -> ``<img>`` with the PNG embedded, so saved notebooks keep the plot."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}"/>'


def evaluation_figure(result: EvaluationResult) -> Any:
    """A matplotlib ``Figure``: the confusion heatmap, or the prediction-error plots."""
    from matplotlib.figure import Figure
    from sklearn import metrics as skm

    title = result.name or result.task
    if result.task == "classification":
        fig = Figure(figsize=(4.2, 3.6), layout="constrained")
        ax = fig.add_subplot()
        rotate = len(result.classes or ()) > 6
        skm.ConfusionMatrixDisplay.from_predictions(
            result.y_true, result.y_pred, labels=result.classes, ax=ax, colorbar=False,
            cmap="Blues", xticks_rotation="vertical" if rotate else "horizontal")
        ax.set_title(title)
        return fig
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    for ax, kind in zip(fig.subplots(1, 2), ("actual_vs_predicted", "residual_vs_predicted"), strict=True):
        skm.PredictionErrorDisplay.from_predictions(result.y_true, result.y_pred, kind=kind, ax=ax, random_state=0)
    fig.suptitle(title)
    return fig


def evaluation_html(result: EvaluationResult) -> str:
    """Metrics, per-class figures, the confusion matrix or residuals, and (regression) the plots."""
    primary = result.primary_metric
    rows = [[f"{k} (primary)" if k == primary else k, v] for k, v in result.metrics.items()]
    parts = [html_table(["metric", "value"], rows, "metrics")]
    if result.per_class is not None:
        rows = [[c, *m.values()] for c, m in result.per_class.items()]
        parts.append(html_table(["class", "precision", "recall", "f1", "support"], rows, "per class"))
    if result.confusion is not None and result.classes is not None:
        rows = [[c, *r] for c, r in zip(result.classes, result.confusion, strict=True)]
        parts.append(html_table(["true \\ pred", *result.classes], rows, "confusion matrix"))
    if result.residuals is not None:
        rows = [[k, v] for k, v in result.residuals.items()]
        parts.append(html_table(["residual", "value"], rows, "residuals (y_true − y_pred)"))
    plot = png_data_uri(evaluation_figure(result)) if result.task == "regression" else ""
    return (f'<div class="nbdeploy-report"><h4>{html.escape(result.summary())}</h4>'
            f"{FLEX}{''.join(parts)}</div>{plot}</div>")


def gate_html(decision: GateDecision) -> str:
    """The verdict, the scores it compared, and both models' figures side by side."""
    verdict = "PASSED" if decision.passed else "REFUSED"
    head = (f'<h4 style="color:{GREEN if decision.passed else RED}">{verdict}</h4>'
            f"<p>{html.escape(decision.reason)}</p>")
    table = html_table(["", decision.metric], [
        ["champion", decision.champion_score], ["challenger", decision.challenger_score],
        ["min_score", decision.min_score], ["tolerance", decision.tolerance]])
    figs = "".join(
        f"<figure>{png_data_uri(evaluation_figure(r))}<figcaption>{role}: {decision.metric} "
        f"{fmt(r.score)}</figcaption></figure>"
        for role, r in (("champion", decision.champion), ("challenger", decision.challenger)) if r is not None)
    return f'<div class="nbdeploy-gate">{head}{table}{FLEX}{figs}</div></div>'


def train_html(result: TrainResult) -> str:
    """The run (estimator, split, seed, cross-validation, data fingerprint) above its evaluation."""
    d = result.to_dict()
    rows = [["estimator", d["estimator"]], ["train / test rows", f"{d['n_train']} / {d['n_test']}"],
            ["seed", d["seed"]], ["stratified", d["stratify"]]]
    if d["cv_mean"] is not None:
        rows.append([f"cv {result.evaluation.primary_metric} ({d['cv']} folds)",
                     f"{d['cv_mean']:.4f} ± {d['cv_std']:.4f}"])
    rows.append(["data fingerprint", result.fingerprint[:16]])
    return f'<div class="nbdeploy-train">{html_table(["run", ""], rows)}{evaluation_html(result.evaluation)}</div>'


def retrain_html(summary: str, decision: GateDecision | None) -> str:
    """What a retrain did, in one line, above the gate's decision."""
    return f"<p><b>retrain</b>: {html.escape(summary)}</p>{gate_html(decision) if decision else ''}"
