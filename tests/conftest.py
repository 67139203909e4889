"""Shared fixtures: real images (Fashion-MNIST, photos shipped in packages) and live servers."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import CNNSERVE, MODELS, LiveServer, ServerFactory, launch_server

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
        server = launch_server(tmp_path, executable=executable, wait=wait, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL if server.stopped else signal.SIGTERM)
