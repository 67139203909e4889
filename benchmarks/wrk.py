"""Run ``wrk`` (pinned to its own core) with multipart.lua and read the JSON it prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadResult", "run_wrk"]

SCRIPT = Path(__file__).with_name("multipart.lua")


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: throughput, latency percentiles (ms) and errors of every kind."""

    seconds: float
    requests: int
    errors: int
    errors_by_kind: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str,
    image: Path,
    *,
    connections: int,
    seconds: float,
    images_per_request: int = 1,
    body: str = "multipart",
    cpus: str = "1",
    max_requests: int = 0,
    ramp_ms: int = 0,
    timeout_s: int = 30,
) -> LoadResult:
    """``connections`` concurrent clients for ``seconds`` (or ``max_requests``), one wrk thread;
    ``ramp_ms``: the first requests of the connections go out that far apart."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does)")
    command = [
        "taskset", "-c", cpus, wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s", "-s", str(SCRIPT), url,
        "--", str(image), str(images_per_request), body,
    ]  # fmt: skip
    env = os.environ | {
        "BENCH_MAX_REQUESTS": str(max_requests),
        "BENCH_RAMP_MS": str(ramp_ms),
        "BENCH_CONNECTIONS": str(connections),
    }
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + timeout_s + 30
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    latency = raw["latency_us"]
    errors = raw["errors"]
    return LoadResult(
        seconds=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        errors=sum(errors.values()),
        errors_by_kind={k: v for k, v in errors.items() if v},
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
    )
