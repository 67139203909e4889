"""``make bench``: the whole matrix, bounded in time, written to benchmarks/results/.

One core for the server (``taskset -c 0``) and the other for wrk (``taskset -c 1``): every
server classifies the same PNG with the same model file at concurrency 1, 8, 32 and 64, and
the in-process ONNX Runtime limit is measured on the same core. A second table gives both
cores to the servers (wrk then shares one of them). Results: ``bench.json`` and the tables
in ``README.md``; server logs under ``results/raw/``. Last, what explanations cost
(``benchmarks.explain``: ``explain.json`` and ``explain.md``).

    python -m benchmarks.run [--duration 6] [--warmup 1] [--quick] [--only cnnserve]

Besides requests/s and latency, each cell records the CPU time the server used: images per
CPU-second is what a server does with a core, and unlike throughput it barely moves when
other processes share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.ab import interleave
from benchmarks.explain import main as explain_main
from benchmarks.inputs import MATRIX_MODELS, MODELS, RAMP_MS, REPO, image_path
from benchmarks.report import write_report
from benchmarks.servers import ServerSpec, check_answer, on_core_zero, running
from benchmarks.wrk import run_wrk

__all__ = ["Cell", "main"]

RESULTS = REPO / "benchmarks" / "results"
CONCURRENCY = (1, 8, 32, 64)
TWO_CORE_CONCURRENCY = (8, 32, 64)
SLOW_MODELS = frozenset({"mobilenetv2-imagenet"})  # fewer requests a second: longer cells
MANY = 64  # images per request for the multi-image rows
MANY_CONCURRENCY = (1, 8)
MAX_REQUESTS = 200_000  # per cell, on top of the time bound

ONE_CORE = (
    ServerSpec("cnnserve", "cnnserve"),
    ServerSpec("cnnserve", "cnnserve batch=1", env={"CNNSERVE_MAX_BATCH_SIZE": "1"}),
    ServerSpec("cnnserve", "cnnserve raw body", body="raw"),
    ServerSpec("fastapi", "plain FastAPI"),
    ServerSpec("litserve", "LitServe"),
)
TWO_CORES = (
    ServerSpec("cnnserve", "cnnserve", cpus="0,1", workers=2),
    ServerSpec("fastapi", "plain FastAPI", cpus="0,1", workers=2),
    ServerSpec("litserve", "LitServe", cpus="0,1", workers=2),
)


@dataclass(frozen=True)
class Cell:
    table: str
    server: str
    model: str
    cores: str
    workers: int
    concurrency: int
    images_per_request: int
    seconds: float
    requests: int
    errors: int
    errors_by_kind: dict[str, int]
    requests_per_s: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rss_mib: float
    cpu_s: float  # CPU time the server used during the cell
    cpu_share: float  # of the cores it was given
    images_per_cpu_s: float


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _limit(model: str, seconds: float) -> dict[str, Any]:
    return on_core_zero("benchmarks.limit", model, "--seconds", str(seconds))


def _cells(
    table: str, spec: ServerSpec, model: str, args: argparse.Namespace
) -> list[tuple[int, int]]:
    """(concurrency, images per request) of each cell of one server and model."""
    if spec.body == "raw":  # what multipart parsing costs: lenet, two concurrencies
        if model in SLOW_MODELS:
            return []
        return [(c, 1) for c in (1, 32) if c in args.concurrency]
    levels = args.concurrency if table == "one-core" else args.two_core_concurrency
    plan = [(c, 1) for c in levels]
    # LitServe's API takes one image a request; batch=1 only matters at one image.
    many = table == "one-core" and spec.kind != "litserve" and not spec.env
    if many and model not in SLOW_MODELS:
        plan += [(c, MANY) for c in MANY_CONCURRENCY]
    return plan


def _measure(
    table: str, spec: ServerSpec, model: str, args: argparse.Namespace, out: list[Cell]
) -> None:
    image = image_path(model)
    plan = _cells(table, spec, model, args)
    if not plan:
        return
    seconds = args.slow_duration if model in SLOW_MODELS else args.duration
    with running(spec, model) as server:
        check_answer(server.url, model, image.read_bytes())
        for concurrency, per_request in plan:
            load: dict[str, Any] = {
                "connections": concurrency,
                "images_per_request": per_request,
                "max_requests": MAX_REQUESTS,
                "body": spec.body,
                "ramp_ms": RAMP_MS[model],
            }
            if args.warmup > 0:
                run_wrk(server.url, image, seconds=args.warmup, **load)
            server.settle()  # each cell starts from an idle server
            cpu_before = server.cpu_seconds()
            result = run_wrk(server.url, image, seconds=seconds, **load)
            cpu = server.cpu_seconds() - cpu_before
            server.settle()
            ok = result.requests - result.errors_by_kind.get("status", 0)
            cell = Cell(
                table=table,
                server=spec.label,
                model=model,
                cores=spec.cpus,
                workers=spec.workers,
                concurrency=concurrency,
                images_per_request=per_request,
                seconds=round(result.seconds, 2),
                requests=result.requests,
                errors=result.errors,
                errors_by_kind=result.errors_by_kind,
                requests_per_s=round(result.requests_per_s, 1),
                images_per_s=round(ok * per_request / result.seconds, 1),
                p50_ms=result.p50_ms,
                p90_ms=result.p90_ms,
                p99_ms=result.p99_ms,
                max_ms=result.max_ms,
                rss_mib=server.rss_mib(),
                cpu_s=round(cpu, 2),
                cpu_share=round(cpu / result.seconds / len(spec.cpus.split(",")), 2),
                images_per_cpu_s=round(ok * per_request / cpu, 1) if cpu else 0.0,
            )
            out.append(cell)
            _log(
                f"{table} {spec.label:18} {model:21} c={concurrency:<3} x{per_request:<3} "
                f"{cell.requests_per_s:8.1f} req/s {cell.images_per_s:8.1f} img/s "
                f"p50 {cell.p50_ms:7.1f} p99 {cell.p99_ms:7.1f} ms err {cell.errors} "
                f"rss {cell.rss_mib} MiB cpu {cell.cpu_share:.0%} {cell.images_per_cpu_s} img/cpu-s"
            )


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    import litserve
    import onnxruntime
    import uvicorn

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=REPO)
        return done.stdout.strip()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "-s") else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "uvicorn": uvicorn.__version__,
        "litserve": litserve.__version__,
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip(),
        "duration_s": args.duration,
        "slow_duration_s": args.slow_duration,
        "warmup_s": args.warmup,
    }


def _wait_for_quiet(timeout_s: float, quiet: float = 0.5) -> None:
    """Give the load of whatever ran just before (a test run, a build) time to pass: the
    1-minute load average decays over minutes. The report records the figure at the start."""
    deadline = time.monotonic() + timeout_s
    if os.getloadavg()[0] >= quiet and timeout_s > 0:
        _log(f"waiting up to {timeout_s:g} s for the load average to fall under {quiet}")
    while os.getloadavg()[0] >= quiet and time.monotonic() < deadline:
        time.sleep(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per cell")
    parser.add_argument(
        "--slow-duration", type=float, default=10.0, help="seconds per cell, mobilenet"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each cell")
    parser.add_argument("--limit-seconds", type=float, default=1.5, help="per batch size")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument(
        "--two-core-concurrency", type=int, nargs="+", default=list(TWO_CORE_CONCURRENCY)
    )
    parser.add_argument("--models", nargs="+", default=list(MATRIX_MODELS), choices=MODELS)
    parser.add_argument("--only", nargs="+", help="server labels to run (default: all)")
    parser.add_argument(
        "--tables", nargs="+", default=["batching-c1", "one-core", "two-cores", "explain"]
    )
    parser.add_argument("--quick", action="store_true", help="2 s cells, no warm-up: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench.json")
    parser.add_argument(
        "--quiet-wait", type=float, default=180.0,
        help="seconds to wait at most for the load average to fall under 0.5 first",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.slow_duration, args.warmup, args.limit_seconds = 2.0, 3.0, 0.0, 0.5
        args.quiet_wait = 0.0
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("the benchmark pins the server and wrk to two different cores")
    _wait_for_quiet(args.quiet_wait)
    started = time.monotonic()
    report: dict[str, Any] = {"metadata": _metadata(args), "limits": {}, "cells": []}
    cells: list[Cell] = []
    for model in args.models:
        _log(f"in-process limit for {model}")
        report["limits"][model] = _limit(model, args.limit_seconds)
    if "batching-c1" in args.tables:
        # Two cells a minute apart differ by more than 10% on a shared machine: the
        # batching-at-concurrency-1 check runs both servers side by side, alternating.
        _log("batching at concurrency 1: cnnserve and cnnserve batch=1, interleaved")
        report["batching_c1"] = [
            row
            for model in args.models
            for row in interleave(
                [ONE_CORE[0], ONE_CORE[1]], model, concurrency=[1], rounds=6, seconds=1.5
            )
        ]
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    tables = {"one-core": ONE_CORE, "two-cores": TWO_CORES}
    for table in (t for t in args.tables if t in tables):
        for model in args.models:
            for spec in tables[table]:
                if args.only and spec.label not in args.only:
                    continue
                try:
                    _measure(table, spec, model, args, cells)
                except Exception as exc:  # one broken server must not cost the whole run
                    _log(f"FAILED {table} {spec.label} {model}: {exc}")
                    report.setdefault("failures", []).append(f"{table} {spec.label} {model}: {exc}")
                report["cells"] = [asdict(c) for c in cells]
                args.output.write_text(json.dumps(report, indent=1) + "\n")
    if "explain" in args.tables:
        _log("explanations: benchmarks/explain.py")
        explain_main(["--quick"] if args.quick else [])
    report["metadata"]["load_average_at_end"] = os.getloadavg()
    report["metadata"]["wall_s"] = round(time.monotonic() - started)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    markdown = write_report(report, args.output.with_name("README.md"))
    _log(f"wrote {args.output} and {markdown} in {report['metadata']['wall_s']} s")


if __name__ == "__main__":
    main()
