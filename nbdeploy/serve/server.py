"""Run the server for one store: bind first, record where it listens, then hand the socket to uvicorn.

SIGTERM (or SIGINT) drains: readiness answers 503 at once, requests keep being served for
``drain_seconds``, then uvicorn stops taking connections, finishes the requests in flight, and
the lifespan stops each version's worker after its queue. A second signal exits at once.

Several server processes on one socket (``nbdeploy serve --workers N``): the parent binds once
(:func:`run`), records the server in the store, then starts ``N`` workers that inherit the listening
socket's file descriptor; the kernel hands each new
connection to whichever worker accepts first. The parent serves nothing itself: it announces
each worker to the store (so ``server.applied`` waits for it), restarts a worker that dies, and
on SIGTERM/SIGINT forwards SIGTERM so every worker drains as a single server does (a second
signal forwards again, which stops the workers at once).

Each worker is a whole server: its own runtime following the store's generation, its own
batchers and its own prediction-log writer into the shared ``log.db`` (SQLite WAL, 30 s busy
timeout). Each reports what it holds per pid; the store aggregates (``Store._aggregate``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.connections import connection_settings
from nbdeploy.serve.process import store_arguments
from nbdeploy.serve.security import allowed_hosts, is_loopback, load_or_create_token
from nbdeploy.serve.urls import browser_hosts  # behind jupyter-server-proxy the browser's Host is a hub's name
from nbdeploy.store import Store
from nbdeploy.store.events import EventSink, NullSink
from nbdeploy.store.files import private_file

log = logging.getLogger("nbdeploy.server")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_sink(store: Store, process: bool | None = None) -> EventSink:
    """The store's prediction log (``log.db``, or the PostgreSQL store's tables), or a NullSink when
    ``NBDEPLOY_PREDICTION_LOG=off``.

    Its writer is a process of its own unless ``process`` is False or ``NBDEPLOY_LOG_WRITER=thread``: a
    thread in the server's process shares the GIL with the event loop, and their convoy costs the server
    several times the writer's own work (see :mod:`nbdeploy.store.logprocess`).
    """
    if os.environ.get("NBDEPLOY_PREDICTION_LOG", "on").lower() in ("0", "off", "false", "no"):
        return NullSink()
    from nbdeploy.store.log import open_sink

    if process is None:
        writer = os.environ.get("NBDEPLOY_LOG_WRITER", "process").lower()
        if writer not in ("process", "thread"):
            raise InvalidInput(f"NBDEPLOY_LOG_WRITER must be 'process' or 'thread', got {writer!r}")
        process = writer == "process"
    return open_sink(store, process=process)


def _logging(store: Store, level: str) -> None:
    """nbdeploy's own lines at INFO or above go to stderr and, when stderr is not already the store's
    server.log (as when the kernel starts the server), to server.log too, so ``nbdeploy logs`` works."""
    ours = logging.getLogger("nbdeploy")
    ours.setLevel(min(logging.INFO, logging.getLevelName(level.upper())))
    ours.propagate = False
    formatter = logging.Formatter(LOG_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    ours.addHandler(stderr)
    path = store.home / "server.log"
    try:
        same = path.exists() and os.path.samestat(os.fstat(2), path.stat())
    except OSError:
        same = False
    if not same:
        handler = logging.FileHandler(private_file(path))
        handler.setFormatter(formatter)
        ours.addHandler(handler)
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def run(home: str | Path | None = None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
        config: ServeConfig | None = None, allow_hosts: tuple[str, ...] = (), sink: EventSink | None = None) -> None:
    os.umask(0o077)  # everything the server (and its workers) writes in the store is the owner's alone
    store = Store(home)
    _logging(store, log_level)
    config = config or ServeConfig.from_env()
    if not is_loopback(host):
        load_or_create_token(store.home)
        log.warning("listening on %s: every route but the health checks needs the bearer token in %s",
                    host, store.home / "server.token")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    record_host = "127.0.0.1" if host in ("localhost", "0.0.0.0") else ("::1" if host == "::" else host)
    store.set_server(os.getpid(), record_host, bound_port)
    log.info("serving %s on %s:%s%s", store.shown, host, bound_port,
             f" with {config.workers} workers" if config.workers > 1 else "")
    try:
        if config.workers > 1:
            code = supervise(store, sock, config, host=host, log_level=log_level, allow_hosts=allow_hosts)
            if code:
                raise SystemExit(code)
        else:
            serve_socket(store, sock, host, log_level, config, allow_hosts,
                         sink if sink is not None else make_sink(store))
    finally:
        store.clear_server(os.getpid())
        log.info("stopped")


def serve_socket(store: Store, sock: socket.socket, host: str, log_level: str, config: ServeConfig,
                 allow_hosts: tuple[str, ...], sink: EventSink, worker: bool = False) -> None:
    """Serve the store on an already listening socket until SIGTERM/SIGINT (one process, or one worker)."""
    import uvicorn

    from nbdeploy.serve import worker_metrics
    from nbdeploy.serve.app import create_app, draining

    token = None if is_loopback(host) else load_or_create_token(store.home)
    app = create_app(store, config=config, sink=sink, token=token,
                     hosts=allowed_hosts(host, (*allow_hosts, *browser_hosts())),
                     worker_metrics=worker_metrics.directory(store.home) if worker else None)  # /metrics sums workers
    limits = connection_settings(config.header_timeout_s, config.body_timeout_s, config.max_connections)
    uv_config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", loop="auto",
                               timeout_graceful_shutdown=10, server_header=False, date_header=False, **limits)
    server = DrainingServer(uv_config, lambda: draining(app), config.drain_seconds)
    # uvicorn re-raises the signal it stopped on once it is done; a no-op handler lets us exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    server.run(sockets=[sock])


def _ignore(sig: int, frame: Any) -> None:
    return None


class DrainingServer:
    """uvicorn's Server, with readiness going 503 for ``grace`` seconds before it stops."""

    def __new__(cls, config: Any, on_drain: Any, grace: float) -> Any:
        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if self.should_exit or getattr(self, "_draining", False):
                    super().handle_exit(sig, frame)  # a second signal: force
                    return
                self._draining = True
                on_drain()
                log.info("draining: readiness is 503, stopping in %.2f s", grace)
                timer = threading.Timer(grace, super().handle_exit, (sig, frame))
                timer.daemon = True
                timer.start()

        return _Server(config)


RESTARTS = 5  # workers dying within RESTART_WINDOW seconds of their start before the server gives up
RESTART_WINDOW = 10.0


def config_env(config: ServeConfig) -> dict[str, str]:
    """The settings as ``NBDEPLOY_*`` variables, so a worker's ``ServeConfig.from_env()`` is the parent's."""
    return {f"NBDEPLOY_{f.name.upper()}": str(getattr(config, f.name)) for f in fields(config)}


def supervise(store: Store, sock: socket.socket, config: ServeConfig, *, host: str, log_level: str,
              allow_hosts: tuple[str, ...] = ()) -> int:
    """Run ``config.workers`` workers on ``sock`` until a signal stops them; returns the exit code."""
    from nbdeploy.serve import worker_metrics

    fd = sock.fileno()
    os.set_inheritable(fd, True)
    where, store_env = store_arguments(store)
    cmd = [sys.executable, "-m", "nbdeploy.serve.server", "--fd", str(fd), *where,
           "--host", host, "--log-level", log_level, "--parent", str(os.getpid())]
    for name in allow_hosts:
        cmd += ["--allow-host", name]
    env = {**os.environ, **config_env(config), **store_env}
    procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    state = {"signals": 0}
    worker_metrics.clear(store.home)  # a new server's /metrics starts from zero; a restarted worker's file stays

    def spawn() -> None:
        # its own process group: a terminal's Ctrl-C reaches the parent only, which drains the workers
        proc = subprocess.Popen(cmd, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL, process_group=0)
        procs[proc.pid] = (proc, time.monotonic())
        store.add_worker(proc.pid)

    def forward(sig: int, frame: Any) -> None:
        state["signals"] += 1
        log.info("stopping %d workers (signal %d)", len(procs), sig)
        for proc, _ in list(procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for _ in range(config.workers):
        spawn()
    crashes: list[float] = []
    code = 0
    while procs:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        entry = procs.pop(pid, None)
        if entry is None:
            continue
        proc, started = entry
        proc.returncode = os.waitstatus_to_exitcode(status)
        if state["signals"]:
            continue
        store.remove_worker(pid)
        log.error("worker %d exited (code %s); starting another", pid, proc.returncode)
        if time.monotonic() - started < RESTART_WINDOW:
            crashes.append(time.monotonic())
        if len([t for t in crashes if time.monotonic() - t < RESTART_WINDOW * RESTARTS]) > RESTARTS:
            log.error("workers keep dying at start-up; stopping the server (see the lines above)")
            code = 1
            forward(signal.SIGTERM, None)
            continue
        spawn()
    sock.close()
    return code


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the parent dies (even by SIGKILL), so no orphan keeps serving."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbdeploy-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--home", help="the store's location (default: $NBDEPLOY_HOME, where a URL with a "
                                       "password is given)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--allow-host", action="append", default=[])
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)

    store = Store(args.home)
    _logging(store, args.log_level)
    sock = socket.socket(fileno=args.fd)
    serve_socket(store, sock, args.host, args.log_level, ServeConfig.from_env(), tuple(args.allow_host),
                 make_sink(store), worker=True)
    log.info("worker %d stopped", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
