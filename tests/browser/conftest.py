"""Fixtures for the web page tests: a real cnnserve on 127.0.0.1 and Debian's Chromium.

The server runs as ``cnnserve serve`` in a subprocess (CPU only); Playwright drives
``/usr/bin/chromium`` headless and never downloads a browser. Every page records its console:
a test fails on any console error or uncaught exception it did not announce (an error
response a test provokes on purpose is logged by Chromium as "Failed to load resource").
Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from browser_support import API_KEY, ARTIFACTS, MAX_IMAGE_PIXELS, Console, Server, UiPage

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: Server, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"cnnserve exited with {server.process.returncode}; see {log}")
        try:
            if server.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"cnnserve was not ready in 180 s; see {log}")
        time.sleep(0.25)


def _serve(log_name: str, **env: str) -> Iterator[Server]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = ARTIFACTS / log_name
    cnnserve = Path(sys.executable).with_name("cnnserve")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(cnnserve), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={
                **os.environ,
                "CNNSERVE_PROVIDERS": "cpu",
                "CNNSERVE_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", process)
        try:
            _wait_ready(server, log_path)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """cnnserve without API keys."""
    yield from _serve("server.log")


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[Server]:
    """cnnserve that wants an API key (API_KEY or another one) on everything but the page."""
    yield from _serve("server-keyed.log", CNNSERVE_API_KEYS=f"{API_KEY},another-key")


@pytest.fixture(scope="session")
def models(server: Server) -> dict[str, dict[str, Any]]:
    """ModelInfo of every served model, by name: what the page reads too."""
    return {m["name"]: m for m in server.get("/v1/models").json()["models"]}


# Module scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, which would break every later test that calls asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (`make apt-deps` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _open(browser: Browser, request: pytest.FixtureRequest, viewport: Any) -> Iterator[UiPage]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(30_000)
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    yield UiPage(page, console, request.node.name)
    context.close()
    assert console.errors == [], "\n".join(console.errors)


@pytest.fixture
def ui(browser: Browser, request: pytest.FixtureRequest) -> Iterator[UiPage]:
    """A fresh desktop-sized page in its own context (no shared storage)."""
    yield from _open(browser, request, DESKTOP)


@pytest.fixture
def phone_ui(browser: Browser, request: pytest.FixtureRequest) -> Iterator[UiPage]:
    """A fresh phone-sized page."""
    yield from _open(browser, request, PHONE)
