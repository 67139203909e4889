"""Run the app under uvicorn with a graceful drain.

On SIGTERM or SIGINT readiness turns 503 at once (``AppState.draining``), uvicorn stops
accepting connections, requests in flight get up to ``drain_timeout_s`` to finish, and the
process exits 0. With ``workers > 1`` ``service.supervisor`` runs that many processes, each
building its own app from the environment and listening on a socket of its own on the same
port (``SO_REUSEPORT``: the kernel spreads connections over them); a worker listens only
once its models are loaded and warmed (uvicorn runs the lifespan first), each drains as a
single process does, and the Prometheus metrics of all workers are summed through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a private temporary
folder unless set).

uvloop and httptools are asked for by name when installed (uvicorn's "auto" would pick them
too, silently); httptools through a subclass that bounds a request's head (request line and
headers) to ``MAX_HEAD_BYTES``, answering 431 past it, because httptools itself buffers an
unfinished header of any length.

Threads are sized from the cores this process may run on (its CPU affinity: ``taskset`` and
container CPU sets count, ``os.cpu_count()`` does not), shared among the workers. Once the
models are loaded, everything allocated so far is frozen out of the garbage collector's
generations (``gc.freeze``): a full collection walked those objects (ONNX graphs, routes,
model cards) every few thousand requests, and that pause was the p99 at concurrency 32.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib.util
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.logs import configure_logging
from service.runtime import usable_cores
from service.supervisor import supervise

__all__ = ["MAX_HEAD_BYTES", "serve"]

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; nginx's default allows 4 x 8 KiB

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, which has a limit of its own
    HAVE_HTTPTOOLS = False
else:
    HAVE_HTTPTOOLS = True

if HAVE_HTTPTOOLS:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing (431, then closing) a request whose head
        grows past ``MAX_HEAD_BYTES`` before it ends, instead of buffering it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0

        def data_received(self, data: bytes) -> None:
            if not self._in_head:
                super().data_received(data)
                return
            room = MAX_HEAD_BYTES - self._head_bytes
            self._head_bytes += min(len(data), room)
            if len(data) <= room:
                super().data_received(data)
                return
            super().data_received(data[:room])  # may finish the head (and start a body)
            if self.transport.is_closing():
                return
            if self._in_head:
                self._refuse_head()
            else:
                self.data_received(data[room:])

        def _refuse_head(self) -> None:
            message = f"request line and headers over {MAX_HEAD_BYTES} bytes".encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(message)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + message
            )
            self.transport.close()


class _DrainingServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, minus re-raising the signal after a graceful shutdown: a drained
        server exits 0, which is what Docker, Kubernetes and systemd read as a clean stop."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app_state = getattr(getattr(self.config.loaded_app, "state", None), "cnnserve", None)
        if app_state is None:  # the app is wrapped by middleware: find it once
            app_state = _find_state(self.config.loaded_app)
        if app_state is not None and not app_state.draining:
            app_state.draining = True
            log.info(
                "received %s: draining (not ready; finishing requests in flight)",
                signal.Signals(sig).name,
            )
        super().handle_exit(sig, frame)


def _find_state(app: object) -> Any:
    seen = 0
    while app is not None and seen < 16:
        state = getattr(getattr(app, "state", None), "cnnserve", None)
        if state is not None:
            return state
        app = getattr(app, "app", None)
        seen += 1
    return None


def _frozen_after_startup(app: FastAPI) -> FastAPI:
    """``app`` with ``gc.freeze()`` once its lifespan has loaded and warmed the models.

    Frozen objects are still freed by reference counting; only cycles among them would
    outlive a model unload, and the startup objects are not expected to form any."""
    startup = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with startup(app) as state:
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan
    return app


def _sized(settings: Settings) -> Settings:
    """``settings`` with 0 ("automatic") thread counts resolved: the usable cores divided
    among the workers, so that N processes never run N times as many threads as cores."""
    share = max(1, usable_cores() // settings.workers)
    update = {
        name: share
        for name in ("intra_op_threads", "decode_threads")
        if getattr(settings, name) == 0
    }
    return settings.model_copy(update=update) if update else settings


def _multiprocess_metrics_dir() -> None:
    """Point prometheus_client's multiprocess mode at an empty folder before any worker
    starts (each worker reads it when it imports prometheus_client)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # figures of a previous run would be summed in
            stale.unlink()
        return
    folder = Path(tempfile.mkdtemp(prefix="cnnserve-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def _protocols() -> dict[str, Any]:
    """uvloop and httptools (bounded) when installed, as they are with uvicorn[standard]."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if HAVE_HTTPTOOLS:
        return {"loop": loop, "http": BoundedHttpToolsProtocol}
    return {"loop": loop, "http": "h11", "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


def serve(settings: Settings) -> None:
    """Serve until a signal; blocks."""
    configure_logging(settings.log_level, settings.log_format)
    settings = _sized(settings)
    protocols = _protocols()
    log.info(
        "serving with %d worker(s), %s and %s; per worker %d inference thread(s) and %d "
        "decode thread(s) on %d usable core(s)",
        settings.workers,
        protocols["loop"],
        "h11" if protocols["http"] == "h11" else "httptools",
        settings.intra_op_threads,
        settings.decode_threads,
        usable_cores(),
    )
    if settings.workers > 1:
        _multiprocess_metrics_dir()
        # Each worker process reads the same CNNSERVE_* environment.
        os.environ.update(
            {
                f"CNNSERVE_{k.upper()}": str(v)
                for k, v in settings.model_dump(exclude={"api_keys", "cors_origins"}).items()
            }
        )
        port = settings.port or _free_port(settings.host)  # one port for every worker
        status = supervise(
            _worker,
            (settings.host, port),
            count=settings.workers,
            stop_timeout_s=settings.drain_timeout_s + 10,
        )
        if status:
            raise SystemExit(status)
        return
    config = uvicorn.Config(_frozen_after_startup(create_app(settings)), **_options(settings))
    _DrainingServer(config).run()


def _options(settings: Settings) -> dict[str, Any]:
    return {
        **_protocols(),
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.drain_timeout_s) or None,
        "server_header": False,
        "proxy_headers": False,
    }


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket of this worker's own on ``host:port``, shared with the other workers by
    ``SO_REUSEPORT``: the kernel spreads new connections over the workers' sockets (one
    shared socket let the first worker to wake take them all). It listens once uvicorn
    serves, after the lifespan: a worker still loading its models gets no connections."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _worker(host: str, port: int) -> None:
    """One worker process (spawned by ``service.supervisor``): the app built from the
    CNNSERVE_* environment, served on its own socket, drained like a single process."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    sock = _listening_socket(host, port)
    config = uvicorn.Config(_frozen_after_startup(create_app(settings)), **_options(settings))
    _DrainingServer(config).run(sockets=[sock])
