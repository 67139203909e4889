"""The servers under test: how to start each one pinned, wait for it, check it, measure it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.inputs import RAW, REPO, model_repository

__all__ = ["ServerSpec", "on_core_zero", "running", "tree_cpu_seconds", "tree_rss_mib"]

EXPECTED_LABEL = {
    "lenet5-fashion": "Ankle boot",
    "resnet-fashion": "Ankle boot",
    "mobilenetv2-imagenet": "Egyptian cat",
}


@dataclass(frozen=True)
class ServerSpec:
    """One row of the benchmark: a server kind with its options, on a set of cores."""

    kind: str  # cnnserve | fastapi | litserve | bare
    label: str
    cpus: str = "0"
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    body: str = "multipart"  # or "raw": one image as the body, Content-Type image/png

    def command(self, model: str, port: int) -> list[str]:
        folder = model_repository(model)
        python = sys.executable
        if self.kind == "cnnserve":
            cli = [str(Path(python).parent / "cnnserve"), "serve", "--host", "127.0.0.1"]
            return [*cli, "--port", str(port), "--workers", str(self.workers)]
        module = {"fastapi": "fastapi_plain", "litserve": "litserve_api", "bare": "bare_asgi"}[
            self.kind
        ]
        return [
            python, "-m", f"benchmarks.peers.{module}", str(folder / model),
            "--port", str(port), "--workers", str(self.workers),
        ]  # fmt: skip

    def environment(self, model: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
        env |= {
            "PYTHONPATH": str(REPO),
            "CNNSERVE_MODEL_DIR": str(model_repository(model)),
            "CNNSERVE_PROVIDERS": "cpu",
            "CNNSERVE_LOG_LEVEL": "WARNING",
        }
        return env | self.env

    def url(self, model: str, port: int) -> str:
        if self.kind == "cnnserve":
            return f"http://127.0.0.1:{port}/v1/models/{model}/classify"
        return f"http://127.0.0.1:{port}/predict"

    def health_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/health" + ("/ready" if self.kind == "cnnserve" else "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a server: the sum of VmRSS over its processes, in MiB."""
    total = 0
    for child in _children(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a server's processes, in seconds. On a busy
    machine the throughput of a pinned server depends on what else runs on its core; the
    work it does per CPU second does not."""
    ticks = 0
    for child in _children(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "cnnserve-check"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def check_answer(url: str, model: str, image: bytes) -> str:
    """One request before the load: the server must answer 200 with the expected label."""
    body, content_type = _multipart(image)
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    if "results" in answer:
        answer = answer["results"][0]
    label = str(answer["predictions"][0]["label"])
    if label != EXPECTED_LABEL[model]:
        raise RuntimeError(f"{url} answered {label!r}, expected {EXPECTED_LABEL[model]!r}")
    return label


@dataclass
class Running:
    spec: ServerSpec
    model: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return self.spec.url(self.model, self.port)

    def rss_mib(self) -> float:
        return tree_rss_mib(self.process.pid)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def settle(self, timeout_s: float = 5.0, window_s: float = 0.1) -> float:
        """Wait until the server is idle (under 5 % of a core for two windows in a row), and
        return how long that took. When wrk stops, its connections close with requests in
        flight, and a server that does not notice goes on with them: on a pinned core that
        work would be charged to whatever is measured next."""
        started = deadline = time.monotonic()
        deadline += timeout_s
        quiet, cpu = 0, self.cpu_seconds()
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(window_s)
            now = self.cpu_seconds()
            quiet = quiet + 1 if now - cpu < 0.05 * window_s else 0
            cpu = now
        return time.monotonic() - started


def _wait_ready(server: Running, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.spec.label} exited; see {server.log_path}")
        health = server.spec.health_url(server.port)
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(health, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{server.spec.label} not ready in {timeout_s} s; see {server.log_path}")


@contextlib.contextmanager
def running(spec: ServerSpec, model: str, *, timeout_s: float = 120) -> Iterator[Running]:
    """Start the server pinned to ``spec.cpus``, wait until it answers right, stop it after."""
    port = _free_port()
    log_path = RAW / "logs" / f"{spec.label.replace(' ', '_')}-{model}-{spec.cpus}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["taskset", "-c", spec.cpus, *spec.command(model, port)],
            env=spec.environment(model),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # its own process group: stopped as a whole below
        )
    server = Running(spec, model, port, process, log_path)
    try:
        _wait_ready(server, timeout_s)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers of a multi-process server
        os.killpg(process.pid, signal.SIGKILL)


def on_core_zero(module: str, *args: str) -> dict[str, Any]:
    """``python -m module args`` pinned to core 0 (the server's core, the server idle): the
    JSON object it prints (the in-process limits, measured where the server runs)."""
    done = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    return dict(json.loads(done.stdout))
