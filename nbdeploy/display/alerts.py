"""A model's alert history (``nbdeploy.alerts(name)``, ``%deploy alerts NAME``), as text and HTML."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

COLOURS = {"OK": "#1a7f37", "WARN": "#9a6700", "ALERT": "#cf222e"}


@dataclass
class AlertHistory:
    """The recorded alerts of ``name``, oldest first (``rows``: plain dicts), and where they are sent.

    ``webhook`` is shown redacted (scheme and host): webhook URLs often hold a secret.
    """

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    webhook: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    @property
    def level(self) -> str:
        """The model's level as last recorded (``OK`` when nothing was)."""
        return self.rows[-1]["level"] if self.rows else "OK"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def _sent_to(self) -> str:
        return f"sent to {self.webhook}" if self.webhook else "no webhook"

    def __repr__(self) -> str:
        head = f"alerts of {self.name!r} ({self._sent_to()})"
        if not self.rows:
            return f"{head}: none recorded"
        return "\n".join([f"{head}, times in UTC:", *(f"  {_when(r['at'])}  {r['level']:<5}  {r['source']:<8}  "
                                        f"{'; '.join(r['reasons'])}{_delivery(r, ' [{}]')}" for r in self.rows)])

    def _repr_html_(self) -> str:
        caption = f"<p>Alerts of <b>{html.escape(self.name)}</b> ({html.escape(self._sent_to())})</p>"
        if not self.rows:
            return caption + "<p>None recorded.</p>"
        head = "".join(f"<th style='text-align:left'>{h}</th>"
                       for h in ("time (UTC)", "level", "source", "reasons", "webhook"))
        body = []
        for r in self.rows:
            colour = COLOURS.get(r["level"], "#6e7781")
            cells = [html.escape(_when(r["at"])),
                     f"<span style='color:{colour}'>&#9679; {html.escape(r['level'])}</span>",
                     html.escape(r["source"]), html.escape("; ".join(r["reasons"])),
                     html.escape(_delivery(r, "{}") or "—")]
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
        return f"{caption}<table class='nbdeploy-alerts'><tr>{head}</tr>{''.join(body)}</table>"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _delivery(row: dict[str, Any], form: str) -> str:
    """``sent``, ``retrying (2): HTTP 500``, ``failed (5): ...``, or "" (not sent)."""
    state = row.get("delivery") or ""
    if state in ("retrying", "failed"):
        state = f"{state} ({row['attempts']}): {row.get('last_error') or 'unknown error'}"
    return form.format(state) if state else ""
