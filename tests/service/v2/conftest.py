"""A live cnnserve on 127.0.0.1 for the Open Inference Protocol tests.

One server per session, started as ``cnnserve serve`` on a free port over a temporary copy
of ``models/`` (the repository tests add, replace and remove models in it), CPU only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from v2_support import MODELS, Server, free_port, read_fashion_images

START_TIMEOUT_S = 120.0


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"cnnserve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"cnnserve was not ready within {START_TIMEOUT_S:g} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    executable = Path(sys.executable).with_name("cnnserve")
    if not executable.exists():
        pytest.skip(f"{executable} is missing: pip install -e '.[serve,cpu]'")
    root = tmp_path_factory.mktemp("v2server")
    model_dir = root / "models"
    shutil.copytree(MODELS, model_dir)
    port = free_port()
    env = {
        **os.environ,
        "CNNSERVE_PROVIDERS": "cpu",
        "CNNSERVE_MODEL_DIR": str(model_dir),
        "CNNSERVE_LOG_FORMAT": "text",
        "CNNSERVE_LOG_LEVEL": "WARNING",
        "CNNSERVE_API_KEYS": "",
    }
    log = root / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=root,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield Server(url, f"127.0.0.1:{port}", model_dir, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def fashion_images() -> npt.NDArray[np.uint8]:
    return read_fashion_images(32)
