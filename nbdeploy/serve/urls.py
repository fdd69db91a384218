"""The endpoint's address as the user's browser can reach it, when the kernel runs remotely.

On JupyterHub, Binder or any remote Jupyter server, ``127.0.0.1:PORT`` is the server machine's
loopback: code in the kernel reaches it, the user's browser does not. jupyter-server-proxy
forwards ``{base_url}proxy/{port}/...`` (behind Jupyter's own login) to ``localhost:{port}``, so
that is the address to show. :func:`public_url` picks, in order:

1. ``NBDEPLOY_PUBLIC_URL``: an explicit template, ``https://hub.example.org/user/alice/proxy/{port}``;
2. JupyterHub (``JUPYTERHUB_SERVICE_PREFIX``) with jupyter-server-proxy installed:
   ``$JUPYTERHUB_PUBLIC_URL`` (when the hub sets it) or the prefix, then ``proxy/{port}``;
3. a kernel started by a Jupyter server (``JPY_PARENT_PID`` names the server process, whose
   ``jpserver-<pid>.json`` in the runtime directory gives its URL and ``base_url``) with
   jupyter-server-proxy installed: ``{server url}proxy/{port}``;
4. else the local URL itself.

A result that starts with ``/`` is a path on the Jupyter server's own origin (a JupyterHub that
does not announce its public URL): a link in the notebook resolves it; a terminal elsewhere needs
the hub's address in front.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

ENV_TEMPLATE = "NBDEPLOY_PUBLIC_URL"


def public_url(server_url: str, env: Mapping[str, str] | None = None) -> str:
    """The browser's URL for a local server URL such as ``http://127.0.0.1:8000`` (no trailing slash)."""
    env = os.environ if env is None else env
    parts = urlsplit(server_url)
    port = parts.port
    if port is None:
        return server_url
    rest = parts.path.rstrip("/")
    template = env.get(ENV_TEMPLATE, "").strip()
    if template:
        return template.replace("{port}", str(port)).rstrip("/") + rest
    base = proxy_base(env)
    if base is None:
        return server_url
    return f"{base}proxy/{port}{rest}"


def proxy_base(env: Mapping[str, str] | None = None) -> str | None:
    """Where ``proxy/{port}`` hangs for the browser (ends in ``/``), or ``None`` when not proxied."""
    env = os.environ if env is None else env
    if not proxy_installed():
        return None
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        return _slash(env.get("JUPYTERHUB_PUBLIC_URL") or prefix)
    server = jupyter_server_info(env)
    if server is not None:
        return _slash(server.get("url") or server.get("base_url") or "/")
    return None


def proxy_installed() -> bool:
    """jupyter-server-proxy importable here (the kernel and the Jupyter server share an environment
    in the usual setups; ``NBDEPLOY_PUBLIC_URL`` covers the others)."""
    return importlib.util.find_spec("jupyter_server_proxy") is not None


def jupyter_server_info(env: Mapping[str, str] | None = None) -> dict | None:
    """The ``jpserver-<pid>.json`` of the Jupyter server that started this kernel, if any."""
    env = os.environ if env is None else env
    pid = env.get("JPY_PARENT_PID", "")
    if not pid.isdigit():
        return None
    for directory in _runtime_dirs(env):
        path = directory / f"jpserver-{pid}.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and str(info.get("pid")) == pid:
            return info
    return None


def browser_hosts(env: Mapping[str, str] | None = None) -> list[str]:
    """Host names the browser's requests carry when they come through the proxy, where known."""
    env = os.environ if env is None else env
    urls = [env.get(ENV_TEMPLATE, "").replace("{port}", "0"), env.get("JUPYTERHUB_PUBLIC_URL", "")]
    server = jupyter_server_info(env)
    if server is not None:
        urls.append(str(server.get("url") or ""))
    return sorted({h for h in (urlsplit(u).hostname for u in urls if u.startswith("http")) if h})


def _runtime_dirs(env: Mapping[str, str]) -> list[Path]:
    dirs = []
    if env.get("JUPYTER_RUNTIME_DIR"):
        dirs.append(Path(env["JUPYTER_RUNTIME_DIR"]))
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        dirs.append(Path(jupyter_runtime_dir()))
    except ImportError:  # no Jupyter here at all
        pass
    return dirs


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
