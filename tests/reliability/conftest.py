"""Fixtures of the reliability tests: module-wide live servers and the summary they feed."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
from reliability_kit import TIMEOUT, Summary, spawn
from testkit import LiveServer, ServerFactory


@pytest.fixture(scope="session")
def summary() -> Iterator[Summary]:
    """Rows for docs/reliability.md; written to test-artifacts/reliability/ at the end."""
    rows = Summary()
    yield rows
    rows.write()


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like ``start_server``, but the servers live for the whole module (start-up is ~1 s of
    CPU per server, and CI has two cores)."""
    servers: list[LiveServer] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def start(**settings: object) -> LiveServer:
        server = spawn(log_dir, settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL if server.stopped else signal.SIGTERM)


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> LiveServer:
    """One default server per module (the hostile-input suites share its state)."""
    return module_server_factory()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c
