"""Shared fixtures: real images (Fashion-MNIST, photos shipped in packages) and live servers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import CNNSERVE, MODELS, REPO, LiveServer, ServerFactory, free_port

from model_export.datasets import Split, load_fashion_mnist
from model_export.photos import photo_paths


@pytest.fixture(scope="session")
def fashion_test() -> Split:
    """The official 10k Fashion-MNIST test set."""
    return load_fashion_mnist().test


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Photos shipped inside scikit-image and scikit-learn, by name (chelsea, coffee, ...)."""
    return {name: path.read_bytes() for name, path in photo_paths().items()}


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A private copy of the committed model repository, free to break."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start `cnnserve serve` with extra CNNSERVE_* settings; every server is stopped after."""
    servers: list[LiveServer] = []

    def start(*, executable: Path = CNNSERVE, wait: bool = True, **settings: object) -> LiveServer:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
        env |= {
            "CNNSERVE_PROVIDERS": "cpu",
            "CNNSERVE_MODEL_DIR": str(MODELS),
            "CNNSERVE_LOG_FORMAT": "json",
        }
        env |= {f"CNNSERVE_{k.upper()}": str(v) for k, v in settings.items()}
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        server = LiveServer(process, port, log_path)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL if server.stopped else signal.SIGTERM)
