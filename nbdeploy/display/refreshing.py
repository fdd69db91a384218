"""What every live view shares: a daemon thread that refreshes it every ``interval`` seconds, stopped by an
``Event`` and a join, and the closing of its widgets (with their layouts and styles) when it stops.

:class:`Refreshing` is mixed into a widget that defines ``interval``, ``_finished``, ``refresh()``, ``stop()``,
``_thread_name()``, ``_tick()`` (one refresh from the thread) and ``_show_failure(exc)`` (a failed refresh, shown
in the view: the thread goes on, as the store may be busy or the log not yet created). Closing the widget in the
frontend stops it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import ipywidgets as widgets

from nbdeploy.errors import NbdeployError


class Refreshing:
    """The refresh thread of a live widget: :meth:`start` and :meth:`_wind_down` (for ``stop()``)."""

    interval: float
    _finished: bool
    _thread: threading.Thread | None = None
    _halt: threading.Event

    def _go_live(self, autostart: bool) -> None:
        """The end of ``__init__``: stop when the frontend closes the widget, show the first state, start."""
        self.observe(self._comm_closed, names="comm")  # type: ignore[attr-defined]
        self.refresh()  # type: ignore[attr-defined]
        if autostart:
            self.start()

    def _comm_closed(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.stop()  # type: ignore[attr-defined]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running or self._finished:
            return
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self._thread_name(), daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self._tick()
            except Exception as exc:  # keep trying: the store may be busy or the log not yet created
                self._show_failure(exc)

    def _halt_thread(self, timeout: float) -> None:
        """Stop the thread and wait for it (unless it is the caller: a stop from its own refresh)."""
        if self._thread is None:
            return
        self._halt.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _wind_down(self, timeout: float) -> bool:
        """The start of ``stop()``: halt the thread and take a last refresh, so the static view left behind
        shows the state at stop (when it can be read); False when the view had stopped already."""
        self._halt_thread(timeout)
        if self._finished:
            return False
        with contextlib.suppress(Exception):
            self.refresh()  # type: ignore[attr-defined]
        self._finished = True
        return True

    def _thread_name(self) -> str:
        raise NotImplementedError

    def _tick(self) -> None:
        raise NotImplementedError

    def _show_failure(self, exc: Exception) -> None:
        raise NotImplementedError


def failure(exc: BaseException) -> str:
    """A failed refresh or action as one line for the view (never a traceback)."""
    return exc.message if isinstance(exc, NbdeployError) else f"{type(exc).__name__}: {exc}"


def close_widgets(*parts: Any) -> None:
    """Close each widget with its layout and style (ipywidgets keeps those alive on their own otherwise)."""
    for part in parts:
        for sub in (getattr(part, "layout", None), getattr(part, "style", None)):
            if isinstance(sub, widgets.Widget):
                sub.close()
        part.close()
