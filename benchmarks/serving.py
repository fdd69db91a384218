"""Serving benchmark: nbdeploy against a raw-ASGI floor and its peers, in one run, interleaved.

    .venv/bin/python benchmarks/serving.py                 # everything (≈ 25 min the first time)
    .venv/bin/python benchmarks/serving.py --quick         # 2 s cells, 1 round, no peers
    .venv/bin/python benchmarks/serving.py --workers-only  # 1 vs 2 worker processes, lr, 1 row, c16
    .venv/bin/python benchmarks/serving.py --ray           # plain server vs Ray Serve, 1 and 2 replicas

Servers: (a) the floor (raw ASGI, uvicorn + uvloop + httptools, constant answer), (b) nbdeploy
(`nbdeploy serve`, validation and prediction logging on), (c) FastAPI + scikit-learn, (d) FastAPI +
ONNX Runtime on nbdeploy's conversion, (e) MLflow `mlflow models serve`, (f) a minimal BentoML service.
With ``--baseline DIR``, also the nbdeploy package found in DIR (the code before a change), for the
logistic regression, log on and off, in the same interleaved rounds. Load: wrk, single-row and 100-row requests at
concurrency 1 and 16, each cell median of ``--rounds`` interleaved rounds; then start-up, memory, a
monitor snapshot over 1 M logged predictions and a profile. Writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import models as bench_models  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402

CELLS = [(1, 1), (1, 16), (100, 1), (100, 16)]  # (rows per request, concurrency)


def nbdeploy_server(label: str, work: Path, model_list: list, batching: str = "auto",
                    log: str = "on", workers: int = 1, code: Path = ROOT) -> harness.Server:
    """``nbdeploy serve`` on a fresh home; ``code`` is the directory holding the ``nbdeploy`` package run."""
    from nbdeploy.store import Store

    home = work / f"home-{label.replace(' ', '-').replace(',', '')}"
    shutil.rmtree(home, ignore_errors=True)
    store = Store(home)
    for model in model_list:
        bench_models.register(store, model)
    port = harness.free_port()
    argv = [sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(home), "--port", str(port),
            "--batching", batching, "--workers", str(workers)]
    env = {**os.environ, "NBDEPLOY_PREDICTION_LOG": log}
    if code != ROOT:  # another copy of the package (--baseline): first on the path of the server process
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    return harness.Server(label, argv, f"http://127.0.0.1:{port}/v2/health/ready",
                          f"http://127.0.0.1:{port}/v2/models/{model_list[0].name}/infer", code, env)


def floor_server() -> harness.Server:
    port = harness.free_port()
    argv = [sys.executable, "-m", "uvicorn", "floor_app:app", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return harness.Server("floor", argv, f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/", HERE)


def peer_server(peer: str, model: bench_models.BenchModel, work: Path) -> harness.Server | None:
    python = peers.venv_python(peer)
    if python is None:
        return None
    port = harness.free_port()
    pickle_path = model.save_pickle(work / f"{model.name}.pkl")
    try:
        onnx_path = model.save_onnx(work / f"{model.name}.onnx") if peer == "fastapi-onnx" else None
        cmd = peers.command(peer, python, pickle_path, model.columns, model.width, port, work, onnx_path)
    except Exception as exc:  # e.g. MLflow cannot save the model
        print(f"[skip] {peer}: {exc}", flush=True)
        return None
    ready = {"fastapi": "/docs", "fastapi-onnx": "/docs", "mlflow": "/ping", "bentoml": "/readyz"}[peer]
    return harness.Server(peer, cmd.argv, f"http://127.0.0.1:{port}{ready}", f"http://127.0.0.1:{port}{cmd.path}",
                          cmd.cwd, cmd.env)


def body_file(work: Path, server: harness.Server, model: bench_models.BenchModel, rows: int) -> Path:
    kind = server.label if server.label in peers.PACKAGES else "v2"
    path = work / f"body-{model.name}-{kind}-{rows}.json"
    if not path.exists():
        path.write_bytes(model.peer_body(kind, rows) if kind in peers.PACKAGES else model.v2_body(rows))
    return path


def measure_model(model, servers, work, wrk_bin, args) -> list[dict]:
    results = []
    live = []
    for server in servers:
        if server is None or not server.start(work / f"{server.label}.log"):
            continue
        status, answer = server.post(body_file(work, server, model, 1).read_bytes())
        if status != 200:
            print(f"[skip] {server.label}: answered {status}: {answer[:200]!r}", flush=True)
            server.stop()
            continue
        harness.wrk(wrk_bin, server.score_url, body_file(work, server, model, 1), 16, 1)  # warm-up
        live.append(server)
    try:
        for round_no in range(args.rounds):
            for rows, conc in CELLS:
                for server in live:
                    body = body_file(work, server, model, rows)
                    cpu = server.cpu_seconds()
                    r = harness.wrk(wrk_bin, server.score_url, body, conc, args.duration)
                    settle = server.settle()  # the log's writer may still be catching up: its CPU is this cell's
                    cpu_us = (server.cpu_seconds() - cpu) / max(r.requests, 1) * 1e6
                    results.append({"model": model.name, "server": server.label, "rows": rows, "conc": conc,
                                    "round": round_no, "rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms,
                                    "errors": r.errors, "rss": server.rss_mb(), "cpu_us": cpu_us,
                                    "settle_s": settle})
                    print(f"  {model.name:4} {server.label:22} rows={rows:<3} c={conc:<2} "
                          f"{r.rps:9.0f} req/s  p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms  "
                          f"cpu {cpu_us:6.0f} us/req  settled {settle:4.1f} s"
                          + (f"  errors {r.errors}" if r.errors else ""), flush=True)
    finally:
        for server in live:
            server.stop()
    return results


def measure_startup(work: Path, model, repeats: int = 5) -> dict:
    """nbdeploy with one small model: process start to ready, and resident memory under load."""
    times, rss = [], []
    wrk_bin = harness.ensure_wrk()
    for i in range(repeats):
        server = nbdeploy_server(f"startup-{i}", work, [model])
        if not server.start(work / "startup.log"):
            continue
        times.append(server.startup_s)
        harness.wrk(wrk_bin, server.score_url, body_file(work, server, model, 1), 16, 1)
        rss.append(server.rss_mb())
        server.stop()
    return {"startup_s": statistics.median(times), "rss_mb": max(rss)}


def measure_monitor() -> float | None:
    """Median monitor snapshot over 1 M logged predictions on SQLite (benchmarks/monitor_refresh.py), in ms."""
    import re
    import subprocess

    out = subprocess.run([sys.executable, str(HERE / "monitor_refresh.py"), "1000000", "--backend", "sqlite"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    found = re.search(r"snapshot: median (\d+) ms", out.stdout)
    if found is None:
        print(f"[skip] monitor snapshot: {(out.stdout + out.stderr).strip()[-400:]}", flush=True)
        return None
    print(out.stdout.strip(), flush=True)
    return float(found.group(1))


def measure_workers(work: Path, wrk_bin: str, args) -> list[str]:
    """Single-row logistic regression at c16: ``nbdeploy serve`` with 1 and with 2 worker processes,
    interleaved rounds; returns markdown lines (median of the rounds) for docs/performance.md."""
    model = bench_models.build(["lr"])[0]
    servers = [nbdeploy_server(f"nbdeploy, {n} worker{'s' if n > 1 else ''}", work, [model], workers=n)
               for n in (1, 2)]
    rps: dict[str, list[float]] = {s.label: [] for s in servers}
    p50: dict[str, list[float]] = {s.label: [] for s in servers}
    rss: dict[str, float] = {}
    live = [s for s in servers if s.start(work / f"{s.label}.log")]
    try:
        for server in live:
            harness.wrk(wrk_bin, server.score_url, body_file(work, server, model, 1), 16, 1)  # warm-up
        for _ in range(args.rounds):
            for server in live:
                r = harness.wrk(wrk_bin, server.score_url, body_file(work, server, model, 1), 16, args.duration)
                rps[server.label].append(r.rps)
                p50[server.label].append(r.p50_ms)
                rss[server.label] = max(rss.get(server.label, 0.0), server.rss_mb())
                print(f"  {server.label:20} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.3f} ms"
                      + (f"  errors {r.errors}" if r.errors else ""), flush=True)
    finally:
        for server in live:
            server.stop()
    lines = ["| server | req/s (median) | rounds | p50 ms | resident MB (all processes) |",
             "|---|---:|---|---:|---:|"]
    for server in live:
        runs = ", ".join(f"{v:,.0f}" for v in rps[server.label])
        lines.append(f"| {server.label} | {statistics.median(rps[server.label]):,.0f} | {runs} | "
                     f"{statistics.median(p50[server.label]):.3f} | {rss[server.label]:.0f} |")
    return lines


def measure_ray(work: Path, wrk_bin: str, args) -> list[str]:
    """benchmarks/ray_rows.py inside ``unshare -n`` (Ray then keeps to loopback); a markdown table."""
    import json
    import shlex
    import subprocess

    inner = " ".join(shlex.quote(a) for a in (sys.executable, str(HERE / "ray_rows.py"), str(work), wrk_bin,
                                             str(args.duration), str(args.rounds)))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {inner}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RAY_ROWS ")), None)
    if line is None:
        return [f"Ray rows failed (exit {out.returncode}): {out.stderr.strip()[-800:]}"]
    rows = json.loads(line[len("RAY_ROWS "):])
    lines = ["| server | req/s (median) | rounds | p50 ms | resident MB | ready after |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        ready = f"{r['ready_s']:.1f} s" if "ready_s" in r else "–"
        lines.append(f"| {r['label']} | {statistics.median(r['rps']):,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in r['rps'])} | {r['p50_ms']:.3f} | {r['rss_mb']:.0f} | {ready} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per cell (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; cells report the median")
    parser.add_argument("--models", default="lr,rf,mlp")
    parser.add_argument("--peers", default="fastapi,fastapi-onnx,mlflow,bentoml", help="comma list, or 'none'")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 s cells, one round, no peers")
    parser.add_argument("--workers-only", action="store_true",
                        help="only 1 vs 2 worker processes (lr, 1 row, c16); prints a table, writes nothing")
    parser.add_argument("--ray", action="store_true",
                        help="only the plain server vs Ray Serve with 1 and 2 replicas (lr, 1 row, c16), in a "
                             "loopback-only network namespace (root); prints a table, writes nothing")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure the nbdeploy package found in DIR (e.g. a copy taken before a change), "
                             "log on and off, side by side with this tree's")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args()
    if args.ray:
        work = HERE / ".work"
        work.mkdir(exist_ok=True)
        print("\n".join(measure_ray(work, harness.ensure_wrk(), args)))
        return
    if args.workers_only:
        work = HERE / ".work"
        work.mkdir(exist_ok=True)
        print("\n".join(measure_workers(work, harness.ensure_wrk(), args)))
        return
    if args.quick:
        args.duration, args.rounds, args.peers = 2, 1, "none"
    wrk_bin = harness.ensure_wrk()
    work = HERE / ".work"
    work.mkdir(exist_ok=True)
    peer_names = [] if args.peers == "none" else args.peers.split(",")
    started = time.time()
    built = bench_models.build(args.models.split(","))
    results: list[dict] = []
    for model in built:
        print(f"== {model.title}", flush=True)
        servers = [floor_server()]
        if model.name == "mlp":
            servers += [nbdeploy_server("nbdeploy batching on", work, [model], "on"),
                        nbdeploy_server("nbdeploy batching off", work, [model], "off")]
        else:
            servers.append(nbdeploy_server("nbdeploy", work, [model]))
            servers.append(nbdeploy_server("nbdeploy, log off", work, [model], log="off"))
            if args.baseline and model.name == "lr":  # the same server from another copy of the code, same rounds
                base = Path(args.baseline).resolve()
                servers.append(nbdeploy_server("baseline", work, [model], code=base))
                servers.append(nbdeploy_server("baseline, log off", work, [model], log="off", code=base))
            if model.name == "lr" and not args.baseline:
                servers.append(nbdeploy_server("nbdeploy, 2 workers", work, [model], workers=2))
            servers += [peer_server(p, model, work) for p in peer_names]
        results += measure_model(model, servers, work, wrk_bin, args)
    startup = measure_startup(work, built[0])
    monitor_ms = None if args.quick else measure_monitor()
    profile = None if args.no_profile else report.profile_nbdeploy(
        nbdeploy_server("nbdeploy profiled", work, [built[0]]), work, wrk_bin,
        body_file(work, harness.Server("v2", [], "", "", HERE), built[0], 1))
    text = report.render(results, startup, profile, args, time.time() - started,
                         {m.name: m.title for m in built}, monitor_ms)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    kept = old[old.index(report.HAND_WRITTEN):] if report.HAND_WRITTEN in old else report.HAND_WRITTEN + "\n"
    out.write_text(text.rstrip("\n") + "\n\n" + kept)  # the notes written by hand about earlier runs stay
    print(text)


if __name__ == "__main__":
    main()
