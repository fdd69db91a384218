"""The registry table (`%deploy list`): one row per model, as HTML that also renders statically."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any


@dataclass
class RegistryTable:
    """Rows of ``nbdeploy.models()``: name, versions, aliases, status, URL, key metric."""

    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> dict[str, Any]:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(name)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p>No models in this store yet: <code>%deploy MODEL --name NAME --sample X</code></p>"
        head = "".join(f"<th style='text-align:left'>{h}</th>"
                       for h in ("model", "versions", "aliases", "status", "endpoint", "key metric"))
        body = []
        for r in self.rows:
            versions = version_states(r)
            aliases = ", ".join(f"{a} → v{v}" for a, v in sorted(r["aliases"].items())) or "—"
            colour = {"ready": "#1a7f37", "stopped": "#6e7781"}.get(r["status"], "#cf222e")
            metric = f"{r['metric']} {r['score']:.4f}" if r["score"] is not None else "—"
            url = f"<code>{html.escape(r['url'])}</code>" if r["url"] else "—"
            cells = [f"<b>{html.escape(r['name'])}</b>", html.escape(versions), html.escape(aliases),
                     f"<span style='color:{colour}'>&#9679; {html.escape(r['status'])}</span>", url,
                     html.escape(metric)]
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
        return f"<table class='nbdeploy-registry'><tr>{head}</tr>{''.join(body)}</table>"

    def __repr__(self) -> str:
        return "\n".join(text_line(r) for r in self.rows) or "no models in this store"


def version_states(row: dict[str, Any]) -> str:
    """``1 (refused), 2 (serving)``: each version with its state."""
    states = row.get("states") or {}
    return ", ".join(f"{v} ({states.get(v, 'refused' if v in row['refused'] else 'registered')})"
                     for v in row["versions"])


def text_line(row: dict[str, Any]) -> str:
    """One model as a line of text (``nbdeploy list``, ``repr``)."""
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(row["aliases"].items())) or "no aliases"
    metric = f"{row['metric']} {row['score']:.4f}" if row.get("score") is not None else "-"
    return (f"{row['name']}: {row['status']}; versions {version_states(row)}; {aliases}; {metric}; "
            f"{row['url'] or 'no endpoint'}")
