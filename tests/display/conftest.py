"""Fixtures of the display tests: the notebook's displays and JupyterLab's side area, without either."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict, str]]:
    """What a view would put in the notebook: (kind, bundle, display_id), kind ``display`` or ``update``."""
    calls: list[tuple[str, dict, str]] = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, raw=False, display_id=None: calls.append(("display", obj, display_id)))
    monkeypatch.setattr(IPython.display, "update_display",
                        lambda obj, raw=False, display_id=None: calls.append(("update", obj, display_id)))
    return calls


@pytest.fixture
def sidecars(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The sidecar package, faked: records the side panels opened (each with ``title`` and ``closed``)."""
    opened: list[Any] = []

    class Sidecar:
        def __init__(self, title: str) -> None:
            self.title, self.closed = title, False
            opened.append(self)

        def __enter__(self) -> Sidecar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def close(self) -> None:
            self.closed = True

    monkeypatch.setitem(sys.modules, "sidecar", types.SimpleNamespace(Sidecar=Sidecar))
    return opened
