"""The deployment card: a widget in a live kernel, plain HTML everywhere else.

Both go out in one mimebundle, so a saved notebook, nbconvert's HTML or GitHub still show the
card's status, URL and example call when no widget renderer is there.
"""

from __future__ import annotations

import html
from typing import Any


def card_html(info: dict[str, Any]) -> str:
    """Static HTML for a deployment: name, version, status, URL, curl example, inputs, fidelity."""
    status = str(info.get("status"))
    colour = "#1a7f37" if status == "ready" else ("#9a6700" if status == "starting" else "#cf222e")
    rows = [
        ("Version", info.get("version")),
        ("Status", f'<span style="color:{colour};font-weight:600">&#9679; {html.escape(status)}</span>'),
        ("Endpoint", f'<code>{html.escape(str(info.get("url")))}</code>'),
    ]
    browser = info.get("browser_url")
    if browser:  # a remote Jupyter: the browser gets there through jupyter-server-proxy only
        rows[-1] = ("Endpoint (kernel)", rows[-1][1])
        rows.append(("Endpoint (browser)", f'<a href="{html.escape(browser)}" target="_blank">'
                                           f"<code>{html.escape(browser)}</code></a>"))
    fidelity = info.get("fidelity") or {}
    if fidelity:
        if fidelity.get("task") == "regression":
            fig = f"max relative diff {fidelity.get('max_rel_diff', 0):.2g}"
        else:
            fig = (f"labels agree {fidelity.get('agreement', 0):.2%}, "
                   f"max prob. diff {fidelity.get('max_abs_diff', 0):.2g}")
        verdict = "passed" if fidelity.get("passed") else "FAILED (forced)"
        rows.append(("ONNX fidelity", html.escape(f"{verdict}, {fidelity.get('precision')}: {fig} "
                                                    f"on {fidelity.get('n')} rows")))
    signature = info.get("signature") or {}
    inputs = signature.get("inputs", [])
    if inputs:
        shown = ", ".join(f"{i['name']}: {i['datatype']}" for i in inputs[:12])
        more = f" … (+{len(inputs) - 12})" if len(inputs) > 12 else ""
        rows.append(("Inputs", html.escape(shown + more)))
    gate = "passed on held-out data" if info.get("gated") else "not gated (no labelled held-out data)"
    rows.append(("Promotion gate", gate))
    evaluation = info.get("metrics") or {}
    primary = evaluation.get("primary_metric")
    score = (evaluation.get("metrics") or {}).get(primary)
    if score is not None:
        rows.append(("Held-out " + html.escape(primary), f"{score:.4f} on {evaluation.get('n')} rows"))
    total = (info.get("timings") or {}).get("total_s")
    if total:
        rows.append(("Deployed in", f"{total:.2f} s"))
    body = "".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0">{k}</th><td style="text-align:left">{v}</td></tr>'
        for k, v in rows
    )
    curl, browser_curl = info.get("curl"), info.get("browser_curl")
    pre = '<pre style="white-space:pre-wrap">{}</pre>'
    calls = pre.format(html.escape(curl or ""))
    if curl and browser_curl:
        calls = ("From the kernel, or a terminal on the Jupyter server:" + calls
                 + "From elsewhere, through jupyter-server-proxy:" + pre.format(html.escape(browser_curl)))
    curl_html = f"<details><summary>Call it</summary>{calls}</details>" if curl else ""
    return (f'<div class="nbdeploy-card" style="border:1px solid #d0d7de;border-radius:6px;padding:8px 12px">'
            f'<b>nbdeploy</b> · model <b>{html.escape(str(info.get("name")))}</b>'
            f"<table>{body}</table>{curl_html}</div>")


def card_bundle(info: dict[str, Any]) -> dict[str, Any]:
    """Mimebundle with the widget view (in a kernel) and the HTML fallback."""
    text = card_html(info)
    bundle: dict[str, Any] = {"text/html": text,
                              "text/plain": f"nbdeploy: {info.get('name')} v{info.get('version')} "
                                            f"{info.get('status')} at {info.get('url')}"
                                            + (f" (browser: {info['browser_url']})" if info.get("browser_url") else "")}
    if _in_kernel():
        import ipywidgets

        widget = ipywidgets.HTML(value=text)
        view = widget._repr_mimebundle_() or {}
        bundle.update({k: v for k, v in view.items() if k != "text/plain"})
    return bundle


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
