"""Helpers the tests share: paths, image encoding, live `cnnserve serve` processes."""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CNNSERVE = Path(sys.executable).parent / "cnnserve"
# The models the repository ships, the ones the tests are written for.
SHIPPED_MODELS = ("lenet5-fashion", "mobilenetv2-imagenet", "resnet-fashion", "vggnet-fashion")


def _test_repository() -> Path:
    """The tests' own model repository: a private copy of the shipped models as committed
    (the files git tracks under models/, as they are in the working tree), so that a model
    or version a user added to models/ changes no test. Outside a git checkout: the shipped
    models' folders whole."""
    target = Path(tempfile.mkdtemp(prefix="cnnserve-test-models-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *(f"models/{name}" for name in SHIPPED_MODELS)],
        cwd=REPO,
        capture_output=True,
    )
    tracked = [Path(p) for p in listed.stdout.decode().split("\0") if p]
    if listed.returncode != 0 or not tracked:
        for name in SHIPPED_MODELS:
            shutil.copytree(REPO / "models" / name, target / name)
        return target
    for relative in tracked:
        destination = target / relative.relative_to("models")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / relative, destination)
    return target


MODELS = _test_repository()


def served_version(name: str, repository: Path = MODELS) -> str:
    """The version of ``name`` a request naming none gets (model.json's default_version:
    FP32 version 1 for every shipped model; their INT8 versions serve when named)."""
    from service.model_card import load_card

    folders = [p.name for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
    version = load_card(repository / name / "model.json").served_default(folders)
    assert version is not None, f"{name} has no version in {repository}"
    return version


def wait_ready(
    url: str, process: subprocess.Popen[Any], log: Callable[[], str], timeout_s: float = 60.0
) -> None:
    """Until ``url``'s /health/ready answers 200; fails with the server's ``log`` if its
    ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready in {timeout_s} s:\n{log()}")


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
        wait_ready(self.url, self.process, self.log, timeout_s)

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
