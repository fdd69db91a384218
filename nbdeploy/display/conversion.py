"""The conversion report: what the ONNX model is, how faithful it is, and how fast, at a glance.

Shown for ``deployment.fidelity`` (a :class:`~nbdeploy.convert.fidelity.FidelityReport`). Like the
deployment card, it goes out as a mimebundle with a widget view in a live kernel and plain HTML
for saved notebooks, nbconvert and GitHub.
"""

from __future__ import annotations

import html
from typing import Any

from nbdeploy.display.card import _in_kernel

_TH = 'style="text-align:left;padding:2px 12px 2px 0"'
_TD = 'style="text-align:left;padding:2px 12px 2px 0"'


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def fidelity_text(report: dict[str, Any]) -> str:
    """One line of fidelity figures for a report dict."""
    if report.get("task") == "regression":
        return (f"max |diff| {report.get('max_abs_diff', 0):.2g}, max relative diff "
                f"{report.get('max_rel_diff') or 0:.2g} on {report.get('n')} rows")
    text = f"labels agree on {report.get('agreement') or 0:.2%} of {report.get('n')} rows"
    if "max_proba_diff" in (report.get("thresholds") or {}):
        text += f", max probability diff {report.get('max_abs_diff', 0):.2g}"
    return text


def _latency_rows(latency: dict[str, float]) -> str:
    if not latency:
        return ""
    cells = []
    for rows in (1, 1000):
        sk, ort = latency.get(f"sklearn_{rows}"), latency.get(f"onnx_{rows}")
        ratio = f"{sk / ort:.1f}×" if sk and ort else "–"
        label = "1 row" if rows == 1 else "1,000 rows"
        cells.append(f"<tr><td {_TD}>{label}</td><td {_TD}>{_duration(sk)}</td><td {_TD}>{_duration(ort)}</td>"
                     f"<td {_TD}>{ratio}</td></tr>")
    head = (f"<tr><th {_TH}>Latency (median)</th><th {_TH}>scikit-learn</th><th {_TH}>ONNX Runtime</th>"
            f"<th {_TH}>speed-up</th></tr>")
    return f'<table style="margin-top:6px">{head}{"".join(cells)}</table>'


def _worst_rows(report: dict[str, Any]) -> str:
    rows = report.get("worst_rows") or []
    if not rows:
        return ""
    body = "".join(
        f"<tr><td {_TD}>{html.escape(str(r['row']))}</td><td {_TD}>{html.escape(str(r['sklearn']))}</td>"
        f"<td {_TD}>{html.escape(str(r['onnx']))}</td><td {_TD}>{r['diff']:.3g}"
        f"{' (labels differ)' if r.get('labels_differ') else ''}</td></tr>"
        for r in rows
    )
    head = (f"<tr><th {_TH}>Row</th><th {_TH}>scikit-learn</th><th {_TH}>ONNX Runtime</th>"
            f"<th {_TH}>difference</th></tr>")
    return f'<details><summary>Rows that differ most</summary><table>{head}{body}</table></details>'


def _note(report: dict[str, Any]) -> str:
    return f" — {report['note']}" if report.get("note") else ""


def conversion_html(report: dict[str, Any]) -> str:
    """Static HTML for a conversion report dict (``FidelityReport.to_dict()``)."""
    passed = report.get("passed")
    verdict = "passed" if passed else ("FAILED, deployed with force" if report.get("forced") else "FAILED")
    colour = "#1a7f37" if passed else "#cf222e"
    gate = ", ".join(f"{k} {v:g}" for k, v in (report.get("thresholds") or {}).items())
    rows = [
        ("Fidelity gate", f'<span style="color:{colour};font-weight:600">{verdict}</span>'
                          f' <span style="color:#57606a">({html.escape(gate)})</span>'),
        ("Figures", html.escape(fidelity_text(report))),
        ("Precision", html.escape(str(report.get("precision")) + _note(report))),
        ("ONNX size", _size(int(report.get("onnx_bytes") or 0))),
        ("Conversion time", _duration(report.get("convert_seconds"))),
    ]
    attempts = report.get("attempts") or []
    if len(attempts) > 1:
        rows.append(("Tried", "<br>".join(html.escape(a) for a in attempts)))
    body = "".join(f"<tr><th {_TH}>{k}</th><td {_TD}>{v}</td></tr>" for k, v in rows)
    return (f'<div class="nbdeploy-conversion" style="border:1px solid #d0d7de;border-radius:6px;padding:8px 12px">'
            f"<b>nbdeploy</b> · conversion report<table>{body}</table>"
            f"{_latency_rows(report.get('latency') or {})}{_worst_rows(report)}</div>")


def conversion_text(report: dict[str, Any]) -> str:
    latency = report.get("latency") or {}
    speed = ""
    if latency.get("sklearn_1") and latency.get("onnx_1"):
        sk, ort = _duration(latency["sklearn_1"]), _duration(latency["onnx_1"])
        speed = f"; one row: scikit-learn {sk}, ONNX Runtime {ort}"
    verdict = "passed" if report.get("passed") else "FAILED"
    return (f"nbdeploy conversion: fidelity {verdict} ({report.get('precision')}): {fidelity_text(report)}; "
            f"ONNX {_size(int(report.get('onnx_bytes') or 0))}{speed}")


def conversion_bundle(report: dict[str, Any]) -> dict[str, Any]:
    """Mimebundle with the widget view (in a kernel) and the HTML fallback."""
    text = conversion_html(report)
    bundle: dict[str, Any] = {"text/html": text, "text/plain": conversion_text(report)}
    if _in_kernel():
        import ipywidgets

        view = ipywidgets.HTML(value=text)._repr_mimebundle_() or {}
        bundle.update({k: v for k, v in view.items() if k != "text/plain"})
    return bundle
