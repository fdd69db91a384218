"""The live monitor widget: status light, traffic, latency, quality against the baseline, drift, and the
model's timeline charts (:mod:`nbdeploy.display.charts`).

A daemon thread refreshes it every ``interval`` seconds from :class:`nbdeploy.monitor.live.Monitor`
(several trait changes go out together under ``hold_sync``; no ``Output`` widget is used from the
thread). Each display carries a ``text/html`` twin with the charts as a PNG. A notebook keeps a story
only if each display keeps the state it showed: the twin of a display is frozen when the cell that
displayed it finishes (IPython's ``post_run_cell``), or at :meth:`~MonitorWidget.stop` if that comes
first; later refreshes update the live widget only. :meth:`~MonitorWidget.stop` (or the Stop button,
or closing the widget) replaces every display with its frozen static view, so a saved notebook,
nbconvert's HTML or GitHub show what each display showed instead of a blank widget.
One live monitor per model and store in a kernel: starting another stops the previous one.
"""

from __future__ import annotations

import base64
import contextlib
import html
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from nbdeploy.display.charts import Charts, events_html, quality_metric
from nbdeploy.display.refreshing import Refreshing, close_widgets, failure
from nbdeploy.errors import NbdeployError

if TYPE_CHECKING:  # the view only reads a monitor's snapshots; the caller builds the monitor
    from nbdeploy.monitor.live import Monitor

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
COLOURS = {"OK": "#1a7f37", "WARN": "#9a6700", "ALERT": "#cf222e", "n/a": "#57606a"}
_LIVE: dict[tuple[str, str], MonitorWidget] = {}


def _f(x: float | None, fmt: str = ".3g", unit: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{unit}"


def summary_html(snap: dict[str, Any]) -> str:
    """Status light, key figures and alert reasons."""
    alert, tr, labels = snap["alert"], snap["traffic"], snap["labels"]
    quality = snap["quality"]
    metric = "rmse" if snap.get("task") == "regression" else "accuracy"
    current, base = quality.get("current") or {}, (quality.get("baseline") or {}).get(metric)
    delay = labels.get("delay") or {}
    cells = [
        ("requests/s", _f(tr["request_rate"], ".1f")),
        ("latency p50 / p99", f"{_f(tr['p50_ms'], '.2f')} / {_f(tr['p99_ms'], '.2f')} ms"),
        ("error rate", _f(None if tr["error_rate"] is None else 100 * tr["error_rate"], ".2f", " %")),
        ("labelled", f"{labels['labelled']} (delay median {_f(delay.get('median'), '.3g', ' s')})"),
        (metric, f"{_f(current.get(metric), '.3f')} (last {current.get('n', 0)} labels) vs baseline {_f(base, '.3f')}"),
        ("requests / dropped", f"{tr['requests']} / {tr['dropped']}"),
    ]
    estimated = snap.get("estimated")
    if estimated and estimated.get("value") is not None:
        cells.append((f"estimated {estimated.get('metric', metric)}",
                      f"{_f(estimated['value'], '.3f')} [{_f(estimated.get('low'), '.3f')}–"
                      f"{_f(estimated.get('high'), '.3f')}] on {estimated.get('n', 0)}"))
    shadow = snap.get("shadow")
    if shadow:
        cells.append((f"shadow v{shadow['version']} agrees",
                      f"{_f(None if shadow['agreement'] is None else 100 * shadow['agreement'], '.1f', ' %')}"
                      f" of {shadow['n']}"))
    dropped = (f'<div style="color:{COLOURS["ALERT"]}">{tr["dropped"]} prediction events could not be logged '
               "(the log could not keep up): figures undercount</div>") if tr["dropped"] else ""
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in alert["reasons"])
    figures = "".join(f'<td style="padding:2px 10px;text-align:left"><div style="color:#57606a;font-size:11px">{k}'
                      f"</div><div>{html.escape(v)}</div></td>" for k, v in cells)
    when = time.strftime("%H:%M:%S", time.localtime(snap["at"]))
    return (f'<div><span style="color:{COLOURS[alert["level"]]};font-size:18px">&#9679;</span> '
            f'<b>{alert["level"]}</b> · model <b>{html.escape(snap["model"])}</b> v{snap["version"]} · '
            f"traffic over the last {snap['recent_seconds']:.0f} s · updated {when} "
            f"({snap['refresh_ms']:.0f} ms)</div><table><tr>{figures}</tr></table>{dropped}"
            + (f"<ul style='margin:2px 0'>{reasons}</ul>" if reasons else ""))


ARM_COLUMNS = (("version", "version", "d"), ("requests", "requests", "d"), ("error_rate", "error rate", "%"),
               ("p99_ms", "p99 ms", ".2f"), ("accuracy", "accuracy", ".3f"), ("labelled", "labelled", "d"),
               ("estimated_accuracy", "estimated accuracy", ".3f"))


def canary_html(snap: dict[str, Any]) -> str:
    """A running (or just ended) canary: its state, progress and one row per arm."""
    canary = snap.get("canary")
    if not canary:
        return ""
    arms = canary.get("arms") or {}
    columns = [c for c in ARM_COLUMNS if any(c[0] in (a or {}) for a in arms.values())]

    def cell(value: Any, fmt: str) -> str:
        if value is None:
            return "–"
        if fmt == "%":
            return f"{100 * value:.2f} %"
        return f"{value:{fmt}}" if isinstance(value, (int, float)) else html.escape(str(value))

    head = "<tr><th>arm</th>" + "".join(f"<th>{title}</th>" for _, title, _ in columns) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(arm)}</td>"
                   + "".join(f"<td>{cell((figures or {}).get(key), fmt)}</td>" for key, _, fmt in columns) + "</tr>"
                   for arm, figures in arms.items())
    progress = canary.get("progress")
    after = canary.get("promote_after")
    state = html.escape(str(canary.get("state", "")))
    line = (f"<b>Canary</b> v{canary.get('version')} gets {_f(canary.get('percent'), 'g', ' %')} of the traffic "
            f"against v{canary.get('production')} · {state}"
            + (f" · {progress} of {after} requests before promotion" if after and progress is not None else "")
            + (f" · {html.escape(str(canary['reason']))}" if canary.get("reason") else ""))
    return f"<div>{line}<table style='font-size:12px'>{head}{body}</table></div>"


def drift_html(snap: dict[str, Any]) -> str:
    """One row per feature: drift status, PSI, test p-value, out-of-range and unseen counts."""
    drift, inputs = snap.get("drift"), snap.get("inputs") or {}
    notes = "".join(f"<div style='color:#57606a'>{html.escape(n)}</div>" for n in snap.get("notes", []))
    if drift is None and not inputs:
        return notes
    rows = {r["feature"]: r for r in (drift or {}).get("features", [])}
    head = ("<tr><th>feature</th><th>drift</th><th>PSI</th><th>p</th><th>outside training range</th>"
            "<th>unseen categories</th><th>why</th></tr>")
    body = []
    for name in list(rows) + [f for f in inputs if f not in rows]:
        r, c = rows.get(name, {}), inputs.get(name, {})
        status = r.get("status", "n/a")
        body.append(f"<tr><td>{html.escape(name)}</td><td style='color:{COLOURS[status]};font-weight:600'>{status}</td>"
                    f"<td>{_f(r.get('psi'))}</td><td>{_f(r.get('p_value'), '.2g')}</td>"
                    f"<td>{c.get('out_of_range', '–')}</td><td>{c.get('unseen', '–')}</td>"
                    f"<td>{html.escape('; '.join(r.get('reasons', [])))}</td></tr>")
    title = f"<b>Inputs</b> (drift on the last {drift['n']} predictions)" if drift else "<b>Inputs</b>"
    return f"<div>{title}<table style='font-size:12px'>{head}{''.join(body)}</table>{notes}</div>"


def details_html(snap: dict[str, Any]) -> str:
    """What goes under the charts: the events, a canary's arms, the inputs table."""
    return events_html((snap.get("timeline") or {}).get("events", [])) + canary_html(snap) + drift_html(snap)


def static_html(snap: dict[str, Any], png: bytes | None = None) -> str:
    """The whole monitor as self-contained HTML (the charts inlined as base64 PNG)."""
    img = (f'<img alt="monitor charts: traffic, {quality_metric(snap)}, latency and inputs over time" '
           f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/>' if png else "")
    return (f'<div class="nbdeploy-monitor" style="border:1px solid #d0d7de;border-radius:6px;padding:8px 12px">'
            f"{summary_html(snap)}{img}{details_html(snap)}</div>")


def _chart_key(snap: dict[str, Any]) -> Any:
    """What the charts show, without the clock: a new drawing only when this changes."""
    story = snap.get("timeline") or {}
    series = story.get("series") or snap.get("series") or {}
    return (series.get("t"), series.get("rows", series.get("requests")), series.get("labelled"), series.get("accuracy"),
            series.get("rmse"), len(story.get("events") or ()), snap.get("estimated"), snap.get("task"))


def plain(snap: dict[str, Any]) -> str:
    tr = snap["traffic"]
    return (f"nbdeploy monitor: {snap['model']} v{snap['version']} {snap['alert']['level']}, "
            f"{_f(tr['request_rate'], '.1f')} req/s, p99 {_f(tr['p99_ms'], '.2f')} ms, dropped {tr['dropped']}")


class MonitorWidget(Refreshing, widgets.VBox):
    """The live view of one :class:`Monitor`. ``stop()`` ends the updates and leaves a static view."""

    def __init__(self, monitor: Monitor, *, interval: float = 3.0, autostart: bool = True) -> None:
        self.monitor, self.interval = monitor, interval
        self._header, self._table = widgets.HTML(), widgets.HTML()
        self._chart = widgets.Image(format="png")
        self._button = widgets.Button(description="Stop", icon="stop", layout=widgets.Layout(width="80px"))
        self._button.on_click(lambda _: self.stop())
        super().__init__([self._header, self._chart, self._table, self._button])
        self.snap: dict[str, Any] = {}
        self.png: bytes = b""
        self.refreshes = 0
        self._drawn: Any = None
        self._drawn_at, self._draw_seconds = 0.0, 0.0
        self._charts: Charts | None = None
        self._refresh_lock = threading.Lock()
        self._shown: dict[str, dict[str, Any] | None] = {}  # display id -> its frozen static bundle (None: live)
        self._hook: Any = None  # the post_run_cell callback that freezes this cell's displays
        self._panel: Any = None
        self._finished = False
        self._go_live(autostart)

    def refresh(self, *, redraw: bool = True) -> dict[str, Any]:
        """Take a snapshot and show it; returns the snapshot. Charts are redrawn when what they show changed
        (unless ``redraw`` is False and they were drawn recently: drawing costs a few tenths of a second)."""
        with self._refresh_lock:
            return self._refresh(redraw)

    def _refresh(self, redraw: bool = True) -> dict[str, Any]:
        snap = self.monitor.snapshot()
        drawn = _chart_key(snap)
        recent = time.monotonic() - self._drawn_at < 5 * self._draw_seconds
        if not self.png or (drawn != self._drawn and (redraw or not recent)):
            started = time.monotonic()
            self._charts = self._charts or Charts()
            self.png, self._drawn = self._charts.render(snap), drawn
            self._drawn_at, self._draw_seconds = time.monotonic(), time.monotonic() - started
        self.snap = snap
        self.refreshes += 1
        with self.hold_sync():
            self._header.value = summary_html(snap)
            self._chart.value = self.png
            self._table.value = details_html(snap)
        return snap

    def _thread_name(self) -> str:
        return f"nbdeploy-monitor-{self.monitor.model}"

    def _tick(self) -> None:
        self.refresh(redraw=False)  # the live view: the kernel's CPU matters more than a fresh chart

    def _show_failure(self, exc: Exception) -> None:  # the log may be busy, moved or not yet created
        self._header.value = (f"<div style='color:{COLOURS['ALERT']}'>monitor refresh failed: "
                              f"{html.escape(failure(exc))}</div>")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop refreshing, leave each display's static view (its state at the end of its cell, or now),
        and close the widget."""
        if not self._wind_down(timeout):
            return
        self._unhook()
        bundle = self.static_bundle()
        if self._shown:
            from IPython.display import update_display

            for display_id, frozen in self._shown.items():
                update_display(frozen or bundle, raw=True, display_id=display_id)
        if self._panel is not None:
            self._panel.close()
        close_widgets(self._header, self._chart, self._table, self._button, self)
        _LIVE.pop((self.monitor.location, self.monitor.model), None)

    def freeze(self) -> None:
        """Fix the static view of the displays not yet frozen at the current state; the live view goes on."""
        live = [display_id for display_id, frozen in self._shown.items() if frozen is None]
        if self._finished or not live:
            return
        with contextlib.suppress(Exception):  # keep the last state shown if the log cannot be read now
            self.refresh()
        bundle = self.static_bundle()
        from IPython.display import update_display

        for display_id in live:
            self._shown[display_id] = bundle
            update_display({**self._widget_view(), **bundle}, raw=True, display_id=display_id)

    def _after_cell(self, *_: Any) -> None:
        self._unhook()
        self.freeze()

    def _hook_cell_end(self) -> None:
        """Freeze this cell's displays when the cell finishes (outside IPython: at stop only)."""
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None or self._hook is not None:
            return
        self._hook = (shell, self._after_cell)
        shell.events.register("post_run_cell", self._after_cell)

    def _unhook(self) -> None:
        if self._hook is not None:
            shell, callback = self._hook
            self._hook = None
            with contextlib.suppress(ValueError):  # already gone
                shell.events.unregister("post_run_cell", callback)

    def dock(self, title: str | None = None) -> None:
        """Show the live view in a JupyterLab side panel (needs the ``sidecar`` package)."""
        try:
            from sidecar import Sidecar
        except ImportError:
            raise NbdeployError("docking the monitor in a side panel needs the sidecar package: "
                                "pip install sidecar") from None
        from IPython.display import display

        self._panel = Sidecar(title=title or f"monitor: {self.monitor.model}")
        with self._panel:
            display(widgets.Box([self]))

    def static_bundle(self) -> dict[str, Any]:
        return {"text/html": static_html(self.snap, self.png), "text/plain": plain(self.snap)}

    def _widget_view(self) -> dict[str, Any]:
        if self._panel is not None:  # the live view is in the side panel, not in the cell
            return {}
        data = super()._repr_mimebundle_() or {}
        return {k: v for k, v in data.items() if k == WIDGET_MIME}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if self._finished or self._panel is not None:
            note = ("<div style='color:#57606a'>Live view docked in the side panel; "
                    "this output shows the state at the end of its cell.</div>") if not self._finished else ""
            bundle = self.static_bundle()
            return {**bundle, "text/html": note + bundle["text/html"]}
        data = super()._repr_mimebundle_(**kwargs) or {}
        return {**data, **self.static_bundle()}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self._finished:  # a closed widget has no view left (ipywidgets drops it): show the final state
            display(self.static_bundle(), raw=True)
            return
        display_id = uuid.uuid4().hex  # one per display: each keeps the state of its own cell
        display(self._repr_mimebundle_(), raw=True, display_id=display_id)
        self._shown[display_id] = None
        self._hook_cell_end()


def monitor_widget(monitor: Monitor, *, interval: float = 3.0, sidecar: bool = False) -> MonitorWidget:
    """A started live view of ``monitor``; it replaces this kernel's earlier live view of the same model."""
    key = (monitor.location, monitor.model)  # the store and the model
    if key in _LIVE:
        _LIVE[key].stop()
    widget = MonitorWidget(monitor, interval=interval)
    if sidecar:
        try:
            widget.dock()
        except BaseException:
            widget.stop()
            raise
    _LIVE[key] = widget
    return widget


def stop_monitors(model: str | None = None) -> int:
    """Stop this kernel's live monitors (of ``model``, or all); returns how many were stopped."""
    chosen = [w for (_, name), w in list(_LIVE.items()) if model is None or name == model]
    for widget in chosen:
        widget.stop()
    return len(chosen)
