"""``make bench-explain`` (also the ``explain`` table of ``make bench``): what explanations cost.

cnnserve on one core (``taskset -c 0``, its defaults, the explanation cache off so that every
request does the work), the load generators on the other (wrk on core 1; the in-process
limit on core 0, like ``benchmarks.limit``), MobileNetV2, the benchmark's chelsea PNG:

- **cam vs classify** at concurrency 1: one connection sending requests back to back, the two
  kinds alternating in rounds of ``seconds`` each; medians over the rounds of wrk's p50 and
  p90. Target: cam's latency at most 1.3x classify's.
- **occlusion vs ONNX Runtime alone**: the default occlusion (window 32, stride 16: 169
  copies), sent one after the other over one connection, alternating in rounds with ONNX
  Runtime alone running the same 169 occluded inputs in batches of the service's
  ``max_batch_size`` (one intra-op thread, in process, ``taskset -c 0``, the server idle);
  medians of wall seconds (the target) and of CPU seconds (the server's process tree against
  the limit's process: what other load on a shared machine barely moves). Target: at most
  1.25x.
- **classify beside occlusions**: classify at concurrency 8 for ``seconds``, alone and with
  one more client sending occlusions back to back, alternating in rounds; medians of wrk's
  p99. Target: classify's p99 at most 3x its p99 without explanations.

Writes ``benchmarks/results/explain.json`` and ``explain.md``.

    python -m benchmarks.explain [--quick] [--rounds 3] [--seconds 8] [--c1-seconds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.explain_tables import targets, to_markdown
from benchmarks.inputs import RAMP_MS, REPO, image_path
from benchmarks.servers import Running, ServerSpec, check_answer, on_core_zero, running
from benchmarks.wrk import LoadResult, run_wrk

__all__ = ["limit", "main", "measure"]

RESULTS = REPO / "benchmarks" / "results"
MODEL = "mobilenetv2-imagenet"
SERVER = ServerSpec("cnnserve", "cnnserve explain", env={"CNNSERVE_EXPLAIN_CACHE_BYTES": "0"})
LIMIT_BATCHES = (1, 2, 8)  # besides max_batch_size; 2: what the batcher gives MobileNetV2 here


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _explain_url(server: Running, method: str) -> str:
    return f"http://127.0.0.1:{server.port}/v1/models/{MODEL}/explain?method={method}"


def _wrk(url: str, seconds: float, connections: int = 1) -> LoadResult:
    return run_wrk(
        url, image_path(MODEL), connections=connections, seconds=seconds, ramp_ms=RAMP_MS[MODEL]
    )


def _summary(result: LoadResult) -> dict[str, float]:
    return {
        "requests": result.requests,
        "errors": result.errors,
        "requests_per_s": round(result.requests_per_s, 2),
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("requests_per_s", "p50_ms", "p90_ms", "p99_ms")
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys} | {"runs": runs}


def cam_vs_classify(server: Running, *, rounds: int, seconds: float) -> dict[str, Any]:
    urls = {"classify": server.url, "cam": _explain_url(server, "cam")}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in urls}
    for url in urls.values():  # warm-up: the cam session is built on first use
        _wrk(url, 1)
        server.settle()
    for _ in range(rounds):
        for kind, url in urls.items():
            runs[kind].append(_summary(_wrk(url, seconds)))
            server.settle()
    result: dict[str, Any] = {kind: _medians(r) for kind, r in runs.items()}
    result["ratio_p50"] = round(result["cam"]["p50_ms"] / result["classify"]["p50_ms"], 3)
    result["ratio_p90"] = round(result["cam"]["p90_ms"] / result["classify"]["p90_ms"], 3)
    return result


def _multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "cnnserve-explain-bench"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return (
        head + image + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def occlusions(server: Running, *, count: int, warm_up: bool) -> dict[str, Any]:
    """``count`` default occlusions one after the other over one connection (after one to
    warm up, if asked): seconds each as the client sees them, as the server reports them,
    and the CPU seconds the server used for each (which other load barely moves)."""
    body, content_type = _multipart(image_path(MODEL).read_bytes())
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    path = f"/v1/models/{MODEL}/explain?method=occlusion"
    seconds, elapsed, cpu, answer = [], [], [], {}
    for i in range(count + 1 if warm_up else count):
        server.settle()
        cpu_before, started = server.cpu_seconds(), time.perf_counter()
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        answer = json.loads(response.read())
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"occlusion answered {response.status}: {answer}")
        if i or not warm_up:
            seconds.append(round(took, 4))
            elapsed.append(answer["elapsed_ms"] / 1000)
            cpu.append(round(server.cpu_seconds() - cpu_before, 3))
    connection.close()
    shape = answer["heatmap"]["shape"]
    return {
        "copies": shape[0] * shape[1],
        "parameters": answer["parameters"],
        "seconds": seconds,
        "server_seconds": elapsed,
        "cpu_s": cpu,
    }


def limit(*, repeats: int, batches: list[int]) -> dict[str, Any]:
    """ONNX Runtime alone (one intra-op thread) on the 169 occluded copies of the benchmark
    image, ``repeats`` runs in batches of each size: wall and CPU seconds of each run."""
    from benchmarks.limit import _session
    from service.config import Settings
    from service.explain import fill_values, occlusion_defaults
    from service.model_card import load_card
    from service.preprocessing import preprocess

    spec = load_card(REPO / "models" / MODEL / "model.json").input
    settings = Settings()
    image = preprocess(image_path(MODEL).read_bytes(), spec, max_pixels=settings.max_image_pixels)
    window, stride = occlusion_defaults(spec)
    side = (spec.size[0] - window) // stride + 1
    copies = np.repeat(image[None], side * side, axis=0)
    fill = fill_values(spec, image)[:, None, None]
    for cell in range(side * side):
        top, left = (cell // side) * stride, (cell % side) * stride
        copies[cell, :, top : top + window, left : left + window] = fill
    session = _session(MODEL, 1)
    name = session.get_inputs()[0].name

    def once(batch: int) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(copies), batch):
            session.run(None, {name: copies[first : first + batch]})
        return round(time.perf_counter() - started, 4), round(time.process_time() - cpu, 4)

    once(batches[0])
    by_batch: dict[str, dict[str, Any]] = {}  # JSON's keys: strings
    for batch in batches:
        runs = [once(batch) for _ in range(repeats)]
        by_batch[str(batch)] = {"seconds": [w for w, _ in runs], "cpu_s": [c for _, c in runs]}
    return {"copies": len(copies), "cores": sorted(os.sched_getaffinity(0)), "by_batch": by_batch}


def _limit_pinned(repeats: int, batches: list[int]) -> dict[str, Any]:
    arguments = ["--limit-only", "--repeats", str(repeats), "--batches", *map(str, batches)]
    return on_core_zero("benchmarks.explain", *arguments)


def occlusion_vs_limit(server: Running, *, rounds: int, count: int) -> dict[str, Any]:
    """The server's occlusions and ONNX Runtime alone at max_batch_size, alternating in
    ``rounds`` (the server idle while the limit runs on its core); then, once, the limit at
    other batch sizes for scale. Medians of wall and CPU seconds."""
    from service.config import Settings

    batch = Settings().max_batch_size
    served: dict[str, list[float]] = {"seconds": [], "server_seconds": [], "cpu_s": []}
    alone: dict[str, list[float]] = {"seconds": [], "cpu_s": []}
    for round_ in range(rounds):
        for key, values in occlusions(server, count=count, warm_up=round_ == 0).items():
            if key in served:
                served[key] += values
        server.settle()
        runs = _limit_pinned(count, [batch])["by_batch"][str(batch)]
        alone["seconds"] += runs["seconds"]
        alone["cpu_s"] += runs["cpu_s"]
    others = _limit_pinned(max(2, count // 2), [b for b in LIMIT_BATCHES if b != batch])
    median = statistics.median
    return {
        "copies": 169,
        "parameters": {"window": 32, "stride": 16},
        "served": served | {k + "_median": round(median(v), 4) for k, v in served.items()},
        "limit": alone | {k + "_median": round(median(v), 4) for k, v in alone.items()},
        "limit_batch": batch,
        "limit_other_batches": {
            b: round(median(x["seconds"]), 4) for b, x in others["by_batch"].items()
        },
        "ratio": round(median(served["seconds"]) / median(alone["seconds"]), 3),
        "cpu_ratio": round(median(served["cpu_s"]) / median(alone["cpu_s"]), 3),
    }


def beside_occlusions(server: Running, *, rounds: int, seconds: float) -> dict[str, Any]:
    """Classify at concurrency 8, alone and with one client sending occlusions in a loop."""
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "beside": []}
    occluding: list[dict[str, float]] = []
    explain = _explain_url(server, "occlusion")
    _wrk(server.url, 1, 8)
    server.settle()
    with ThreadPoolExecutor(1) as pool:
        for _ in range(rounds):
            runs["alone"].append(_summary(_wrk(server.url, seconds, 8)))
            server.settle()
            # The occlusion client starts first and stops last: it covers the whole run.
            background = pool.submit(_wrk, explain, seconds + 3)
            time.sleep(1)
            runs["beside"].append(_summary(_wrk(server.url, seconds, 8)))
            occluding.append(_summary(background.result()))
            server.settle(timeout_s=15)
    result: dict[str, Any] = {kind: _medians(r) for kind, r in runs.items()}
    result["occlusion_client"] = occluding
    result["ratio_p99"] = round(result["beside"]["p99_ms"] / result["alone"]["p99_ms"], 3)
    return result


def _metadata() -> dict[str, Any]:
    import onnxruntime

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=REPO).stdout

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD").strip()
        + ("+dirty" if git("status", "-s").strip() else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def measure(
    *, rounds: int, seconds: float, c1_seconds: float, occlusions_count: int
) -> dict[str, Any]:
    report: dict[str, Any] = {"metadata": _metadata(), "model": MODEL}
    started = time.monotonic()
    with running(SERVER, MODEL) as server:
        check_answer(server.url, MODEL, image_path(MODEL).read_bytes())
        _log("cam vs classify at concurrency 1")
        report["cam_vs_classify"] = cam_vs_classify(server, rounds=rounds, seconds=c1_seconds)
        _log("occlusion, 169 copies, alternating with ONNX Runtime alone on the same core")
        report["occlusion"] = occlusion_vs_limit(server, rounds=rounds, count=occlusions_count)
        server.settle()
        _log("classify at concurrency 8, alone and beside occlusions")
        report["beside_occlusions"] = beside_occlusions(server, rounds=rounds, seconds=seconds)
        report["server_rss_mib"] = server.rss_mib()
    report["metadata"]["load_average_at_end"] = os.getloadavg()
    report["metadata"]["wall_s"] = round(time.monotonic() - started)
    report["targets"] = targets(report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per classify c=8 run")
    parser.add_argument("--c1-seconds", type=float, default=3.0, help="per cam/classify run")
    parser.add_argument("--occlusions", type=int, default=2, help="per round, sequential")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS / "explain.json")
    parser.add_argument("--limit-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, nargs="+", default=[32], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit_only:  # the pinned subprocess of ``measure``
        json.dump(limit(repeats=args.repeats, batches=args.batches), sys.stdout)
        return
    if args.quick:
        args.rounds, args.seconds, args.c1_seconds, args.occlusions = 1, 3.0, 2.0, 1
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("the benchmark pins the server and wrk to two different cores")
    report = measure(
        rounds=args.rounds,
        seconds=args.seconds,
        c1_seconds=args.c1_seconds,
        occlusions_count=args.occlusions,
    )
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    markdown = args.output.with_suffix(".md")
    markdown.write_text(to_markdown(report))
    for target, measured, verdict in report["targets"]:
        _log(f"{target}: {measured} ({verdict.strip('*')})")
    _log(f"wrote {args.output} and {markdown}")


if __name__ == "__main__":
    main()
