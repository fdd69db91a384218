"""A throwaway PostgreSQL server for the tests: initdb into a temporary directory, serve on a free loopback
port, one fresh empty database per test, everything removed at the end.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` system user in a
directory that user owns; otherwise it runs as the current user.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "find_bindir", "shared_server"]

USER = "nbdeploy"
DATABASE = "nbdeploy"
SYSTEM_USER = "postgres"
START_ATTEMPTS = 3  # the free port is picked before the server binds it; another process may take it first


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name  # /usr/lib/postgresql/<version>/bin/pg_ctl
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_bindir() -> Path | None:
    """The directory holding pg_ctl, initdb and postgres: the one on PATH, else Debian's newest."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        # /usr/local/bin/pg_ctl may be a lone symlink; initdb and postgres live beside the real file
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, reachable on 127.0.0.1 with trust authentication."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self.reason = ""  # why available() is False
        self.port: int | None = None
        self.directory: Path | None = None
        self._owner_pid: int | None = None
        self._lock = threading.Lock()
        self._database_count = 0
        self._atexit_registered = False

    # -- availability ---------------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether this machine can run the server; when not, ``reason`` says why (tests skip with it)."""
        self.reason = self._unavailable_reason()
        return not self.reason

    def _unavailable_reason(self) -> str:
        if self.bindir is None or not (self.bindir / "pg_ctl").exists():
            return "PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin)"
        for tool in ("initdb", "postgres"):
            if not (self.bindir / tool).exists():
                return f"PostgreSQL's {tool} is missing from {self.bindir}"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install -e '.[postgres]')"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                return f"running as root and there is no {SYSTEM_USER!r} system user to run PostgreSQL as"
            if not (shutil.which("runuser") or shutil.which("su")):
                return f"running as root with neither runuser nor su to switch to {SYSTEM_USER!r}"
        return ""

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the ``nbdeploy`` database, created at start."""
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not running; call start() first")
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    @property
    def running(self) -> bool:
        return self.port is not None

    def start(self) -> None:
        """initdb, start on a free loopback port and create the ``nbdeploy`` database. Idempotent."""
        with self._lock:
            if self.running:
                return
            if not self.available():
                raise RuntimeError(f"cannot start PostgreSQL: {self.reason}")
            self.directory = Path(tempfile.mkdtemp(prefix="nbdeploy-pg-"))
            self._owner_pid = os.getpid()
            if not self._atexit_registered:  # a safety net when the session ends without stop()
                atexit.register(self._stop_at_exit)
                self._atexit_registered = True
            try:
                if os.geteuid() == 0:
                    entry = pwd.getpwnam(SYSTEM_USER)
                    os.chown(self.directory, entry.pw_uid, entry.pw_gid)
                self._run("initdb", "-D", str(self._datadir), "-U", USER, "--auth=trust", "-E", "UTF8",
                          "--locale=C",  # the machine's locale may not be generated; C works everywhere
                          "--no-sync")
                self._start_postmaster()
                self._create(DATABASE)
            except BaseException:
                self._teardown()
                raise

    def restart(self) -> None:
        """Restart the running server on its port (``-m fast``: open connections are closed, as in a
        maintenance restart or a failover); clients must reconnect."""
        with self._lock:
            assert self.directory is not None and self.port is not None, "the server is not running"
            self._run("pg_ctl", "-D", str(self._datadir), "-m", "fast", "-w", "-t", "60", "stop",
                      directory=self.directory)
            self._start_postmaster(self.port)

    def halt(self) -> None:
        """Stop the server but keep its data (an outage); :meth:`resume` starts it again on its port."""
        with self._lock:
            assert self.directory is not None and self.port is not None, "the server is not running"
            self._run("pg_ctl", "-D", str(self._datadir), "-m", "fast", "-w", "-t", "60", "stop",
                      directory=self.directory)

    def up(self) -> bool:
        """Whether the server accepts connections now (False between :meth:`halt` and :meth:`resume`)."""
        return self.directory is not None and (self._datadir / "postmaster.pid").exists()

    def resume(self) -> None:
        with self._lock:
            assert self.directory is not None and self.port is not None, "the server was never started"
            self._start_postmaster(self.port)

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``: nothing in it is worth a clean shutdown) and remove its
        directory. Idempotent."""
        with self._lock:
            self._teardown()

    def _stop_at_exit(self) -> None:
        if os.getpid() == self._owner_pid:  # a forked child exiting must not take its parent's server down
            self.stop()

    def _teardown(self) -> None:
        directory, self.directory = self.directory, None
        if directory is None:
            return
        if (directory / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(directory / "data"), "-m", "immediate", "stop", check=False,
                      directory=directory)
        self.port = None
        shutil.rmtree(directory, ignore_errors=True)

    @property
    def _datadir(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    def _start_postmaster(self, port: int | None = None) -> None:
        """Start on ``port``, else on a free port (tried again if another process takes it first)."""
        assert self.directory is not None
        log = self.directory / "server.log"
        fixed = port
        for attempt in range(1 if fixed else START_ATTEMPTS):
            port = fixed or _free_port()
            options = " ".join([
                "-c listen_addresses=127.0.0.1", f"-p {port}", f"-k {self.directory}",
                # fsync and full_page_writes off: a throwaway server needs no crash safety, and tests run faster
                "-c fsync=off", "-c synchronous_commit=on", "-c full_page_writes=off",
                "-c max_connections=200", "-c shared_buffers=64MB",
            ])
            result = self._run("pg_ctl", "-D", str(self._datadir), "-w", "-t", "60", "-o", options,
                               "-l", str(log), "start", check=False)
            if result.returncode == 0:
                self.port = port
                return
            log_text = log.read_text(errors="replace") if log.exists() else ""
            if "could not bind" not in log_text or fixed or attempt == START_ATTEMPTS - 1:
                raise RuntimeError(f"pg_ctl start failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                                   f"server.log:\n{log_text[-4000:]}")

    def _run(self, tool: str, *args: str, check: bool = True,
             directory: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run one of PostgreSQL's programs, as the postgres user when this process is root."""
        assert self.bindir is not None
        cwd = directory or self.directory
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            if shutil.which("runuser"):
                command = ["runuser", "-u", SYSTEM_USER, "--", *command]
            else:
                command = ["su", SYSTEM_USER, "-s", "/bin/sh", "-c", shlex.join(command)]
        # PG* variables of the calling environment (PGDATA, PGPORT, ...) must not steer this cluster
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        # cwd is the server's own directory: the postgres user may not be allowed into the caller's
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {shlex.join(command)}\n"
                               f"{result.stdout}{result.stderr}")
        return result

    # -- databases ------------------------------------------------------------------------------------

    def fresh_database(self, name: str | None = None) -> str:
        """Create a new empty database and return its URL, so each test starts from a clean slate."""
        if name is None:
            with self._lock:
                self._database_count += 1
                count = self._database_count
            name = f"test_{os.getpid()}_{count}_{uuid.uuid4().hex[:8]}"
        self._create(name)
        return self.database_url(name)

    def _create(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        # the maintenance database: CREATE DATABASE cannot run in a transaction, nor copy a template in use
        with psycopg.connect(self.database_url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


_shared: PostgresServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> PostgresServer | None:
    """The process's one server, started on first use and reused after; None when this machine cannot run one
    (``PostgresServer().reason`` says why)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            server = PostgresServer()
            if not server.available():
                return None
            server.start()
            _shared = server
        elif not _shared.running:
            _shared.start()  # stopped by an earlier session in this process
        return _shared
