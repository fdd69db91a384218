"""Ray Serve rows for the serving benchmark: the plain server, then Ray Serve with 1 and 2 replicas.

Run by ``benchmarks/serving.py --ray`` inside a network namespace that holds only loopback (Ray
would otherwise also use the machine's other addresses):

    unshare -n sh -c 'ip link set lo up; exec .venv/bin/python benchmarks/ray_rows.py WORK WRK SECONDS ROUNDS'

Prints one JSON line ``RAY_ROWS [...]``: label, req/s per round, p50 ms, resident MB, start-up s.
Ray's replica count changes by redeploying, so the three servers are measured one after the other,
not interleaved; compare within one run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import models as bench_models  # noqa: E402


def ray_rss_mb() -> float:
    """Resident memory of every Ray process (raylet, GCS, proxy, replicas, workers) on this host."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"ray" not in cmd or int(pid) == os.getpid():
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def measure(label: str, url: str, body: Path, wrk_bin: str, seconds: float, rounds: int) -> dict:
    harness.wrk(wrk_bin, url, body, 16, 1)  # warm-up
    results = [harness.wrk(wrk_bin, url, body, 16, seconds) for _ in range(rounds)]
    rps = [r.rps for r in results]
    print(f"  {label:24} {statistics.median(rps):9.0f} req/s", file=sys.stderr, flush=True)
    return {"label": label, "rps": rps, "p50_ms": statistics.median(r.p50_ms for r in results),
            "errors": sum(r.errors for r in results)}


def main() -> int:
    work, wrk_bin, seconds, rounds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    work.mkdir(parents=True, exist_ok=True)
    model = bench_models.build(["lr"])[0]
    from nbdeploy.store import Store

    home = work / "home-ray"
    bench_models.register(Store(home), model)
    body = work / "body-ray-lr-1.json"
    body.write_bytes(model.v2_body(1))
    rows = []

    port = harness.free_port()
    plain = harness.Server("nbdeploy, 1 worker", [sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(home),
                                                  "--port", str(port)],
                           f"http://127.0.0.1:{port}/v2/health/ready",
                           f"http://127.0.0.1:{port}/v2/models/{model.name}/infer", HERE.parent, dict(os.environ))
    if plain.start(work / "plain.log"):
        try:
            row = measure(plain.label, plain.score_url, body, wrk_bin, seconds, rounds)
            row["rss_mb"] = plain.rss_mb()
            rows.append(row)
        finally:
            plain.stop()

    import ray

    from nbdeploy.serve.ray import serve_on_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_port = harness.free_port()
    try:
        for replicas in (1, 2):
            began = time.monotonic()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                url = serve_on_ray(home, replicas=replicas, port=ray_port)
            ready = time.monotonic()
            row = measure(f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''}",
                          f"{url}/v2/models/{model.name}/infer", body, wrk_bin, seconds, rounds)
            row["rss_mb"] = ray_rss_mb()
            row["ready_s"] = round((ready - started) if replicas == 1 else (ready - began), 2)
            rows.append(row)
    finally:
        ray.shutdown()
    print("RAY_ROWS " + json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
