"""A model's history as one self-contained HTML page: versions and their metrics, fidelity and gate decisions,
the timeline charts (quality, drift, traffic, latency, with every event marked), the events, alerts and
canaries. Built from the plain data of :func:`nbdeploy.monitor.timeline.history`.

The page needs nothing beyond itself: styles inline (scoped to the report, so it can show inline in a
notebook), charts as base64 PNG, no scripts, no links to fetch; it opens offline, in a mail attachment or
from a CI artifact.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path
from typing import Any

from nbdeploy.display.charts import EVENT_COLOURS, LEVEL_COLOURS, Charts

STYLE = """
.nbdeploy-report{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328}
.nbdeploy-report h1{font-size:22px;margin:0 0 4px}
.nbdeploy-report h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #d0d7de}
.nbdeploy-report table{border-collapse:collapse;font-size:12px}
.nbdeploy-report th,.nbdeploy-report td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
.nbdeploy-report th{background:#f6f8fa}.nbdeploy-report .muted{color:#57606a}.nbdeploy-report img{max-width:100%}
"""  # scoped to the report, so shown inline it leaves the notebook's own styles alone


class Report:
    """The history of one model: shown inline in a notebook, or written as a page with :meth:`save`."""

    def __init__(self, name: str, body: str) -> None:
        self.name, self.body = name, body

    @property
    def html(self) -> str:
        """The whole page."""
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                f"<title>nbdeploy report: {html.escape(self.name)}</title></head><body>{self.body}</body></html>")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return self.body

    def __repr__(self) -> str:
        return f"<nbdeploy report of {self.name!r}>"


def _when(at: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "–" if at is None else datetime.fromtimestamp(at).astimezone().strftime(fmt)


def _num(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "–"
    return f"{v:{fmt}}" if isinstance(v, float) else html.escape(str(v))


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escape values before)."""
    if not rows:
        return "<p class='muted'>none</p>"
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def versions_html(data: dict[str, Any]) -> str:
    names = sorted({k for v in data["versions"] for k in v["metrics"] if isinstance(v["metrics"][k], float)},
                   key=lambda k: (k not in ("accuracy", "r2", "rmse", "mae"), k))[:4]
    rows = []
    for v in data["versions"]:
        fid = v["fidelity"]
        fidelity = "–" if not fid else (
            f"{'passed' if fid.get('passed') else 'FAILED'} ({html.escape(str(fid.get('precision', '')))}): "
            + (f"labels agree {100 * fid['agreement']:.2f} %" if fid.get("agreement") is not None
               else f"max |diff| {fid.get('max_abs_diff', 0):.2g}")
            + f" on {fid.get('n', 0)} rows")
        gate = v["gate"] or {}
        decision = ("not gated" if not v["gated"] or not gate else
                    f"<b style='color:{LEVEL_COLOURS['OK'] if gate.get('passed') else LEVEL_COLOURS['ALERT']}'>"
                    f"{'passed' if gate.get('passed') else 'refused'}</b>: {html.escape(str(gate.get('reason', '')))}")
        origin = (f"retrained from v{v['retrained_from']}" if v["retrained_from"] is not None else
                  "deployed" if v["served"] else f"{html.escape(v['status'])}, never served")
        rows.append([f"<b>v{v['version']}</b>", _when(v["created_at"]), html.escape(v.get("state", v["status"])),
                     html.escape(", ".join(v["aliases"])) or "–", origin,
                     *[_num(v["metrics"].get(k)) for k in names], fidelity, decision])
    return _table(["version", "created", "status", "aliases", "origin", *[html.escape(n) for n in names],
                   "fidelity (ONNX vs scikit-learn)", "promotion gate"], rows)


def events_table(events: list[dict[str, Any]]) -> str:
    rows = [[_when(e["at"], "%Y-%m-%d %H:%M:%S"),
             f"<span style='color:{LEVEL_COLOURS.get(e.get('level') or '', EVENT_COLOURS.get(e['kind'], '#57606a'))}'>"
             f"{html.escape(e['label'])}</span>", html.escape(e["kind"]), html.escape(e.get("detail") or "")]
            for e in events]
    return _table(["when", "event", "kind", "detail"], rows)


def alerts_table(alerts: list[dict[str, Any]]) -> str:
    rows = [[_when(a["at"], "%Y-%m-%d %H:%M:%S"),
             f"<b style='color:{LEVEL_COLOURS.get(a['level'], '#57606a')}'>{html.escape(a['level'])}</b>",
             html.escape(a["source"]), html.escape("; ".join(a["reasons"]) or "–")] for a in alerts]
    return _table(["when", "level", "source", "reasons"], rows)


def canaries_table(canaries: list[dict[str, Any]]) -> str:
    rows = [[f"v{c['version']}", f"v{c['production']}", f"{c['percent']:g} %", _when(c["started_at"]),
             _when(c["ended_at"]), html.escape(c["state"]), html.escape(c.get("reason") or "–")] for c in canaries]
    return _table(["candidate", "against", "share", "started", "ended", "state", "why"], rows)


def report(data: dict[str, Any]) -> Report:
    """The report of one model's history."""
    name = html.escape(data["name"])
    story = data["timeline"]
    png = Charts(width=12, height=6, dpi=90).render({"timeline": story, "task": data["task"], "model": data["name"]})
    img = (f'<img alt="{name}: traffic, quality, latency and inputs over time" '
           f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/>')
    aliases = ", ".join(f"{html.escape(a)} → v{v}" for a, v in sorted(data["aliases"].items())) or "none"
    span = f"{_when(story['start'])} to {_when(story['end'])}"
    body = (f"<div class='nbdeploy-report'><style>{STYLE}</style>"
            f"<h1>nbdeploy report: {name}</h1>"
            f"<div class='muted'>generated {_when(data['generated_at'], '%Y-%m-%d %H:%M:%S')} · "
            f"{'served' if data['serving'] else 'not served'} · aliases: {aliases} · "
            f"{len(data['versions'])} versions</div>"
            f"<h2>Versions</h2>{versions_html(data)}"
            f"<h2>Over time</h2><div class='muted'>{span}, in intervals of {story['width']} s; realised quality "
            f"is what the labels sent back say of every version that served</div>{img}"
            f"<h2>Events</h2>{events_table(story['events'])}"
            f"<h2>Alerts</h2>{alerts_table(data['alerts'])}"
            f"<h2>Canaries</h2>{canaries_table(data['canaries'])}</div>")
    return Report(data["name"], body)
