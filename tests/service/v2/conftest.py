"""A live cnnserve on 127.0.0.1 for the Open Inference Protocol tests.

One server for the session, started as ``cnnserve serve`` on a free port over a temporary
copy of ``models/`` (the repository tests add, replace and remove models in it, with the
admin key of ``v2_support``), CPU only.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from testkit import MODELS, launch_server
from v2_support import ADMIN_KEY, Server

from model_export.datasets import load_fashion_mnist


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("v2server")
    model_dir = root / "models"
    shutil.copytree(MODELS, model_dir)
    live = launch_server(
        root, model_dir=model_dir, admin_keys=ADMIN_KEY, log_format="text", log_level="WARNING"
    )
    try:
        yield Server(live.url, f"127.0.0.1:{live.port}", model_dir, live.log_path)
    finally:
        live.stop(signal.SIGTERM)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def fashion_images() -> npt.NDArray[np.uint8]:
    return load_fashion_mnist().test.images[:32]
