"""A drift report as an HTML table, from its plain data (:meth:`nbdeploy.monitor.drift.DriftReport.to_dict`).

Pure string work, standard library only: the server reaches this module through the monitor.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

STATUS_COLOURS = {"OK": "#1a7f37", "WARN": "#9a6700", "ALERT": "#cf222e"}
_HEAD = ("<tr><th>feature</th><th>kind</th><th>PSI</th><th>test p</th><th>missing ref→cur</th>"
         "<th>out of range / unseen</th><th>status</th><th>reasons</th></tr>")


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _row(r: Mapping[str, Any]) -> str:
    flagged = r["out_of_range_rate"] if r["kind"] == "numeric" else r["unseen_rate"]
    return (f"<tr><td>{html.escape(r['feature'])}</td><td>{html.escape(r['kind'])}</td><td>{_number(r['psi'])}</td>"
            f"<td>{r['test'] or ''} {_number(r['p_value'])}</td>"
            f"<td>{_percent(r['missing_rate_ref'])} → {_percent(r['missing_rate_cur'])}</td>"
            f"<td>{_percent(flagged)}</td>"
            f"<td style='color:{STATUS_COLOURS[r['status']]};font-weight:bold'>{r['status']}</td>"
            f"<td>{html.escape('; '.join(r['reasons']))}</td></tr>")


def drift_report_html(report: Mapping[str, Any]) -> str:
    """The overall level, how many features are flagged, and one row per feature."""
    features = report["features"]
    title = (f"<b>Drift: <span style='color:{STATUS_COLOURS[report['overall']]}'>{report['overall']}</span></b>"
             f" — {len(report['drifted_features'])} of {len(features)} features flagged, n={report['n']}")
    return f"<div>{title}<table>{_HEAD}{''.join(_row(r) for r in features)}</table></div>"
