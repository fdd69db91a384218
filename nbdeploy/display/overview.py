"""Every model of a store at a glance, as HTML: the rows of the models panel and its static view.

Plain data in (the dicts of :mod:`nbdeploy.monitor.overview`), HTML out, with no script and no image
file: the sparkline is inline SVG, so a saved notebook, nbconvert's HTML and GitHub show the same.
"""

from __future__ import annotations

import html
import time
from typing import Any

from nbdeploy.display.monitor import COLOURS

TITLE = "nbdeploy models"
GREY, MUTED = "#6e7781", "#57606a"


def light(row: dict[str, Any], live_level: str | None = None) -> tuple[str, str]:
    """(colour, words) of a model's status light: stopped, not ready, or serving at its alert level."""
    status = row.get("status") or "unknown"
    if status == "stopped":
        return GREY, "stopped"
    if status != "ready":
        return (COLOURS["WARN"] if status == "starting" else COLOURS["ALERT"]), status
    level = live_level or row.get("level") or "OK"
    return COLOURS.get(level, GREY), "serving" if level == "OK" else f"serving · {level}"


def sparkline_svg(counts: list[int], *, width: int = 150, height: int = 26) -> str:
    """Requests per minute as inline SVG bars on a baseline (no JavaScript, no image: static HTML shows it too)."""
    top = max(max(counts, default=0), 1)
    step = width / max(len(counts), 1)
    bars = "".join(f'<rect x="{i * step:.1f}" y="{height - 1 - h:.1f}" width="{max(step - 0.6, 0.6):.1f}" '
                   f'height="{h:.1f}"/>' for i, c in enumerate(counts) if c and (h := (height - 3) * c / top) > 0)
    return (f'<svg class="nbdeploy-sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="requests per minute over the last hour, at most {top}">'
            f"<title>requests per minute over the last hour (highest {top})</title>"
            f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#d0d7de"/>'
            f'<g fill="#0969da">{bars}</g></svg>')


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _versions(row: dict[str, Any]) -> str:
    states = row.get("states") or {}
    refused = set(row.get("refused") or [])
    parts = [f"v{v}" + (" (refused)" if v in refused or states.get(v) == "refused" else "")
             for v in row.get("versions") or []]
    aliases = " · ".join(f"{html.escape(a)} → <b>v{v}</b>" for a, v in sorted((row.get("aliases") or {}).items()))
    return (f'<div class="nbdeploy-versions">versions {", ".join(parts) or "none"}'
            f'{" · " + aliases if aliases else ""}</div>')


def _traffic(row: dict[str, Any]) -> str:
    traffic = row.get("traffic") or {}
    counts = traffic.get("requests") or []
    now = counts[-1] if counts else 0
    return (f'<div style="display:flex;flex-wrap:wrap;align-items:center;column-gap:8px">{sparkline_svg(counts)}'
            f'<span style="color:{MUTED};font-size:11px">{now} req/min now · {traffic.get("total", 0)} '
            f"in the last hour</span></div>")


def _alert(row: dict[str, Any], now: float) -> str:
    alert = row.get("alert")
    if not alert:
        return f'<div class="nbdeploy-alert" style="color:{MUTED}">no alerts</div>'
    reasons = "; ".join(alert.get("reasons") or []) or ("recovered" if alert["level"] == "OK" else "")
    return (f'<div class="nbdeploy-alert">last alert <b style="color:{COLOURS.get(alert["level"], GREY)}">'
            f'{html.escape(alert["level"])}</b> {_ago(now - alert["at"])} ({html.escape(alert.get("source", ""))})'
            f'{": " + html.escape(reasons) if reasons else ""}</div>')


def _canary(canary: dict[str, Any] | None) -> str:
    if not canary:
        return ""
    progress, goal = int(canary.get("progress") or 0), canary.get("promote_after")
    text = (f'canary <b>v{canary["version"]}</b> gets {canary["percent"]:g} % of the traffic · '
            + (f"{progress} / {goal} requests before promotion" if goal else f"{progress} requests so far"))
    bar = ""
    if goal:
        done = min(100.0, 100.0 * progress / goal)
        bar = (f'<div class="nbdeploy-canary-progress" style="background:#eaeef2;height:5px;border-radius:3px;'
               f'max-width:220px"><div style="background:#8250df;width:{done:.0f}%;height:5px;border-radius:3px">'
               "</div></div>")
    why = "".join(f'<div style="color:{colour};font-size:11px">{html.escape(str(canary[key]))}</div>'
                  for key, colour in (("breach", COLOURS["ALERT"]), ("hold", MUTED)) if canary.get(key))
    return f'<div class="nbdeploy-canary">{text}{bar}{why}</div>'


def row_html(row: dict[str, Any], *, live_level: str | None = None, now: float | None = None) -> str:
    """One model: light, name, status, versions and aliases, traffic, last alert, canary."""
    now = time.time() if now is None else now
    colour, words = light(row, live_level)
    return (f'<div class="nbdeploy-model" data-model="{html.escape(row["name"])}" style="line-height:1.5">'
            f'<div><span class="nbdeploy-light" title="{html.escape(words)}" style="color:{colour};font-size:16px">'
            f'&#9679;</span> <b>{html.escape(row["name"])}</b> '
            f'<span class="nbdeploy-status" style="color:{colour}">{html.escape(words)}</span></div>'
            f"{_versions(row)}{_traffic(row)}{_alert(row, now)}{_canary(row.get('canary'))}</div>")


def static_html(rows: list[dict[str, Any]], *, at: float | None = None, note: str = "") -> str:
    """The whole panel as self-contained HTML."""
    at = time.time() if at is None else at
    body = "".join(f'<div style="border-top:1px solid #d0d7de;padding:4px 0">{row_html(r, now=at)}</div>'
                   for r in rows) or "<div>No models in this store yet: <code>%deploy MODEL --name NAME --sample X"\
                                      "</code></div>"
    note_html = f'<div style="color:{MUTED}">{html.escape(note)}</div>' if note else ""
    return (f'<div class="nbdeploy-panel" style="border:1px solid #d0d7de;border-radius:6px;padding:6px 10px">'
            f"<div><b>{TITLE}</b> · {len(rows)} model{'' if len(rows) == 1 else 's'} · "
            f"{time.strftime('%H:%M:%S', time.localtime(at))}</div>{note_html}{body}</div>")


def plain(rows: list[dict[str, Any]]) -> str:
    lines = [f"{TITLE}: {len(rows)} model{'' if len(rows) == 1 else 's'}"]
    for r in rows:
        production = (r.get("aliases") or {}).get("production")
        lines.append(f"  {r['name']}: {light(r)[1]}, production v{production}, "
                     f"{(r.get('traffic') or {}).get('total', 0)} requests in the last hour")
    return "\n".join(lines)
