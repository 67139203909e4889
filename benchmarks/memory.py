"""``make bench-memory``: cnnserve's resident memory over a long run at concurrency 64.

The server (one core, default settings) classifies the benchmark image for ``--minutes``
while its RSS is sampled every few seconds; the mean of the first minute is compared with
the mean of the last. Writes ``results/memory.json`` and refreshes ``results/README.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from benchmarks.inputs import MODELS, RAMP_MS, REPO, image_path
from benchmarks.report import write_report
from benchmarks.servers import ServerSpec, check_answer, running, tree_rss_mib
from benchmarks.wrk import run_wrk

__all__ = ["main"]

RESULTS = REPO / "benchmarks" / "results"


def _sample(
    pid: int, every_s: float, stop: threading.Event, out: list[tuple[float, float]]
) -> None:
    started = time.monotonic()
    while not stop.is_set():
        out.append((round(time.monotonic() - started, 1), tree_rss_mib(pid)))
        stop.wait(every_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODELS[0], choices=MODELS)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    window = min(60.0, seconds / 3)  # "the first and the last minute" (shorter for smoke runs)
    image = image_path(args.model)
    samples: list[tuple[float, float]] = []
    with running(ServerSpec("cnnserve", "cnnserve"), args.model) as server:
        check_answer(server.url, args.model, image.read_bytes())
        stop = threading.Event()
        sampler = threading.Thread(
            target=_sample, args=(server.process.pid, args.every, stop, samples), daemon=True
        )
        sampler.start()
        result = run_wrk(
            server.url,
            image,
            connections=args.concurrency,
            seconds=seconds,
            ramp_ms=RAMP_MS[args.model],
        )
        stop.set()
        sampler.join()
    first = [rss for t, rss in samples if t <= window]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window]
    report = {
        "model": args.model,
        "concurrency": args.concurrency,
        "minutes": args.minutes,
        "requests": result.requests,
        "errors": result.errors,
        "requests_per_s": round(result.requests_per_s, 1),
        "p99_ms": result.p99_ms,
        "first_minute_mib": round(statistics.fmean(first), 1),
        "last_minute_mib": round(statistics.fmean(last), 1),
        "growth": round(statistics.fmean(last) / statistics.fmean(first) - 1, 4),
        "samples": samples,
    }
    (RESULTS / "memory.json").write_text(json.dumps(report, indent=1) + "\n")
    bench = RESULTS / "bench.json"
    if bench.is_file():
        write_report(json.loads(bench.read_text()), RESULTS / "README.md")
    print(
        f"RSS {report['first_minute_mib']} MiB (first) -> {report['last_minute_mib']} MiB "
        f"(last): {report['growth']:+.1%} over {result.requests} requests",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
