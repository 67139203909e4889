"""``make bench-profile``: where one request's time goes, before and after, from py-spy.

cnnserve (one core, lenet5-fashion by default) is loaded by wrk at concurrency 32 while
``py-spy record --gil`` samples the thread that holds the GIL (the Python work; the time
ONNX Runtime and zlib spend without the GIL is in the stage metrics, read from /metrics).
Each sample is charged to the innermost frame that belongs to a known part of the path, and
the server's CPU time per request comes from /proc. ``--before REF`` profiles the service
as it was at a git commit (extracted with ``git archive`` and put first on PYTHONPATH).

Writes ``results/profile.json`` and ``results/profile.md`` (``--output NAME``: NAME.json and
NAME.md), with cnnserve's own functions that took the most samples; raw py-spy output in raw/.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.ab import parse_variant
from benchmarks.inputs import MODELS, RAMP_MS, RAW, REPO, image_path, source_tree
from benchmarks.servers import ServerSpec, check_answer, running
from benchmarks.wrk import run_wrk

__all__ = ["PARTS", "charge", "main"]

RESULTS = REPO / "benchmarks" / "results"
BEFORE = "3f0f134"  # the last commit before issue 10's changes to the service

# (part, pattern matched against "function (file)"), innermost match wins; order matters only
# between patterns that can match the same frame.
PARTS: list[tuple[str, re.Pattern[str]]] = [
    (part, re.compile(pattern))
    for part, pattern in (
        ("metrics (prometheus_client)", r"prometheus_client/"),
        ("JSON and response", r"orjson|responses\.py|JSON\.render|Response\.__init__|render"),
        ("softmax and top-k", r"softmax|top_k|numpy/.*(argsort|argpartition|take_along)"),
        ("inference call (ONNX Runtime)", r"onnxruntime|ModelRuntime\.infer"),
        ("preprocess (resize, normalise)", r"to_tensor|_resize|_to_mode|_normalisation"),
        ("decode (Pillow)", r"PIL/|open_image|load_image|decode_image|_decoding"),
        (
            "batching and thread hand-offs",
            r"service/batching\.py|threading\.py|concurrent/futures|run_in_executor|queue\.py",
        ),
        ("multipart parsing", r"python_multipart|formparsers|uploads\.py|fastpath\.py.*multipart"),
        ("data plane (other)", r"service/dataplane\.py"),
        ("cnnserve middleware", r"service/api/middleware\.py"),
        ("FastAPI / Starlette / anyio", r"fastapi/|starlette/|anyio/|service/api/"),
        ("HTTP server (uvicorn, httptools)", r"uvicorn/|httptools"),
    )
]
OTHER = "other (event loop, interpreter)"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def charge(stack: str) -> str:
    """The part a collapsed py-spy stack (``frame;frame;...``) is charged to."""
    for frame in reversed(stack.split(";")):
        match = _FRAME.match(frame)
        text = f"{match['function']} ({match['file']})" if match else frame
        for part, pattern in PARTS:
            if pattern.search(text):
                return part
    return OTHER


def _samples(raw: Path) -> Iterator[tuple[str, int]]:
    """(collapsed stack, sample count) of each line of py-spy's raw output."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def _summarise(raw: Path) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for stack, count in _samples(raw):
        counts[charge(stack)] += count
    total = sum(counts.values()) or 1
    return {part: round(n / total, 4) for part, n in counts.most_common()}


def _own_functions(raw: Path, top: int = 12) -> dict[str, float]:
    """The share of all samples spent in each of cnnserve's own functions (``service/``,
    self time: the innermost frame), the ``top`` largest."""
    counts: Counter[str] = Counter()
    total = 0
    for stack, count in _samples(raw):
        total += count
        match = _FRAME.match(stack.rpartition(";")[2])
        if match and match["file"].startswith("service/"):
            counts[f"{match['function']} ({match['file']})"] += count
    return {name: round(n / (total or 1), 4) for name, n in counts.most_common(top)}


def _stage_seconds(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'cnnserve_stage_duration_seconds_sum\{.*stage="(\w+)".*\} (\S+)', line)
        if match:
            found[match[1]] = found.get(match[1], 0.0) + float(match[2])
    return found


def profile(
    label: str, model: str, concurrency: int, seconds: float, ref: str | None, env: Any = None
) -> Any:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spec = ServerSpec("cnnserve", f"cnnserve-{label}", env=dict(env or {}))
    if ref is not None:
        spec = replace(spec, env={"PYTHONPATH": f"{source_tree(ref)}:{REPO}"})
    image = image_path(model)
    raw = RAW / f"profile-{label}.txt"
    with running(spec, model) as server:
        check_answer(server.url, model, image.read_bytes())
        run_wrk(server.url, image, connections=concurrency, seconds=2)  # warm up
        server.settle()
        metrics_url = server.url.split("/v1/")[0] + "/metrics"
        stages_before, cpu_before = _stage_seconds(metrics_url), server.cpu_seconds()
        load: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: load.update(
                result=run_wrk(
                    server.url,
                    image,
                    connections=concurrency,
                    seconds=seconds + 2,
                    ramp_ms=RAMP_MS[model],
                )
            )
        )
        worker.start()
        time.sleep(1)
        subprocess.run(
            [
                "taskset", "-c", "1", pyspy, "record", "--gil", "--nonblocking", "--rate", "200",
                "--format", "raw", "--duration", str(int(seconds)), "--output", str(raw),
                "--pid", str(server.process.pid),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        worker.join()
        cpu = server.cpu_seconds() - cpu_before
        stages_after = _stage_seconds(metrics_url)
    result = load["result"]
    requests = max(1, result.requests)
    return {
        "label": label,
        "ref": ref or "working tree",
        "model": model,
        "concurrency": concurrency,
        "requests_per_s": round(result.requests_per_s, 1),
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "stage_us_per_request": {
            stage: round((stages_after[stage] - stages_before.get(stage, 0.0)) / requests * 1e6, 1)
            for stage in stages_after
        },
        "gil_share_by_part": _summarise(raw),
        "own_functions": _own_functions(raw),
    }


def _markdown(runs: list[dict[str, Any]]) -> str:
    parts = [p for p, _ in PARTS] + [OTHER]
    header = " | ".join(f"{r['label']} ({r['ref']})" for r in runs)
    lines = [
        "# Where the time of one request goes",
        "",
        f"`make bench-profile`: cnnserve serving {runs[0]['model']} on one core, wrk at "
        f"concurrency {runs[0]['concurrency']}, `py-spy record --gil` (the Python work).",
        "",
        f"| | {header} |",
        "|---|" + "--:|" * len(runs),
        "| requests/s (while sampled) | "
        + " | ".join(f"{r['requests_per_s']:,.0f}" for r in runs)
        + " |",
        "| server CPU per request, µs | "
        + " | ".join(f"{r['cpu_us_per_request']:,.0f}" for r in runs)
        + " |",
    ]
    for stage in ("decode", "preprocess", "inference"):
        lines.append(
            f"| stage metric: {stage}, µs per request | "
            + " | ".join(f"{r['stage_us_per_request'].get(stage, 0):,.0f}" for r in runs)
            + " |"
        )
    lines.append("| **share of GIL-holding samples** | " + " | " * len(runs))
    for part in parts:
        lines.append(
            f"| {part} | "
            + " | ".join(f"{r['gil_share_by_part'].get(part, 0):.1%}" for r in runs)
            + " |"
        )
    for run in runs:
        lines += [
            "",
            f"cnnserve's own functions, {run['label']}: share of all samples, self time",
            "",
        ]
        lines += [f"- {share:.1%} {name}" for name, share in run.get("own_functions", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODELS[0], choices=MODELS)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--before", default=BEFORE, help="git ref of the 'before' profile")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="another column: NAME=SOURCE[,KEY=VALUE...] as in benchmarks.ab",
    )
    parser.add_argument(
        "--output", default="profile", help="results/NAME.json and NAME.md (default: profile)"
    )
    args = parser.parse_args(argv)
    runs = [
        profile("before", args.model, args.concurrency, args.seconds, args.before),
        profile("after", args.model, args.concurrency, args.seconds, None),
    ]
    for text in args.variant:
        spec = parse_variant(text)
        source = text.partition("=")[2].split(",")[0]
        run = profile(spec.label, args.model, args.concurrency, args.seconds, None, spec.env)
        runs.append(run | {"ref": source})
    (RESULTS / f"{args.output}.json").write_text(json.dumps(runs, indent=1) + "\n")
    (RESULTS / f"{args.output}.md").write_text(_markdown(runs))
    print(_markdown(runs))


if __name__ == "__main__":
    main()
