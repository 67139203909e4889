"""A live cnnserve on 127.0.0.1 for the Open Inference Protocol tests.

One server for the session, started as ``cnnserve serve`` on a free port over a temporary
copy of ``models/`` (the repository tests add, replace and remove models in it), CPU only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from testkit import CNNSERVE, MODELS, LiveServer, free_port
from v2_support import Server, read_fashion_images


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CNNSERVE.exists():
        pytest.skip(f"{CNNSERVE} is missing: pip install -e '.[serve,cpu]'")
    root = tmp_path_factory.mktemp("v2server")
    model_dir = root / "models"
    shutil.copytree(MODELS, model_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
    env |= {
        "CNNSERVE_PROVIDERS": "cpu",
        "CNNSERVE_MODEL_DIR": str(model_dir),
        "CNNSERVE_LOG_FORMAT": "text",
        "CNNSERVE_LOG_LEVEL": "WARNING",
    }
    log = root / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(CNNSERVE), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=root,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    live = LiveServer(process, port, log)
    try:
        live.wait_ready(timeout_s=120)
        yield Server(live.url, f"127.0.0.1:{port}", model_dir, log)
    finally:
        live.stop(signal.SIGTERM)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def fashion_images() -> npt.NDArray[np.uint8]:
    return read_fashion_images(32)
