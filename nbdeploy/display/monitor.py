"""The live monitor widget: status light, traffic, latency, quality against the baseline, drift, charts.

A daemon thread refreshes it every ``interval`` seconds from :class:`nbdeploy.monitor.live.Monitor`
(several trait changes go out together under ``hold_sync``; no ``Output`` widget is used from the
thread). Its display carries a ``text/html`` twin with the chart as a PNG, and :meth:`stop` (or the
Stop button, or closing the widget) replaces the display with the final static view, so a saved
notebook, nbconvert's HTML or GitHub show the last state instead of a blank widget.
One live monitor per model and store in a kernel: starting another stops the previous one.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np

from nbdeploy.errors import NbdeployError

if TYPE_CHECKING:  # the view only reads a monitor's snapshots; the caller builds the monitor
    from nbdeploy.monitor.live import Monitor

COLOURS = {"OK": "#1a7f37", "WARN": "#9a6700", "ALERT": "#cf222e", "n/a": "#57606a"}
_LIVE: dict[tuple[str, str], MonitorWidget] = {}


def _f(x: float | None, fmt: str = ".3g", unit: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{unit}"


class Charts:
    """Request rate and errors, latency p50/p99, and quality against the baseline, as one PNG.

    The figure is built once and its lines updated on each :meth:`render` (several times cheaper
    than a new figure); use one ``Charts`` per thread.
    """

    def __init__(self) -> None:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.fig = Figure(figsize=(10, 2.3), dpi=80)
        self.fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2, top=0.88, wspace=0.22)
        self.axes = self.fig.subplots(1, 3)
        styles = (("req/s", "#0969da", "-"), ("errors/s", COLOURS["ALERT"], "-"), ("p50", "#0969da", "-"),
                  ("p99", "#8250df", "-"), ("current", "#0969da", "o-"), ("baseline", "#57606a", "--"))
        self.lines = []
        for i, (label, colour, style) in enumerate(styles):
            (line,) = self.axes[i // 2].plot([], [], style, color=colour, label=label, markersize=3)
            self.lines.append(line)
        for ax in self.axes:
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7, loc="upper left")

    def render(self, snap: dict[str, Any]) -> bytes:
        s = snap.get("series") or {}
        times = s.get("t", [])
        span = (snap["at"] - times[0]) if times else 0
        unit, scale = ("hours", 3600) if span > 3 * 3600 else ("minutes", 60)
        t = [(x - snap["at"]) / scale for x in times]
        metric = "rmse" if snap.get("task") == "regression" else "accuracy"
        rate = s.get("rate", [])
        errors = [r * e if e is not None else 0 for r, e in zip(rate, s.get("error_rate", []), strict=True)]
        base = ((snap.get("quality") or {}).get("baseline") or {}).get(metric)
        data = (rate, errors, s.get("p50_ms", []), s.get("p99_ms", []), s.get(metric, []),
                [base] * len(t) if base is not None else [])
        for line, values in zip(self.lines, data, strict=True):
            line.set_data(t[:len(values)], [np.nan if v is None else v for v in values])
        titles = ("requests/s", "latency (ms)", f"{metric} by prediction time")
        for ax, title in zip(self.axes, titles, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(f"{unit} ago", fontsize=7)
            ax.relim()
            ax.autoscale_view()
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


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


def static_html(snap: dict[str, Any], png: bytes | None = None) -> str:
    """The whole monitor as self-contained HTML (the chart inlined as base64 PNG)."""
    img = (f'<img alt="monitor charts" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
           if png else "")
    return (f'<div class="nbdeploy-monitor" style="border:1px solid #d0d7de;border-radius:6px;padding:8px 12px">'
            f"{summary_html(snap)}{img}{drift_html(snap)}</div>")


def plain(snap: dict[str, Any]) -> str:
    tr = snap["traffic"]
    return (f"nbdeploy monitor: {snap['model']} v{snap['version']} {snap['alert']['level']}, "
            f"{_f(tr['request_rate'], '.1f')} req/s, p99 {_f(tr['p99_ms'], '.2f')} ms, dropped {tr['dropped']}")


class MonitorWidget(widgets.VBox):
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
        self._series: Any = None
        self._charts: Charts | None = None
        self._refresh_lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._display_id = uuid.uuid4().hex
        self._displayed = False
        self._panel: Any = None
        self._finished = False
        self.observe(self._comm_closed, names="comm")
        self.refresh()
        if autostart:
            self.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> dict[str, Any]:
        """Take a snapshot and show it; returns the snapshot."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> dict[str, Any]:
        snap = self.monitor.snapshot()
        if snap.get("series") != self._series or not self.png:
            self._charts = self._charts or Charts()
            self.png, self._series = self._charts.render(snap), snap.get("series")
        self.snap = snap
        self.refreshes += 1
        with self.hold_sync():
            self._header.value = summary_html(snap)
            self._chart.value = self.png
            self._table.value = drift_html(snap)
        return snap

    def start(self) -> None:
        if self.running or self._finished:
            return
        self._halt.clear()
        self._thread = threading.Thread(target=self._loop, name=f"nbdeploy-monitor-{self.monitor.model}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # keep trying: the log may be busy, moved or not yet created
                self._header.value = (f"<div style='color:{COLOURS['ALERT']}'>monitor refresh failed: "
                                      f"{html.escape(f'{type(exc).__name__}: {exc}')}</div>")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop refreshing, replace the live view with the last static one, and close the widget."""
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._finished:
            return
        with contextlib.suppress(Exception):  # the static view shows the state at stop, if it can be read
            self.refresh()
        self._finished = True
        if self._displayed:
            from IPython.display import update_display

            update_display(self.static_bundle(), raw=True, display_id=self._display_id)
        if self._panel is not None:
            self._panel.close()
        for part in (self._header, self._chart, self._table, self._button, self):
            for sub in (getattr(part, "layout", None), getattr(part, "style", None)):
                if isinstance(sub, widgets.Widget):
                    sub.close()
            if part is not self:
                part.close()
        self.close()
        _LIVE.pop((str(self.monitor.path), self.monitor.model), None)

    def _comm_closed(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.stop()

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

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if self._finished or self._panel is not None:
            note = ("<div style='color:#57606a'>Live view docked in the side panel; "
                    "this output shows the final state when the monitor stops.</div>") if not self._finished else ""
            bundle = self.static_bundle()
            return {**bundle, "text/html": note + bundle["text/html"]}
        data = super()._repr_mimebundle_(**kwargs) or {}
        return {**data, **self.static_bundle()}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self._finished:  # a closed widget has no view left (ipywidgets drops it): show the final state
            display(self.static_bundle(), raw=True)
            return
        display(self._repr_mimebundle_(), raw=True, display_id=self._display_id)
        self._displayed = True


def monitor_widget(monitor: Monitor, *, interval: float = 3.0, sidecar: bool = False) -> MonitorWidget:
    """A started live view of ``monitor``; it replaces this kernel's earlier live view of the same model."""
    key = (str(monitor.path), monitor.model)
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
