"""Kernel side: start, find and stop the server process of a store.

The server runs in its own session (``start_new_session``) so that a kernel shutting down its
process group, or a restart, does not take the endpoint with it. It is found again through the
store's ``server`` record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from nbdeploy.errors import Unavailable
from nbdeploy.store import ServerRecord, Store

START_TIMEOUT = 60.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _live(record: ServerRecord, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{record.url}/v2/health/live", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running_server(store: Store) -> ServerRecord | None:
    """The store's server if it is up, else ``None`` (and a stale record is cleared)."""
    record = store.server()
    if record is None:
        return None
    if pid_alive(record.pid) and _live(record):
        return record
    if not pid_alive(record.pid):
        store.clear_server(record.pid)
    return None


@contextlib.contextmanager
def _start_lock(store: Store) -> Iterator[None]:
    """Two kernels deploying at once must not start two servers for one store."""
    with open(store.home / "server.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_server(store: Store, port: int | None = None, timeout: float = START_TIMEOUT) -> ServerRecord:
    """Reuse the store's running server, or start one and wait until it answers."""
    with _start_lock(store):
        record = running_server(store)
        if record is not None:
            return record
        log_path = store.home / "server.log"
        cmd = [sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(store.home), "--port", str(port or 0)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(f"the nbdeploy server exited at start-up (code {proc.returncode}); "
                                  f"see {log_path}: {_tail(log_path)}")
            record = store.server()
            if record is not None and record.pid == proc.pid and _live(record, timeout=0.5):
                return record
            time.sleep(0.05)
        proc.kill()
        raise Unavailable(f"the nbdeploy server did not start within {timeout:.0f} s; see {log_path}")


def wait_applied(store: Store, generation: int, timeout: float = 60.0) -> None:
    """Block until the server has brought itself in line with the store at ``generation``: with
    ``--workers N``, every live worker (``server.applied`` is the slowest worker's generation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.server()
        if record is None or not pid_alive(record.pid):
            raise Unavailable("the nbdeploy server is not running")
        for pid in store.workers():  # a worker that died no longer holds the server back
            if not pid_alive(pid):
                store.remove_worker(pid)
        record = store.server()
        if record is not None and record.applied >= generation:
            return
        time.sleep(0.02)
    raise Unavailable(f"the nbdeploy server did not pick up the change within {timeout:.0f} s")


def stop_server(store: Store, timeout: float = 15.0) -> bool:
    """SIGTERM (graceful drain), then SIGKILL after ``timeout``. Returns True if one was running."""
    record = store.server()
    if record is None:
        return False
    if not pid_alive(record.pid):
        store.clear_server(record.pid)
        return False
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(record.pid):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
        time.sleep(0.1)
    store.clear_server(record.pid)
    return True


def _tail(path: os.PathLike[str] | str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(fh.read().strip().splitlines()[-lines:])
    except OSError:
        return ""
