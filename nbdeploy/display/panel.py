"""The models panel: every model of a store, live, in JupyterLab's side area (or inline, with a note).

Per model: a status light (stopped, or serving at the level of its latest alert, or of the live monitor
opened from the panel), its versions and aliases, a sparkline of requests per minute over the last hour,
the last alert and a running canary's progress; buttons open the monitor below it, roll production back
(after a confirmation) and stop a canary. What an action did, or why it could not, is shown in the row.

The panel takes plain data: ``fetch()`` returns one dict per model (see :mod:`nbdeploy.monitor.overview`),
drawn by :mod:`nbdeploy.display.overview`, and :class:`PanelActions` holds the callbacks the buttons call,
so this module never imports the layers that own them. A daemon thread refreshes it every ``interval``
seconds and is stopped by an ``Event`` and a join (the Stop button, :meth:`ModelsPanel.stop`, or closing
the widget); several trait changes go out together under ``hold_sync``. Its display carries a ``text/html``
twin, and stopping replaces the display with the final static view, so saved notebooks and static HTML
still show the models.
"""

from __future__ import annotations

import contextlib
import html
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from nbdeploy.display.monitor import COLOURS
from nbdeploy.display.overview import MUTED, TITLE, plain, row_html, static_html
from nbdeploy.display.refreshing import Refreshing, close_widgets, failure

_LIVE: dict[str, ModelsPanel] = {}


@dataclass
class PanelActions:
    """What the buttons do, by model name. ``rollback`` and ``stop_canary`` return a line saying what
    happened; ``monitor`` returns a monitor widget (with ``stop()``). ``None`` leaves the button out."""

    monitor: Callable[[str], Any] | None = None
    rollback: Callable[[str], str] | None = None
    stop_canary: Callable[[str], str] | None = None


def _small() -> widgets.Layout:
    """A button as wide as its words; one layout per widget, as hiding one must not hide the others."""
    return widgets.Layout(width="auto")


# -- the live panel ------------------------------------------------------------------------------

class ModelRow(widgets.VBox):
    """One model in the panel: its summary, its buttons, a confirmation, the last action's result, its monitor."""

    def __init__(self, name: str, panel: ModelsPanel) -> None:
        self.name, self.panel = name, panel
        self.row: dict[str, Any] = {"name": name}
        self.summary = widgets.HTML()
        actions = panel.actions
        self.monitor_button = widgets.Button(description="Monitor", icon="line-chart", layout=_small(),
                                             tooltip=f"open the live monitor of {name} below")
        self.rollback_button = widgets.Button(description="Roll back", icon="undo", layout=_small())
        self.canary_button = widgets.Button(description="Stop canary", icon="stop", layout=_small(),
                                            tooltip="end the canary: production answers every request again")
        self.monitor_button.on_click(lambda _: self.toggle_monitor())
        self.rollback_button.on_click(lambda _: self.ask_rollback())
        self.canary_button.on_click(lambda _: self.run("stop_canary", "stopping the canary…"))
        shown = [b for b, action in ((self.monitor_button, actions.monitor),
                                     (self.rollback_button, actions.rollback),
                                     (self.canary_button, actions.stop_canary)) if action is not None]
        self.buttons = widgets.HBox(shown, layout=widgets.Layout(flex_flow="row wrap"))
        self.question = widgets.HTML()
        self.confirm_button = widgets.Button(description="Roll back", button_style="danger", layout=_small())
        self.cancel_button = widgets.Button(description="Cancel", layout=_small())
        self.confirm_button.on_click(lambda _: self.run("rollback", "rolling back…"))
        self.cancel_button.on_click(lambda _: self._confirming(False))
        self.confirm = widgets.HBox([self.question, self.confirm_button, self.cancel_button],
                                    layout=widgets.Layout(display="none", flex_flow="row wrap", align_items="center"))
        self.message = widgets.HTML()
        self.monitor_box = widgets.Box(layout=widgets.Layout(overflow="auto"))
        self.monitor: Any = None
        super().__init__([self.summary, self.buttons, self.confirm, self.message, self.monitor_box],
                         layout=widgets.Layout(border="1px solid #d0d7de", padding="4px 8px", margin="4px 0"))
        self.add_class("nbdeploy-panel-row")

    # -- what the refresh thread shows
    def live_level(self) -> str | None:
        snap = self._monitor_snap()
        return ((snap.get("alert") or {}).get("level")) if snap else None

    def _monitor_snap(self) -> dict[str, Any]:
        if self.monitor is not None and getattr(self.monitor, "comm", None) is None:
            self._monitor_closed()  # stopped by its own Stop button
        return (getattr(self.monitor, "snap", None) or {}) if self.monitor is not None else {}

    def update(self, row: dict[str, Any], now: float) -> None:
        snap = self._monitor_snap()
        if row.get("canary") and isinstance(snap.get("canary"), dict):  # the monitor's own count, when open
            row = {**row, "canary": {**row["canary"], **{k: v for k, v in snap["canary"].items()
                                                          if k in ("progress", "promote_after") and v is not None}}}
        self.row = row
        production, previous = (row.get("aliases") or {}).get("production"), row.get("previous")
        with self.summary.hold_sync(), self.rollback_button.hold_sync(), self.canary_button.layout.hold_sync():
            self.summary.value = row_html(row, live_level=self.live_level(), now=now)
            self.rollback_button.disabled = previous is None
            self.rollback_button.description = f"Roll back to v{previous}" if previous else "Roll back"
            self.rollback_button.tooltip = (f"serve v{previous} instead of v{production}" if previous else
                                            "no earlier production version to go back to")
            self.canary_button.layout.display = None if row.get("canary") else "none"

    # -- the buttons (the kernel runs them on its main thread)
    def ask_rollback(self) -> None:
        production, previous = (self.row.get("aliases") or {}).get("production"), self.row.get("previous")
        what = f"v{previous} instead of v{production}" if previous else "the previous production version"
        self.question.value = f"Serve {what} for every request to <b>{html.escape(self.name)}</b>?"
        self._confirming(True)

    def _confirming(self, on: bool) -> None:
        with self.confirm.layout.hold_sync(), self.buttons.layout.hold_sync():
            self.confirm.layout.display = None if on else "none"
            self.buttons.layout.display = "none" if on else None

    def run(self, action: str, doing: str) -> None:
        """Call one action and show what it did, or why it failed, in this row; then refresh the panel."""
        self._confirming(False)
        self._say(doing, MUTED)
        try:
            done = getattr(self.panel.actions, action)(self.name)
        except Exception as exc:
            self._say(failure(exc), COLOURS["ALERT"])
        else:
            self._say(str(done), COLOURS["OK"])
        with contextlib.suppress(Exception):  # the refresh thread shows its own failures
            self.panel.refresh()

    def _say(self, text: str, colour: str) -> None:
        self.message.value = f'<div class="nbdeploy-action" style="color:{colour}">{html.escape(text)}</div>'

    def toggle_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self._monitor_closed()
            return
        assert self.panel.actions.monitor is not None
        try:
            self.monitor = self.panel.actions.monitor(self.name)
        except Exception as exc:
            self._say(failure(exc), COLOURS["ALERT"])
            return
        self.monitor_box.children = (self.monitor,)
        self.monitor_button.description, self.monitor_button.icon = "Hide monitor", "times"

    def _monitor_closed(self) -> None:
        self.monitor = None
        self.monitor_box.children = ()
        with self.monitor_button.hold_sync():
            self.monitor_button.description, self.monitor_button.icon = "Monitor", "line-chart"

    def close_all(self) -> None:
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.stop()
        close_widgets(self.summary, self.monitor_button, self.rollback_button, self.canary_button, self.buttons,
                      self.question, self.confirm_button, self.cancel_button, self.confirm, self.message,
                      self.monitor_box, self)


class ModelsPanel(Refreshing, widgets.VBox):
    """Every model of a store, refreshed by a daemon thread. ``stop()`` ends it and leaves a static view."""

    def __init__(self, fetch: Callable[[], list[dict[str, Any]]], actions: PanelActions | None = None, *,
                 interval: float = 5.0, note: str = "", autostart: bool = True,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.fetch, self.actions, self.interval, self.note = fetch, actions or PanelActions(), interval, note
        self.on_stop = on_stop
        self._header = widgets.HTML()
        self._stop_button = widgets.Button(description="Stop", icon="stop", layout=_small(),
                                           tooltip="stop updating (the last state stays in the notebook)")
        self._stop_button.on_click(lambda _: self.stop())
        self._header.layout.flex = "1 1 auto"
        self._stop_button.layout.flex = "0 0 auto"
        self._top = widgets.HBox([self._header, self._stop_button], layout=widgets.Layout(align_items="center"))
        self._list = widgets.VBox()
        super().__init__([self._top, self._list], layout=widgets.Layout(padding="4px"))
        self.add_class("nbdeploy-models-panel")
        self.rows: list[dict[str, Any]] = []
        self.model_rows: dict[str, ModelRow] = {}
        self.refreshes = 0
        self.at = time.time()
        self._lock = threading.Lock()
        self._display_id = uuid.uuid4().hex
        self._displayed = False
        self._sidecar: Any = None
        self._finished = False
        self._go_live(autostart)

    @property
    def docked(self) -> bool:
        return self._sidecar is not None

    def refresh(self) -> list[dict[str, Any]]:
        """Fetch every model's row and show it; returns the rows."""
        with self._lock:
            rows, now = self.fetch(), time.time()
            names = [r["name"] for r in rows]
            for gone in set(self.model_rows) - set(names):
                self.model_rows.pop(gone).close_all()
            for name in names:
                if name not in self.model_rows:
                    self.model_rows[name] = ModelRow(name, self)
            for row in rows:
                self.model_rows[row["name"]].update(row, now)
            self.rows, self.at = rows, now
            self.refreshes += 1
            children = tuple(self.model_rows[n] for n in names)
            with self._list.hold_sync(), self._header.hold_sync():
                if self._list.children != children:
                    self._list.children = children
                self._header.value = self._header_html()
            return rows

    def _header_html(self, error: str = "") -> str:
        count = len(self.rows)
        note = f'<div style="color:{MUTED}">{html.escape(self.note)}</div>' if self.note else ""
        failed = (f'<div style="color:{COLOURS["ALERT"]}">refresh failed: {html.escape(error)}</div>'
                  if error else "")
        return (f"<div><b>{TITLE}</b> · {count} model{'' if count == 1 else 's'} · updated "
                f"{time.strftime('%H:%M:%S', time.localtime(self.at))}</div>{note}{failed}")

    def _thread_name(self) -> str:
        return "nbdeploy-models-panel"

    def _tick(self) -> None:
        self.refresh()

    def _show_failure(self, exc: Exception) -> None:
        self._header.value = self._header_html(failure(exc))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop refreshing, leave the last state as static HTML where the panel was displayed, close it."""
        if not self._wind_down(timeout):
            return
        if self._displayed:
            from IPython.display import update_display

            update_display(self.static_bundle(), raw=True, display_id=self._display_id)
        if self._sidecar is not None:
            self._sidecar.close()
        for row in self.model_rows.values():
            row.close_all()
        close_widgets(self._header, self._stop_button, self._top, self._list, self)
        for key, panel in list(_LIVE.items()):
            if panel is self:
                del _LIVE[key]
        if self.on_stop is not None:
            self.on_stop()

    def dock(self, title: str = TITLE) -> None:
        """Show the live panel in JupyterLab's side area (the ``sidecar`` package's right-hand panel)."""
        from IPython.display import display
        from sidecar import Sidecar

        self._sidecar = Sidecar(title=title)
        with self._sidecar:
            display(self._live_bundle(), raw=True)

    def _live_bundle(self) -> dict[str, Any]:
        data = super()._repr_mimebundle_() or {}
        return {**data, **self.static_bundle()}

    def static_bundle(self) -> dict[str, Any]:
        return {"text/html": static_html(self.rows, at=self.at, note=self.note), "text/plain": plain(self.rows)}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if self._finished or self.docked:
            bundle = self.static_bundle()
            note = ("<div style='color:#57606a'>Live in JupyterLab's side area (<b>nbdeploy models</b>). Below, the "
                    "state when it opened; the final state replaces it when the panel stops.</div>"
                    ) if not self._finished else ""
            return {**bundle, "text/html": note + bundle["text/html"]}
        return self._live_bundle()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self._finished:  # a closed widget has no view left: show the final state
            display(self.static_bundle(), raw=True)
            return
        display(self._repr_mimebundle_(), raw=True, display_id=self._display_id)
        self._displayed = True


def side_area_missing() -> str:
    """Why the panel cannot open in JupyterLab's side area here ("" when it can)."""
    try:
        import sidecar  # noqa: F401
    except ImportError:
        return "the sidecar package is not installed (pip install sidecar), so the panel is shown here"
    # JupyterLab (and Notebook 7) start kernels through jupyter_server, which names the session; VS Code and
    # Colab start them otherwise and cannot show a sidecar.
    if "JPY_SESSION_NAME" not in os.environ or "VSCODE_PID" in os.environ or "google.colab" in sys.modules:
        return "JupyterLab's side area is not available in this frontend, so the panel is shown here"
    return ""


def models_panel(fetch: Callable[[], list[dict[str, Any]]], actions: PanelActions | None = None, *,
                 key: str = "", interval: float = 5.0, inline: bool = False,
                 on_stop: Callable[[], None] | None = None) -> ModelsPanel:
    """A started panel, docked in JupyterLab's side area unless ``inline`` or that is not possible here (then it
    shows inline with a note saying why). It replaces this kernel's earlier panel of the same ``key`` (store)."""
    if key in _LIVE:
        _LIVE[key].stop()
    note = "" if inline else side_area_missing()
    panel = ModelsPanel(fetch, actions, interval=interval, note=note, on_stop=on_stop)
    if not inline and not note:
        try:
            panel.dock()
        except BaseException:
            panel.stop()
            raise
    _LIVE[key] = panel
    return panel


def stop_panels() -> int:
    """Stop this kernel's live panels; returns how many were stopped."""
    panels = list(_LIVE.values())
    for panel in panels:
        panel.stop()
    return len(panels)
