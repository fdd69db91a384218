"""The Ray Serve scenario of test_ray.py, run as a script inside a loopback-only network namespace.

    python ray_scenario.py DIR [--bench SECONDS]

Starts a throwaway PostgreSQL (tests/pgserver.py, inside the namespace) and a local Ray, serves a
store of two iris versions in that database with 2 replicas, sends V2 requests from threads while
version 2 replaces version 1 through a reconfigure, then checks that no request failed, that later
answers come from version 2, that every answered prediction reached the shared log (both
replicas log by default on a PostgreSQL store), that labels sent through Ray's proxy are accepted
whichever replica answered the prediction, that the monitor counts all of it, and that every
established TCP connection in the namespace is on loopback. Prints one JSON line of figures;
exits 1 when a check fails. With ``--bench``, also measures single-row throughput against the
plain server (``nbdeploy serve``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

THREADS = int(os.environ.get("RAY_SCENARIO_THREADS", "4"))
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def make_store(home: str) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from nbdeploy.convert.conversion import to_onnx
    from nbdeploy.signature import from_sample
    from nbdeploy.store import PRODUCTION, Store

    X, y = load_iris(return_X_y=True, as_frame=True)
    store = Store(home)
    for c in (1.0, 0.05):
        conv = to_onnx(LogisticRegression(C=c, max_iter=500).fit(X, y), from_sample(X))
        meta = {"task": conv.task, "classes": conv.classes, "outputs": conv.outputs,
                "signature": conv.signature.to_dict()}
        version = store.register("iris", conv.onnx_bytes, meta)
        if version == 1:
            store.set_alias("iris", PRODUCTION, version)
    store.set_serving("iris", True)


BODY = json.dumps({"inputs": [
    {"name": name, "datatype": "FP64", "shape": [1, 1], "data": [value]}
    for name, value in [("sepal length (cm)", 5.1), ("sepal width (cm)", 3.5),
                        ("petal length (cm)", 1.4), ("petal width (cm)", 0.2)]
]}).encode()


class Client(threading.Thread):
    """Sends single-row V2 requests on one keep-alive connection until ``stop``; records answers."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.answers: list[tuple[float, str]] = []  # (time sent, model_version)
        self.ids: list[str] = []  # the server's key of each answered request
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("POST", "/v2/models/iris/infer", BODY, headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    self.failures.append(f"{response.status} {data[:200]!r}")
                    continue
                self.answers.append((sent, json.loads(data)["model_version"]))
                # the body's key: Ray's proxy appends its own id to the X-Request-ID header
                self.ids.append(json.loads(data)["parameters"]["prediction_id"])
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()


def load(port: int, seconds: float, threads: int = THREADS) -> tuple[list[Client], float]:
    stop = threading.Event()
    clients = [Client(port, stop) for _ in range(threads)]
    for c in clients:
        c.start()
    time.sleep(seconds)
    stop.set()
    for c in clients:
        c.join(30)
    return clients, sum(len(c.answers) for c in clients) / seconds


def descendants_memory(root: int) -> dict[str, float]:
    """Resident memory of ``root`` and every process below it (Ray's GCS, raylet, workers...)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    family, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in family:
                family.add(child)
                frontier.append(child)
    totals = {"Rss:": 0, "Pss:": 0}  # Pss shares each shared page among the processes mapping it
    for pid in family:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key = line.split(maxsplit=1)[0] if line else ""
                if key in totals:
                    totals[key] += int(line.split()[1])
        except OSError:
            pass
    return {"processes": len(family), "rss_mb": round(totals["Rss:"] / 1024, 1),
            "pss_mb": round(totals["Pss:"] / 1024, 1)}


def _address(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr.split(":")[0])
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # /proc prints each 32-bit word host-endian
    return socket.inet_ntop(socket.AF_INET6, words)


def established() -> list[tuple[str, str]]:
    found = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01":  # ESTABLISHED
                found.append((_address(fields[1], v6), _address(fields[2], v6)))
    return found


def plain_server_rps(home: str, seconds: float) -> float:
    port = 8100
    command = [str(Path(sys.executable).parent / "nbdeploy"), "serve", "--home", str(home), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        load(port, 0.5)
        return load(port, seconds)[1]
    finally:
        server.terminate()
        server.wait(10)


def logged(home: str, answered: int, timeout: float = 20.0) -> int:
    """Predictions in the shared log, once the replicas' writers have committed ``answered`` (or time is up)."""
    from nbdeploy.store.postgres import Session

    db = Session(home, "log")
    deadline = time.monotonic() + timeout
    while True:
        n = db.execute("SELECT COUNT(*) FROM predictions WHERE model = 'iris'").fetchone()[0]
        if n >= answered or time.monotonic() > deadline:
            return int(n)
        time.sleep(0.2)


def label(port: int, ids: list[str]) -> dict:
    """Labels for ``ids`` through Ray's proxy, one request each (each may reach either replica)."""
    accepted, statuses = 0, []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in ids:
        conn.request("POST", "/v2/models/iris/feedback", json.dumps([{"id": i, "label": 0}]).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        statuses.append(response.status)
        accepted += body.get("accepted", 0) if response.status == 200 else 0
    conn.close()
    return {"accepted": accepted, "statuses": sorted(set(statuses))}


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/pgserver.py
    import pgserver

    workdir = Path(sys.argv[1])
    bench = float(sys.argv[sys.argv.index("--bench") + 1]) if "--bench" in sys.argv else 0.0
    began = time.monotonic()
    postgres = pgserver.PostgresServer()
    if not postgres.available():
        print("RESULT " + json.dumps({"error": f"PostgreSQL: {postgres.reason}"}), flush=True)
        return 1
    postgres.start()
    try:
        return scenario(postgres.fresh_database("ray"), workdir, bench, began)
    finally:
        postgres.stop()


def scenario(home: str, workdir: Path, bench: float, began: float) -> int:
    os.environ["NBDEPLOY_LOCAL_DIR"] = str(workdir / "local")  # the replicas inherit it from this driver
    make_store(home)
    import ray

    from nbdeploy.serve.ray import RayExposureWarning, serve_on_ray, update_ray
    from nbdeploy.store import PRODUCTION, Store

    figures: dict[str, object] = {}
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    figures["ray_init_s"] = round(time.monotonic() - started, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        url = serve_on_ray(home, replicas=2)
    figures["ray_ready_s"] = round(time.monotonic() - started, 2)
    figures["network_warning"] = any(issubclass(w.category, RayExposureWarning) for w in caught)
    port = int(url.rsplit(":", 1)[1])

    stop = threading.Event()
    clients = [Client(port, stop) for _ in range(THREADS)]
    for c in clients:
        c.start()
    time.sleep(1.5)
    Store(home).set_alias("iris", PRODUCTION, 2)  # the kernel moves the alias; Ray hears it as a user_config
    swap_started = time.monotonic()
    update_ray(home)
    swapped = time.monotonic()
    figures["swap_s"] = round(swapped - swap_started, 2)
    time.sleep(1.5)
    stop.set()
    for c in clients:
        c.join(30)
    answers = sorted(a for c in clients for a in c.answers)
    failures = [f for c in clients for f in c.failures]
    ids = [i for c in clients for i in c.ids]
    figures["logged"] = logged(home, len(answers))
    figures["feedback"] = label(port, ids[::max(1, len(ids) // 40)][:40])
    from nbdeploy.monitor.live import Monitor
    from nbdeploy.store.reader import LogReader

    figures["monitor_requests"] = Monitor(home, "iris").snapshot()["traffic"]["requests"]
    with LogReader(home) as reader:  # the rollups every monitor view reads: labels of both versions
        figures["monitor_labelled"] = int(reader.rollups("iris", 0).labelled.sum())
    figures["requests"] = len(answers)
    figures["failures"] = failures[:5]
    figures["failed"] = len(failures)
    figures["answers_before_swap"] = sorted({v for t, v in answers if t < swap_started})
    figures["answers_after_swap"] = sorted({v for t, v in answers if t > swapped})
    figures["memory"] = descendants_memory(os.getpid())
    if bench:
        load(port, 0.5)
        figures["ray_rps_2_replicas"] = round(load(port, bench)[1])
        figures["plain_rps"] = round(plain_server_rps(home, bench))
    connections = established()
    figures["established"] = len(connections)
    figures["off_loopback"] = [c for c in connections if not (c[0] in LOOPBACK and c[1] in LOOPBACK)]
    ray.shutdown()
    figures["total_s"] = round(time.monotonic() - began, 2)

    ok = (not failures and figures["network_warning"] and figures["answers_before_swap"][:1] == ["1"]
          and figures["answers_after_swap"] == ["2"] and len(answers) > 50 and connections
          and not figures["off_loopback"] and figures["logged"] == len(answers)
          and figures["feedback"]["accepted"] == min(40, len(ids)) and figures["monitor_requests"] == len(answers)
          and figures["monitor_labelled"] == figures["feedback"]["accepted"])
    print("RESULT " + json.dumps(figures), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
