"""Run the server for one store: bind first, record where it listens, then hand the socket to uvicorn."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from nbdeploy.errors import InvalidInput
from nbdeploy.store import Store

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def run(home: str | Path | None = None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
    import uvicorn

    from nbdeploy.serve.app import create_app

    if host not in LOOPBACK:
        raise InvalidInput(f"nbdeploy serves on loopback only for now; got --host {host}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(home)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(store), log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10, server_header=False)
    server = uvicorn.Server(config)
    store.set_server(os.getpid(), "127.0.0.1" if host == "localhost" else host, bound_port)
    try:
        server.run(sockets=[sock])
    finally:
        store.clear_server(os.getpid())
