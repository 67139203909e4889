"""Measure what one request costs a live server, from outside.

While a request runs, a probe asks ``/health/live`` every few milliseconds on a connection
of its own (the Kubernetes liveness probe's view: anything that holds the event loop shows
as probe latency), and the server's peak resident memory is read from the kernel (VmHWM,
reset before the request by writing 5 to /proc/<pid>/clear_refs). After it, the time until
a good request is answered again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from reliability_kit import TIMEOUT, proc_status
from testkit import LiveServer

__all__ = ["Cost", "measure", "recovery_s"]

PROBE_INTERVAL_S = 0.01


@dataclass(frozen=True)
class Cost:
    status: int | None  # None: no HTTP answer
    error: str | None  # the transport error's class, or None
    body: Any  # the JSON body (or the first bytes of another)
    seconds: float
    probe_max_ms: float  # the slowest /health/live answer while the request ran
    probes: int
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float

    def figures(self) -> dict[str, Any]:
        """The row of the reliability report."""
        return {
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "probe_max_ms": round(self.probe_max_ms, 1),
            "rss_growth_mib": round(self.rss_peak_mib - self.rss_before_mib, 1),
            "rss_after_mib": round(self.rss_after_mib, 1),
        }


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class _Probe(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=TIMEOUT) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):  # a failure counts by its latency
                    client.get("/health/live")
                self.latencies.append(time.monotonic() - started)
                time.sleep(PROBE_INTERVAL_S)


def measure(
    server: LiveServer, send: Callable[[httpx.Client], httpx.Response], *, settle_s: float = 0.5
) -> Cost:
    """Send one request with ``send`` while probing the server; then let it settle."""
    pid = server.process.pid
    time.sleep(settle_s)
    before = proc_status(pid)["VmRSS"] / 1024
    _reset_peak(pid)
    probe = _Probe(server.url)
    probe.start()
    time.sleep(0.05)  # the probe's connection is open and warm
    status, error, body = None, None, None
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        try:
            response = send(client)
            status = response.status_code
            try:
                body = response.json()
            except ValueError:
                body = response.content[:200]
        except httpx.HTTPError as exc:
            error = type(exc).__name__
    seconds = time.monotonic() - started
    probe.stop.set()
    probe.join(TIMEOUT.read or 30)
    peak = proc_status(pid)["VmHWM"] / 1024
    time.sleep(settle_s)
    after = proc_status(pid)["VmRSS"] / 1024
    return Cost(
        status=status,
        error=error,
        body=body,
        seconds=seconds,
        probe_max_ms=max(probe.latencies, default=0.0) * 1000,
        probes=len(probe.latencies),
        rss_before_mib=before,
        rss_peak_mib=peak,
        rss_after_mib=after,
    )


def recovery_s(
    server: LiveServer, send: Callable[[httpx.Client], httpx.Response], *, limit_s: float = 30
) -> float:
    """Seconds until ``send`` gets a 200 (it is retried every 50 ms); ``limit_s`` at most."""
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        while time.monotonic() - started < limit_s:
            try:
                if send(client).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    return time.monotonic() - started
