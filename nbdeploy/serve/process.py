"""Kernel side: start, find and stop the server process of a store.

The server runs in its own session (``start_new_session``) so that a kernel shutting down its
process group, or a restart, does not take the endpoint with it. It is found again through the
store's ``server`` record, which holds its PID and its start time: a PID is reused once its process
is gone (a crash, a reboot), so a record is taken to be the server only while the process with that
PID started when the server did, and only then is it signalled.

The server starts with umask 077: what it creates in the store (its log, the prediction log, the
token) is readable by its owner only.
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
from pathlib import Path

from nbdeploy.errors import Unavailable
from nbdeploy.store import ServerRecord, Store, process_start
from nbdeploy.store.files import private_file

START_TIMEOUT = 60.0
SERVER_UMASK = 0o077


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
    # Someone else's zombie: a server that exited while the kernel that started it (its parent) still
    # runs is gone too, or `nbdeploy stop` in a terminal would wait for it until the kill timeout.
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "Z":
            return False
    return True


def is_server(record: ServerRecord) -> bool:
    """Whether ``record.pid`` is still the server that recorded itself, not a later process given its PID."""
    if not pid_alive(record.pid):
        return False
    if record.proc_start is not None:
        return process_start(record.pid) == record.proc_start
    return _serve_command(record.pid)  # a record with no start time: it must at least run `nbdeploy serve`


def _serve_command(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc to tell by: not known to be the server, so never signalled
        return False
    return any(b"nbdeploy" in arg for arg in argv) and b"serve" in argv


def _signal(record: ServerRecord, sig: int) -> bool:
    """Send ``sig`` to the recorded server if it still is that process; False (nothing sent) otherwise.

    Where there are pidfds (Linux), the process is pinned before it is checked, so the signal goes to
    the process that was checked even if the PID were given to another one in between.
    """
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):  # no pidfd_open here, or the process is gone
        pidfd = os.pidfd_open(record.pid)
    try:
        if not is_server(record):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(record.pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _live(record: ServerRecord, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{record.url}/v2/health/live", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def recorded_server(store: Store) -> ServerRecord | None:
    """The store's server record if its process is alive and is that server (a stale record is
    cleared). No network: cheap enough before every request; :func:`running_server` also asks the server."""
    record = store.server()
    if record is None:
        return None
    if is_server(record):
        return record
    store.clear_server(record.pid)
    return None


def running_server(store: Store) -> ServerRecord | None:
    """The store's server if it is up and answers, else ``None`` (and a stale record is cleared)."""
    record = recorded_server(store)
    return record if record is not None and _live(record) else None


def store_arguments(store: Store) -> tuple[list[str], dict[str, str]]:
    """How a child process is told which store to open: the arguments and the environment variables to
    add. ``--home`` and the store's location, unless the location holds a password (a PostgreSQL URL):
    a process's arguments are visible to every user of the machine, its environment to its owner only,
    so the URL then goes in ``NBDEPLOY_HOME``, which a store is opened from when no ``--home`` is given."""
    if store.location == store.shown:
        return ["--home", store.location], {}
    return [], {"NBDEPLOY_HOME": store.location}


@contextlib.contextmanager
def _start_lock(store: Store) -> Iterator[None]:
    """Two kernels deploying at once must not start two servers for one store (on this machine: the lock
    and the server's record live in the store's local directory)."""
    with open(private_file(store.home / "server.lock"), "w") as fh:
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
        log_path = store.home / "server.log"  # this machine's (a PostgreSQL store's local directory)
        where, env = store_arguments(store)
        cmd = [sys.executable, "-m", "nbdeploy.cli", "serve", *where, "--port", str(port or 0)]
        with open(private_file(log_path), "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, start_new_session=True, close_fds=True,
                                    umask=SERVER_UMASK)
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
        if record is None or not is_server(record):
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
    """SIGTERM (graceful drain), then SIGKILL after ``timeout``. Returns True if one was running.

    A record whose PID is no longer the server's (the process is gone, or another one has the PID)
    is cleared and nothing is signalled.
    """
    record = store.server()
    if record is None:
        return False
    if not _signal(record, signal.SIGTERM):
        store.clear_server(record.pid)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_server(record):
            break
        time.sleep(0.05)
    else:
        _signal(record, signal.SIGKILL)
        time.sleep(0.1)
    store.clear_server(record.pid)
    return True


def _tail(path: os.PathLike[str] | str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(fh.read().strip().splitlines()[-lines:])
    except OSError:
        return ""
