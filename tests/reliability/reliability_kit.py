"""What the reliability tests share: live servers, process memory, error shapes, the summary.

Every test here talks to a real ``cnnserve serve`` process on 127.0.0.1 (so a dropped
connection or a hang is real), with a timeout on every request. Figures the tests measure go
into ``test-artifacts/reliability/summary.json`` (rows keyed by id, merged across runs, each
stamped with when it ran); ``tests/reliability/report.py`` renders docs/reliability.md's table
from it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from testkit import REPO, LiveServer, launch_server

ARTIFACTS = REPO / "test-artifacts" / "reliability"
SUMMARY = ARTIFACTS / "summary.json"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # every request: a hang fails, it never blocks CI


def spawn(
    log_dir: Path, settings: Mapping[str, object] | None = None, *, wait: bool = True
) -> LiveServer:
    """Start `cnnserve serve` on a free port with CNNSERVE_* ``settings`` (CPU, JSON logs).

    The caller stops it (``LiveServer.stop``); fixtures in conftest.py do that for you.
    """
    return launch_server(log_dir, wait=wait, **(settings or {}))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def rss_mib(pid: int) -> float:
    return proc_status(pid)["VmRSS"] / 1024


def native_error(response: httpx.Response) -> dict[str, Any]:
    """The native API's error body, asserting its shape: {"error": {code, message, detail}}."""
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "detail"}, body
    assert isinstance(error["code"], str) and isinstance(error["message"], str), body
    assert isinstance(error["detail"], dict), body
    return error


def v2_error(response: httpx.Response) -> str:
    """The Open Inference Protocol's error body, asserting its shape: {"error": "..."}."""
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Summary:
    """Rows of the reliability report, written to SUMMARY when the session ends."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def row(self, key: str, *, area: str, tried: str, held: bool, **figures: Any) -> None:
        """Record one line of the table; ``held`` says whether the service did what it should."""
        with self._lock:
            self._rows[key] = {
                "area": area,
                "tried": tried,
                "held": bool(held),
                "figures": figures,
                "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }

    def write(self) -> None:
        if not self._rows:
            return
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            existing = json.loads(SUMMARY.read_text())
        except (FileNotFoundError, ValueError):
            existing = {}
        rows = existing.get("rows", {}) | self._rows
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        SUMMARY.write_text(
            json.dumps({"commit": commit or None, "rows": rows}, indent=2, sort_keys=True)
        )


@dataclass(frozen=True)
class Call:
    """One request a load generator sends (again and again)."""

    name: str
    method: str
    path: str
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    call: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no HTTP answer
    error: str | None  # the transport error's class, or None
    refusal: tuple[str | None, bytes] | None = None  # non-200s: (Retry-After, body head)


class LoadGenerator:
    """``concurrency`` threads, each sending ``calls`` round-robin until stopped.

    ``fresh_connections`` opens a new connection per request (what a crowd of clients does,
    and what makes "new connections are refused" observable during a drain).
    """

    def __init__(
        self,
        url: str,
        calls: list[Call],
        *,
        concurrency: int,
        fresh_connections: bool = False,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.url = url
        self.calls = calls
        self.concurrency = concurrency
        self.fresh = fresh_connections
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(concurrency)
        ]

    def _run(self, index: int) -> None:
        # keepalive_expiry under uvicorn's 5 s keep-alive timeout: no closing-connection race.
        limits = httpx.Limits(
            max_keepalive_connections=0 if self.fresh else 1, keepalive_expiry=2.0
        )
        with httpx.Client(base_url=self.url, timeout=self.timeout, limits=limits) as client:
            turn = index
            while not self._stop.is_set():
                call = self.calls[turn % len(self.calls)]
                turn += 1
                started = time.monotonic()
                status, error, refusal = None, None, None
                try:
                    response = client.request(
                        call.method, call.path, content=call.content, headers=call.headers
                    )
                    status = response.status_code
                    if status != 200:
                        refusal = (response.headers.get("retry-after"), response.content[:500])
                except httpx.TransportError as exc:
                    error = type(exc).__name__
                    time.sleep(0.01)  # a refused connection returns at once: do not spin
                seconds = time.monotonic() - started
                self.outcomes.append(Outcome(call.name, started, seconds, status, error, refusal))

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
