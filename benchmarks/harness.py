"""Processes and the load generator: start a server, wait until it answers, run wrk, read its numbers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def ensure_wrk() -> str:
    """wrk, installed from Debian when missing (this is a benchmark, not a test)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("[setup] installing wrk with apt-get…", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Server:
    """One server under test: its command, the URL that says it is ready, and the scoring URL."""

    label: str
    argv: list[str]
    ready_url: str
    score_url: str
    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    proc: subprocess.Popen | None = None
    startup_s: float = float("nan")

    def start(self, log: Path, timeout: float = 180.0) -> bool:
        started = time.perf_counter()
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                print(f"[skip] {self.label}: exited at start-up, see {log}", flush=True)
                return False
            if _ok(self.ready_url, timeout=0.5):
                self.startup_s = time.perf_counter() - started
                return True
            time.sleep(0.005)
        print(f"[skip] {self.label}: not ready within {timeout:.0f} s, see {log}", flush=True)
        self.stop()
        return False

    def rss_mb(self) -> float:
        """Resident memory of the server and its children (BentoML and MLflow fork workers)."""
        if self.proc is None:
            return float("nan")
        total = 0
        pids = [self.proc.pid]
        while pids:
            pid = pids.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except (OSError, AttributeError):
                continue
            pids += [int(c) for c in children]
        return total / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its children: divided by the requests
        answered, a cost per request that a busy shared machine distorts far less than req/s."""
        if self.proc is None:
            return float("nan")
        total, pids, tick = 0, [self.proc.pid], os.sysconf("SC_CLK_TCK")
        while pids:
            pid = pids.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except (OSError, IndexError):
                continue
            pids += [int(c) for c in children]
        return total / tick

    def settle(self, quiet_s: float = 0.3, limit_s: float = 120.0) -> float:
        """Wait until the server and its children stop using CPU (a log writer catching up after a burst),
        so that work lands in this server's figures, not in the next one's; returns the seconds waited."""
        started = time.monotonic()
        before = self.cpu_seconds()
        while time.monotonic() - started < limit_s:
            time.sleep(quiet_s)
            now = self.cpu_seconds()
            if now - before < 0.05 * quiet_s:  # under 5 % of a core: idle (the server's own timers)
                break
            before = now
        return time.monotonic() - started

    def post(self, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(self.score_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc).encode()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0


def wrk(binary: str, url: str, body: Path, connections: int, seconds: float) -> WrkResult:
    script = body.with_suffix(".lua")
    if not script.exists():
        script.write_text(
            'wrk.method = "POST"\n'
            f'local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    threads = 1 if connections == 1 else 2
    out = subprocess.run([binary, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, timeout=seconds + 60).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        print(f"[warn] wrk gave no result for {url}: {out[-300:]!r}", flush=True)
        return WrkResult(float("nan"), float("nan"), float("nan"), -1)
    rps = float(found.group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    done = re.search(r"(\d+) requests in", out)
    return WrkResult(rps, pct("50"), pct("99"), errors, int(done.group(1)) if done else 0)
