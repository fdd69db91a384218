"""Several server processes on one socket (``nbdeploy serve --workers N``).

The parent binds once (serve/main.py), records the server in the store, then starts ``N``
workers that inherit the listening socket's file descriptor; the kernel hands each new
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
import time
from dataclasses import fields
from typing import Any

from nbdeploy.serve.config import ServeConfig
from nbdeploy.store import Store

log = logging.getLogger("nbdeploy.server")
RESTARTS = 5  # workers dying within RESTART_WINDOW seconds of their start before the server gives up
RESTART_WINDOW = 10.0


def config_env(config: ServeConfig) -> dict[str, str]:
    """The settings as ``NBDEPLOY_*`` variables, so a worker's ``ServeConfig.from_env()`` is the parent's."""
    return {f"NBDEPLOY_{f.name.upper()}": str(getattr(config, f.name)) for f in fields(config)}


def supervise(store: Store, sock: socket.socket, config: ServeConfig, *, host: str, log_level: str,
              allow_hosts: tuple[str, ...] = ()) -> int:
    """Run ``config.workers`` workers on ``sock`` until a signal stops them; returns the exit code."""
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    cmd = [sys.executable, "-m", "nbdeploy.serve.workers", "--fd", str(fd), "--home", str(store.home),
           "--host", host, "--log-level", log_level, "--parent", str(os.getpid())]
    for name in allow_hosts:
        cmd += ["--allow-host", name]
    env = {**os.environ, **config_env(config)}
    procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    state = {"signals": 0}

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
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--allow-host", action="append", default=[])
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    from nbdeploy.serve.main import _logging, make_sink, serve_socket

    store = Store(args.home)
    _logging(store, args.log_level)
    sock = socket.socket(fileno=args.fd)
    serve_socket(store, sock, args.host, args.log_level, ServeConfig.from_env(), tuple(args.allow_host),
                 make_sink(store))
    log.info("worker %d stopped", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
