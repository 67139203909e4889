"""Helpers the tests share: paths, image encoding, live `cnnserve serve` processes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
CNNSERVE = Path(sys.executable).parent / "cnnserve"


def png(array: np.ndarray) -> bytes:
    """An image array (H x W or H x W x C, uint8) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition, or None when it is absent."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series == name and not labels:
            return float(value)
        if series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A `cnnserve serve` process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed (every process of the server writes to the one log)."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout_s} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stopped = True
        return int(self.process.returncode)


def launch_server(
    log_dir: Path,
    *,
    executable: Path = CNNSERVE,
    wait: bool = True,
    environ: dict[str, str] | None = None,
    **settings: object,
) -> LiveServer:
    """Start `cnnserve serve` on a free port of 127.0.0.1 with CNNSERVE_* ``settings`` (CPU
    provider and the committed models unless given) and other variables from ``environ``
    (OTEL_*: none are inherited); waits until it is ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNNSERVE_", "OTEL_"))}
    env |= environ or {}
    env |= {
        "CNNSERVE_PROVIDERS": "cpu",
        "CNNSERVE_MODEL_DIR": str(MODELS),
        "CNNSERVE_LOG_FORMAT": "json",
    }
    env |= {f"CNNSERVE_{k.upper()}": str(v) for k, v in settings.items()}
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    server = LiveServer(process, port, log_path)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server


ServerFactory = Callable[..., LiveServer]
