"""The timeline charts of a model: traffic, latency, quality against its baseline (and its estimate), drift,
with what happened (deploys, retrains, promotions, rollbacks, canaries, alerts) marked on every chart.

Drawn from plain data: a monitor snapshot's ``timeline`` (see :mod:`nbdeploy.monitor.timeline`), or,
without one, the snapshot's own ``series``. Time runs on a wall-clock axis (HH:MM, with the date when
the span crosses a day); sparse series are drawn as points, so one interval of traffic still shows.
``matplotlib.figure.Figure`` only (no pyplot state): safe from the monitor's thread.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import numpy as np

EVENT_COLOURS = {"deploy": "#0969da", "promote": "#0969da", "rollback": "#8250df", "retrain": "#1a7f37",
                 "registered": "#57606a", "refused": "#57606a", "shadow": "#57606a", "canary": "#bc4c00",
                 "alert": "#cf222e", "recovery": "#1a7f37"}
LEVEL_COLOURS = {"WARN": "#9a6700", "ALERT": "#cf222e", "OK": "#1a7f37"}
SPARSE = 40  # at most this many points: draw markers, so lone intervals show
MAX_LABELS = 14  # the latest events get a label; older ones keep their line


def story_of(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot's timeline, or one made of its own series (no events) when it has none."""
    story = snap.get("timeline")
    if story:
        return story
    s = dict(snap.get("series") or {})
    t = s.get("t", [])
    base = ((snap.get("quality") or {}).get("baseline") or {})
    for metric in ("accuracy", "rmse", "mae"):
        s[f"baseline_{metric}"] = [base.get(metric)] * len(t)
    return {"model": snap.get("model"), "start": t[0] if t else snap.get("at", 0), "end": snap.get("at", 0),
            "width": s.get("width"), "series": s, "events": []}


def quality_metric(snap: dict[str, Any]) -> str:
    """What the quality chart shows: accuracy for a classifier; for a regressor the estimate's metric (MAE),
    so realised and estimated share the axis, else RMSE."""
    if snap.get("task") != "regression":
        return "accuracy"
    return "mae" if (snap.get("estimated") or {}).get("metric") == "mae" else "rmse"


class Charts:
    """The four charts as one image; one instance per thread (each keeps its figure)."""

    def __init__(self, width: float = 10.0, height: float = 4.6, dpi: int = 80) -> None:
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(width, height), dpi=dpi)
        self.fig.subplots_adjust(left=0.06, right=0.99, bottom=0.09, top=0.9, wspace=0.14, hspace=0.42)
        self.axes = self.fig.subplots(2, 2).ravel()

    def render(self, snap: dict[str, Any], fmt: str = "png") -> bytes:
        """The charts of ``snap`` as PNG (or SVG) bytes."""
        self.draw(snap)
        buf = io.BytesIO()
        self.fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else {"Date": None})
        return buf.getvalue()

    def draw(self, snap: dict[str, Any]) -> None:
        story = story_of(snap)
        s = story.get("series") or {}
        half = (s.get("width") or story.get("width") or 0) / 2  # mark the middle of each interval
        x = (np.asarray(s.get("t", []), dtype=float) + half) / 86_400.0
        metric = quality_metric(snap)
        traffic, quality, latency, drift = self.axes
        for ax in self.axes:  # drop the data, keep the axes (clearing them costs more than drawing)
            for artist in [*ax.lines, *ax.texts, *ax.collections, *ax.patches]:
                artist.remove()
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            ax.relim()
            ax.autoscale(True)
        rate = s.get("rate", [])
        errors = [r * e if e is not None else 0.0 for r, e in zip(rate, s.get("error_rate", []), strict=False)]
        _plot(traffic, x, rate, "rate", "#0969da")
        if any(errors):
            _plot(traffic, x, errors, "errors/s", "#cf222e")
        _plot(latency, x, s.get("p50_ms", []), "p50", "#0969da")
        _plot(latency, x, s.get("p99_ms", []), "p99", "#8250df")
        _plot(quality, x, s.get(metric, []), "realised", "#0969da")
        base = s.get(f"baseline_{metric}", [])
        if any(b is not None for b in base):
            quality.step(x, _nan(base), where="mid", color="#57606a", linestyle="--", linewidth=1, label="baseline")
        self._estimated(quality, snap, metric)
        outside = s.get("outside", [])
        x_in = x if "outside_t" not in s else (
            np.asarray(s["outside_t"], dtype=float) + (s.get("outside_width") or 2 * half) / 2) / 86_400.0
        _plot(drift, x_in, [None if v is None else 100 * v for v in outside], "worst feature", "#bc4c00")
        titles = ("predictions/s" if "rows" in s else "requests/s", f"{metric} (by prediction time)",
                  "latency (ms)", "inputs outside the training range (%)")
        start, end = story.get("start", 0) / 86_400.0, story.get("end", 0) / 86_400.0
        for ax, title in zip(self.axes, titles, strict=True):
            ax.set_title(title, fontsize=9, loc="left")
            ax.tick_params(labelsize=7)
            if ax.has_data():
                ax.legend(fontsize=6.5, loc="lower left", framealpha=0.6)
            else:
                ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center",
                        color="#57606a", fontsize=8)
        self._events(story.get("events", []), (traffic, quality), (start, end))
        self._time_axis(start, end)

    def _estimated(self, ax: Any, snap: dict[str, Any], metric: str) -> None:
        earlier = [p for p in (snap.get("timeline") or {}).get("estimated_before") or []
                   if p.get("metric") == metric and p.get("value") is not None]
        for i, version in enumerate(dict.fromkeys(p["version"] for p in earlier)):  # production before, faded
            self._estimate_line(ax, [p for p in earlier if p["version"] == version], alpha=0.5,
                                label=None if i else "estimated (earlier versions)")
        est = snap.get("estimated") or {}
        points = [p for p in est.get("series") or [] if p.get("value") is not None]
        if est.get("metric") != metric or not points:
            return
        self._estimate_line(ax, points, alpha=1.0, label="estimated")

    @staticmethod
    def _estimate_line(ax: Any, points: list[dict[str, Any]], *, alpha: float, label: str | None) -> None:
        t = np.array([p["t"] for p in points]) / 86_400.0
        value = np.array([p["value"] for p in points], dtype=float)
        low = np.array([p["low"] if p.get("low") is not None else p["value"] for p in points], dtype=float)
        high = np.array([p["high"] if p.get("high") is not None else p["value"] for p in points], dtype=float)
        ax.fill_between(t, low, high, color="#1a7f37", alpha=0.18 * alpha, linewidth=0)
        ax.plot(t, value, "o-" if len(t) <= SPARSE else "-", color="#1a7f37", markersize=3, linewidth=1,
                alpha=alpha, label=label)

    def _events(self, events: list[dict[str, Any]], labelled: tuple[Any, ...],
                x_range: tuple[float, float]) -> None:
        if not events:
            return
        x = [e["at"] / 86_400.0 for e in events]
        colours = [LEVEL_COLOURS.get(e.get("level") or "", EVENT_COLOURS.get(e["kind"], "#57606a")) for e in events]
        for ax in self.axes:
            for at, colour in zip(x, colours, strict=True):
                ax.axvline(at, color=colour, linewidth=0.9, linestyle=":", alpha=0.9)
        first = max(0, len(events) - MAX_LABELS)
        lo, hi = x_range
        # near the right edge a label goes left of its line
        leftward = [hi > lo and (at - lo) / (hi - lo) > 0.8 for at in x[first:]]
        tiers = _tiers(x[first:], max(hi - lo, 1e-9) * 0.18, leftward=leftward)
        for ax in labelled:
            for tier, at, colour, event, right in zip(tiers, x[first:], colours[first:], events[first:], leftward,
                                                      strict=True):
                ax.text(at, 0.97 - 0.12 * tier, f" {event['label']} " if right else f" {event['label']}",
                        transform=ax.get_xaxis_transform(), fontsize=6.5, color=colour, va="top",
                        ha="right" if right else "left", clip_on=True,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})

    def _time_axis(self, start: float, end: float) -> None:
        from matplotlib import dates
        from matplotlib.ticker import MaxNLocator

        tz = datetime.now().astimezone().tzinfo
        days = datetime.fromtimestamp(start * 86_400, tz).date() != datetime.fromtimestamp(end * 86_400, tz).date()
        pad = max((end - start) * 0.02, 5 / 86_400)
        fmt = "%d %b %H:%M" if days else "%H:%M:%S" if (end - start) * 86_400 < 900 else "%H:%M"
        for ax in self.axes:
            ax.set_xlim(start - pad, end + pad)
            locator = dates.AutoDateLocator(tz=tz, minticks=3, maxticks=6)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(dates.DateFormatter(fmt, tz=tz))
            ax.yaxis.set_major_locator(MaxNLocator(4))
        for ax in (self.axes[0], self.axes[2], self.axes[3]):  # counts and times start at zero; quality zooms in
            if ax.has_data():
                ax.set_ylim(0, max(ax.get_ylim()[1] * 1.1, 1e-9))


def _tiers(xs: list[float], gap: float, levels: int = 6, leftward: list[bool] | None = None) -> list[int]:
    """A height for each label (oldest first): the highest one free of the labels before it. A label spans
    ``gap`` to the right of its line, or to its left where ``leftward`` says so (near the right edge)."""
    ends = [-np.inf] * levels  # where the last label of each height ends
    tiers = []
    for i, at in enumerate(xs):
        start, end = (at - gap, at) if leftward and leftward[i] else (at, at + gap)
        tier = next((k for k in range(levels) if start >= ends[k]), int(np.argmin(ends)))
        ends[tier] = end
        tiers.append(tier)
    return tiers


def _nan(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _plot(ax: Any, x: np.ndarray, values: list[Any], label: str, colour: str) -> None:
    y = _nan(values)[: len(x)]
    shown = np.isfinite(y)
    if not shown.any():
        return
    style = "o-" if shown.sum() <= SPARSE else "-"
    ax.plot(x[: len(y)], y, style, color=colour, markersize=3, linewidth=1, label=label)


def events_html(events: list[dict[str, Any]], limit: int = 12) -> str:
    """The latest events as one line of ``HH:MM label`` items (older ones summarised)."""
    import html

    if not events:
        return ""
    tz = datetime.now().astimezone().tzinfo
    shown = events[-limit:]
    more = f"{len(events) - len(shown)} earlier, then " if len(events) > len(shown) else ""
    items = " · ".join(
        f'<span title="{html.escape(e.get("detail") or "")}" style="color:'
        f'{LEVEL_COLOURS.get(e.get("level") or "", EVENT_COLOURS.get(e["kind"], "#57606a"))}">'
        f'{datetime.fromtimestamp(e["at"], tz).strftime("%H:%M")} {html.escape(e["label"])}</span>' for e in shown)
    return f"<div style='font-size:12px'><b>Timeline</b>: {more}{items}</div>"
