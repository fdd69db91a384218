"""The benchmark's table, targets and profile, as printed and as written to docs/performance.md."""

from __future__ import annotations

import collections
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import peers

TARGETS_TEXT = """\
Goals, as ratios on the same machine in the same run (validation, the prediction log and the guard
on): single-row req/s at concurrency 16 ≥ 0.35× the floor and ≥ 25× MLflow (≥ 8× BentoML);
single-row p50 at concurrency 1 ≤ 2.5× the floor's; the prediction log costs ≤ 10 % of the
throughput, with 1-row and with 100-row requests (1 - req/s log on ÷ req/s log off); the ≈1 ms
model with batching on at concurrency 16 ≥ 2× batching off; a monitor snapshot over 1 M logged
predictions ≤ 100 ms; start-up to ready ≤ 1 s and resident memory ≤ 150 MB with one small model.
"at filing" quotes the figures the goals were set against (an earlier run on this machine);
† marks a cell whose log writer was still committing the burst more than a second after it ended:
its req/s says what a burst of that length costs, not a sustained load (the CPU share says that);
"before" is the baseline (`--baseline`: the code before this change), measured in the same
interleaved rounds as "now", this tree."""


HAND_WRITTEN = "<!-- Written by hand below this line: benchmarks/serving.py keeps it when it rewrites the file. -->"


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows]
    return statistics.median(values) if values else float("nan")


def _cells(results: list[dict]) -> dict[tuple, dict]:
    grouped: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in results:
        grouped[r["model"], r["server"], r["rows"], r["conc"]].append(r)
    return {k: {"rps": _median(v, "rps"), "p50": _median(v, "p50"), "p99": _median(v, "p99"),
                "errors": sum(r["errors"] for r in v), "rss": max(r["rss"] for r in v),
                "cpu": _median([r for r in v if "cpu_us" in r], "cpu_us"),
                "settle": _median([r for r in v if "settle_s" in r], "settle_s")} for k, v in grouped.items()}


def table(results: list[dict], titles: dict[str, str]) -> list[str]:
    cells = _cells(results)
    out = []
    for model in dict.fromkeys(r["model"] for r in results):
        out += [f"\n### {titles.get(model, model)}\n",
                "| server | rows | conc | req/s | × floor | p50 ms | p99 ms | p50 × floor | CPU µs/req | settled s | "
                "errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        servers = list(dict.fromkeys(r["server"] for r in results if r["model"] == model))
        for rows, conc in sorted({(r["rows"], r["conc"]) for r in results if r["model"] == model}):
            floor = cells.get((model, "floor", rows, conc))
            for server in servers:
                c = cells.get((model, server, rows, conc))
                if c is None:
                    continue
                ratio = c["rps"] / floor["rps"] if floor else float("nan")
                p50_ratio = c["p50"] / floor["p50"] if floor else float("nan")
                out.append(f"| {server} | {rows} | {conc} | {c['rps']:,.0f} | {ratio:.2f} | {c['p50']:.3f} | "
                           f"{c['p99']:.3f} | {p50_ratio:.2f} | {c['cpu']:,.0f} | {c['settle']:.1f} | {c['errors']} |")
    return out


def _rps(cells: dict, model: str, server: str | None, rows: int, conc: int) -> float | None:
    c = cells.get((model, server, rows, conc)) if server else None
    return c["rps"] if c else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _p50_vs_floor(cells: dict, model: str, server: str | None) -> float | None:
    c, floor = cells.get((model, server, 1, 1)) if server else None, cells.get((model, "floor", 1, 1))
    return c["p50"] / floor["p50"] if c and floor else None


def _log_cost(cells: dict, model: str, server: str | None, rows: int, conc: int) -> float | None:
    """1 - req/s with the log on ÷ req/s with it off, in percent."""
    on, off = _rps(cells, model, server, rows, conc), _rps(cells, model, f"{server}, log off", rows, conc)
    return 100 * (1 - on / off) if on is not None and off else None


# The figures the goals were set against (an earlier run on this machine, quoted, not measured here).
AT_FILING = {
    "lr: 1-row req/s at c16 vs floor": "0.17–0.19", "lr: 1-row p50 at c1 vs floor": "3.6–5.4",
    "lr: cost of the prediction log, 1 row, c16 (%)": "35", "lr: cost of the prediction log, 100 rows, c1 (%)": "62",
    "lr: cost of the prediction log, 100 rows, c16 (%)": "47", "lr: 1-row req/s at c16 vs MLflow": "16",
    "monitor snapshot over 1 M logged predictions, SQLite (ms)": "59", "start-up to ready, one small model (s)": "0.36",
    "resident memory under load, one small model: server and its log writer (MB)": "94 (server alone)",
}


def _cpu_share(cells: dict, model: str, server: str | None, rows: int, conc: int) -> float | None:
    """1 - CPU per request with the log off ÷ with it on (the writer's catching up included), in percent."""
    on, off = cells.get((model, server, rows, conc)), cells.get((model, f"{server}, log off", rows, conc))
    return 100 * (1 - off["cpu"] / on["cpu"]) if on and off and on["cpu"] else None


SETTLED_S = 1.0  # a server whose processes were still busy longer than this after a cell: its writer lagged


def targets(results: list[dict], startup: dict, monitor_ms: float | None = None) -> list[str]:
    """The goals' table: each figure for this tree ("now"), for the baseline when measured ("before"), and
    as it stood when the goals were set ("at filing", quoted)."""
    cells = _cells(results)
    out = ["| goal | target | at filing | before | now | reached |", "|---|---|---:|---:|---:|---|"]

    def show(v: float | None, fmt: str) -> str:
        return "–" if v is None or v != v else format(v, fmt)

    def row(name: str, goal: str, before: float | None, now: float | None, fmt: str, ok: bool | None) -> None:
        reached = "–" if ok is None or now is None or now != now else ("yes" if ok else "**no**")
        filed = AT_FILING.get(name.replace(" †", ""), "–")
        out.append(f"| {name} | {goal} | {filed} | {show(before, fmt)} | {show(now, fmt)} | {reached} |")

    for model in ("lr", "rf"):
        if not cells.get((model, "floor", 1, 16)):
            continue
        base = "baseline" if cells.get((model, "baseline", 1, 16)) else None
        for label, peer, goal, least in (("floor", "floor", "≥ 0.35×", 0.35), ("MLflow", "mlflow", "≥ 25×", 25),
                                         ("BentoML", "bentoml", "≥ 8×", 8),
                                         ("FastAPI + ONNX Runtime", "fastapi-onnx", "–", None)):
            now = _ratio(_rps(cells, model, "nbdeploy", 1, 16), _rps(cells, model, peer, 1, 16))
            before = _ratio(_rps(cells, model, base, 1, 16), _rps(cells, model, peer, 1, 16))
            row(f"{model}: 1-row req/s at c16 vs {label}", goal, before, now, ".2f" if peer == "floor" else ".1f",
                None if least is None or now is None else now >= least)
        now = _p50_vs_floor(cells, model, "nbdeploy")
        row(f"{model}: 1-row p50 at c1 vs floor", "≤ 2.5×", _p50_vs_floor(cells, model, base), now, ".2f",
            None if now is None else now <= 2.5)
        for rows in (1, 100):
            for conc in (1, 16):
                now = _log_cost(cells, model, "nbdeploy", rows, conc)
                late = (cells.get((model, "nbdeploy", rows, conc)) or {}).get("settle", 0.0) > SETTLED_S
                # a writer still committing the burst seconds after it ended did the work later, not for less:
                # the throughput of a burst says nothing of a sustained load then
                row(f"{model}: cost of the prediction log, {rows} row{'s' if rows > 1 else ''}, c{conc} (%)"
                    + (" †" if late else ""), "≤ 10", _log_cost(cells, model, base, rows, conc), now, ".0f",
                    None if now is None else now <= 10 and not late)
        for rows in (1, 100):
            for conc in (1, 16):
                plural = "s" if rows > 1 else ""
                row(f"{model}: the log's share of the CPU per request, {rows} row{plural}, c{conc} (%)", "–",
                    _cpu_share(cells, model, base, rows, conc), _cpu_share(cells, model, "nbdeploy", rows, conc),
                    ".0f", None)
    now = _ratio(_rps(cells, "mlp", "nbdeploy batching on", 1, 16), _rps(cells, "mlp", "nbdeploy batching off", 1, 16))
    row("≈1 ms model: batching on vs off, 1-row c16", "≥ 2×", None, now, ".2f", None if now is None else now >= 2)
    row("monitor snapshot over 1 M logged predictions, SQLite (ms)", "≤ 100", None, monitor_ms, ".0f",
        None if monitor_ms is None else monitor_ms <= 100)
    value = startup.get("startup_s")
    row("start-up to ready, one small model (s)", "≤ 1", None, value, ".2f", None if value is None else value <= 1)
    value = startup.get("rss_mb")
    row("resident memory under load, one small model: server and its log writer (MB)", "≤ 150", None, value, ".0f",
        None if value is None else value <= 150)
    return out


def profile_nbdeploy(server: harness.Server, work: Path, wrk_bin: str, body: Path, seconds: float = 6) -> dict | None:
    """Sample the server with py-spy while wrk drives 1-row requests at c16; None if py-spy is missing."""
    spy = _py_spy()
    if spy is None or not server.start(work / "profile.log"):
        return None
    out = work / "profile.txt"
    try:
        sampler = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--duration", str(seconds),
                                    "--rate", "250", "--format", "raw", "--output", str(out), "--threads", "--gil",
                                    "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        harness.wrk(wrk_bin, server.score_url, body, 16, seconds)
        sampler.wait(timeout=60)
    finally:
        server.stop()
    return summarize(out.read_text()) if out.exists() else None


def _py_spy() -> str | None:
    root = peers.VENVS / "tools"
    spy = root / "bin" / "py-spy"
    if not spy.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True)
            subprocess.run([str(root / "bin" / "pip"), "install", "-q", "py-spy"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            print("[skip] profile: cannot install py-spy", flush=True)
            return None
    return str(spy)


BUCKETS = [  # (label, substring of a frame), first match from the leaf up wins
    ("ONNX Runtime run", "onnxruntime"),
    ("prediction log hand-off", "store/eventcodec.py"),
    ("prediction log hand-off", "store/logprocess.py"),
    ("prediction log writer", "store/log.py"),
    ("prediction log writer", "store/writer.py"),
    ("prediction log writer", "store/batch.py"),
    ("prediction log writer", "store/writes.py"),
    ("prediction log writer", "store/events.py"),
    ("V2 decode + validation", "codecs/"),
    ("V2 decode + validation", "protocol.py"),
    ("V2 decode + validation", "handlers.py"),
    ("V2 decode + validation", "signature.py"),
    ("batcher hand-off (or inline run)", "batcher.py"),
    ("inference dispatch", "serve/dispatch.py"),
    ("inference route", "inference.py"),
    ("security guard", "security.py"),
    ("Starlette routing/middleware", "starlette/"),
    ("uvicorn + httptools", "uvicorn/"),
    ("asyncio/uvloop", "asyncio/"),
]


def summarize(raw: str) -> dict:
    """Share of samples per bucket (by the innermost matching frame) and the hottest leaf frames."""
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaves[frames[-1]] += n
        label = "other"
        for frame in reversed(frames):
            hit = next((b for b, needle in BUCKETS if needle in frame), None)
            if hit:
                label = hit
                break
        buckets[label] += n
    return {"total": total, "buckets": buckets.most_common(), "leaves": leaves.most_common(12)}


def render(results: list[dict], startup: dict, profile: dict | None, args, elapsed: float,
           titles: dict[str, str], monitor_ms: float | None = None) -> str:
    import numpy
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Serving performance",
        "",
        "Generated by `benchmarks/serving.py` (not part of the test run). Numbers are medians of interleaved",
        "rounds on one machine in one run; compare ratios, not absolute values, across machines.",
        "",
        "## How to reproduce",
        "",
        "```",
        ".venv/bin/pip install -e '.[dev]'",
        f".venv/bin/python benchmarks/serving.py --duration {args.duration:g} --rounds {args.rounds}",
        "```",
        "",
        "The harness installs `wrk` (Debian) if missing, and each peer into its own virtual environment",
        "under `benchmarks/.venvs` (first run only; a peer that cannot install is skipped with a message).",
        "nbdeploy runs as `nbdeploy serve` with its defaults: request validation on, the prediction log",
        "(`log.db`) on, batching `auto`. Every server gets the same fitted model; nbdeploy serves its ONNX",
        "conversion. Request bodies: V2 JSON for the floor and nbdeploy (one input per column for the",
        "DataFrame model), `dataframe_split`/`inputs` for MLflow, `{\"data\": rows}` for FastAPI and BentoML.",
        "`fastapi-onnx` is a hand-written FastAPI endpoint running nbdeploy's ONNX conversion in ONNX Runtime.",
        "`nbdeploy, log off` is the same server with `NBDEPLOY_PREDICTION_LOG=off`, to show the log's share;",
        "`baseline` is the code before this work (`--baseline`), log on and off, measured in the same rounds.",
        "Memory and CPU per request count the server and its children (the log's writer process). After",
        "each cell the harness waits until the server's processes are idle (`settled s`: a log writer still",
        "committing a burst's predictions); that CPU is counted in the cell's CPU per request, and the next",
        "server is measured on a quiet machine.",
        "",
        f"Machine: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}; wrk -c1 (1 thread) / -c16 "
        f"(2 threads), {args.duration:g} s per cell, {args.rounds} round(s); run took {elapsed / 60:.1f} min.",
        "",
        "## Targets",
        "",
        TARGETS_TEXT,
        "",
        *targets(results, startup, monitor_ms),
        "",
        "## Results",
        *table(results, titles),
        "",
    ]
    if profile:
        total = profile["total"] or 1
        lines += ["## Where the time goes (nbdeploy, logistic regression, 1 row, c16)", "",
                  "py-spy samples (`--gil`: only the thread holding the GIL, that is where the Python CPU goes)",
                  "of the server process while wrk drives it; each sample is charged to the innermost frame",
                  "that falls in one of these parts. uvicorn's two `transport.write` calls per response (headers,",
                  "body) are socket writes that the floor makes too.", "",
                  "| part | share of samples |", "|---|---:|"]
        lines += [f"| {label} | {100 * n / total:.1f} % |" for label, n in profile["buckets"]]
        lines += ["", "Hottest innermost frames:", "", "| frame | share |", "|---|---:|"]
        lines += [f"| `{frame[:110]}` | {100 * n / total:.1f} % |" for frame, n in profile["leaves"]]
        lines.append("")
    return "\n".join(lines)
