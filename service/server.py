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
too, silently), through subclasses of uvicorn's protocols that bound what a connection may
hold before its request even starts: a request's head (request line and headers) to
``MAX_HEAD_BYTES`` (431 past it, then close: httptools itself buffers an unfinished header
of any length), counted per request, so pipelined requests each get the whole limit; and
the time to send it to ``head_timeout_s``, from its first byte (a new connection: from
connect), else 408 and close. Without those, half-sent heads held their sockets forever and
a few hundred of them used up the process's file descriptors.

On SIGTERM the drain's clock starts (``AppState.begin_drain``): requests in flight get until
``drain_timeout_s`` from then, and one still running at its end is answered 503
``shutting_down`` by the middleware, so uvicorn's own limit (``DRAIN_BACKSTOP_S`` later)
finds nothing left to cancel.

Threads are sized from the cores this process may run on (its CPU affinity: ``taskset`` and
container CPU sets count, ``os.cpu_count()`` does not), shared among the workers. Once the
models are loaded, everything allocated so far is frozen out of the garbage collector's
generations (``gc.freeze``): a full collection walked those objects (ONNX graphs, routes,
model cards) every few thousand requests, and that pause was the p99 at concurrency 32.
"""

from __future__ import annotations

import asyncio
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

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.app import create_app
from service.config import ANY_HOST, Settings
from service.logs import configure_logging
from service.runtime import usable_cores
from service.supervisor import supervise

__all__ = ["MAX_HEAD_BYTES", "serve"]

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; nginx's default allows 4 x 8 KiB
# Lists: the workers read them from the environment they inherit, as given.
_LIST_SETTINGS = {"api_keys", "admin_keys", "allowed_hosts", "cors_origins"}

# While a request's head is arriving, bytes go to httptools in slices of at most this much:
# the head's size is then known to within one slice, even where the request before it ended
# inside the same read (pipelining).
HEAD_SLICE_BYTES = 4096
# uvicorn's own limit on the drain, after ours: by then the middleware has answered every
# request still running (503 shutting_down); this only catches a response that cannot be
# written (a client that stopped reading).
DRAIN_BACKSTOP_S = 1.0

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, which has a limit of its own
    HAVE_HTTPTOOLS = False
else:
    HAVE_HTTPTOOLS = True


def _plain_response(status: bytes, message: str) -> bytes:
    """A whole HTTP response that closes the connection: below the app, as uvicorn's own
    400 for unparsable requests is."""
    body = message.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


class _HeadDeadline:
    """The head timer both protocols share: ``_head_expired`` runs ``head_timeout_s`` after
    ``_start_head_timer`` unless ``_stop_head_timer`` comes first."""

    head_timeout_s: float = 10.0  # set per server by ``_protocols``
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _head_timer: asyncio.TimerHandle | None = None

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._on_head_timer)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timer(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._head_expired()

    def _head_expired(self) -> None:
        raise NotImplementedError

    def _time_out_head(self, received: bool) -> None:
        """408 when part of a head came (a client that sent nothing gets nothing), then
        close."""
        if received:
            message = (
                f"the request line and headers did not arrive within {self.head_timeout_s:g} s"
            )
            self.transport.write(_plain_response(b"408 Request Timeout", message))
        self.transport.close()


if HAVE_HTTPTOOLS:

    def _body_length(headers: list[tuple[bytes, bytes]]) -> int | None:
        """Bytes of body after the head: from Content-Length, 0 without one; None when
        chunked (or unclear), where only the parser knows where the body ends."""
        length = 0
        for name, value in headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                if not value.strip().isdigit():
                    return None
                length = int(value)
        return length

    class BoundedHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing (431, then closing) a request whose head
        grows past ``MAX_HEAD_BYTES`` before it ends, instead of buffering it, and timing
        out (408, then closing) one whose head takes longer than ``head_timeout_s``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes: int | None = 0  # of the head arriving; None within a body
            self._body_left: int | None = None  # None: unknown (chunked)
            # In the slice being fed: a message began (and has not completed since); one
            # completed.
            self._began = self._completed = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            # From connect: uvicorn's keep-alive timeout only runs after a response.
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._stop_head_timer()
            self._head_bytes, self._body_left = None, _body_length(self.headers)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._body_left is not None:
                self._body_left -= len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes, self._body_left = 0, None
            self._began, self._completed = False, True

        def data_received(self, data: bytes) -> None:
            view = memoryview(data)
            start = 0
            while start < len(view):
                in_head = self._head_bytes is not None
                if self._head_bytes is not None:  # one byte past the limit tells
                    size = min(HEAD_SLICE_BYTES, MAX_HEAD_BYTES - self._head_bytes + 1)
                else:  # a body: the rest of it at once, when its length is known
                    size = self._body_left or HEAD_SLICE_BYTES
                piece = view[start : start + size]
                start += len(piece)
                self._began = self._completed = False
                super().data_received(piece)  # type: ignore[arg-type]
                if self.transport.is_closing() or self.transport.get_protocol() is not self:
                    return  # refused, or handed to another protocol (an upgrade)
                if self._head_bytes is None:
                    continue
                if self._began:  # the head began inside the piece: at most all of it
                    self._head_bytes = len(piece)
                elif in_head and not self._completed:
                    self._head_bytes += len(piece)
                if self._head_bytes:
                    self._start_head_timer()
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse_head()
                    return

        def _head_expired(self) -> None:
            if self._head_bytes is None:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined head, unfinished while a response is being made: that
                # response goes out, then the connection closes.
                self.cycle.keep_alive = False
                return
            self._time_out_head(received=self._head_bytes > 0)

        def _refuse_head(self) -> None:
            message = f"request line and headers over {MAX_HEAD_BYTES} bytes"
            self.transport.write(_plain_response(b"431 Request Header Fields Too Large", message))
            self.transport.close()


class BoundedH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol (used without httptools) with the same head timeout; h11
    bounds the head's size itself (``h11_max_incomplete_event_size``), per request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()  # a pipelined head may be waiting, unfinished

    def _head_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _watch_head(self) -> None:
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()  # the head is in (the request is being served)
        elif self._head_pending() and not self.transport.is_closing():
            self._start_head_timer()

    def _head_expired(self) -> None:
        if self.conn.their_state is h11.IDLE:
            self._time_out_head(received=self._head_pending())


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
            app_state.draining = True  # readiness says 503 from now on
            log.info(
                "received %s: draining (not ready; finishing requests in flight, for at most %g s)",
                signal.Signals(sig).name,
                app_state.settings.drain_timeout_s,
            )
            with contextlib.suppress(RuntimeError):  # no loop running yet: nothing in flight
                # A signal handler may not touch the loop's state: ask the loop to.
                asyncio.get_running_loop().call_soon_threadsafe(app_state.begin_drain)
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


def _protocols(settings: Settings) -> dict[str, Any]:
    """uvloop and httptools (bounded) when installed, as they are with uvicorn[standard];
    else asyncio and h11 (bounded)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    base: type[_HeadDeadline] = BoundedHttpToolsProtocol if HAVE_HTTPTOOLS else BoundedH11Protocol
    # A subclass per server: uvicorn builds a protocol per connection from its class alone.
    http = type(base.__name__, (base,), {"head_timeout_s": settings.head_timeout_s})
    return {"loop": loop, "http": http, "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


def _log_access(settings: Settings) -> None:
    """Once, at start-up: who may call what (how many keys, never a key)."""
    hosts = settings.host_names
    inference = f"keys required ({len(settings.api_keys)})" if settings.api_keys else "open"
    repository = (
        f"on ({len(settings.admin_keys)} admin key(s))"
        if settings.admin_keys
        else "off (set CNNSERVE_ADMIN_KEYS to turn it on)"
    )
    allowed = "any" if ANY_HOST in hosts else ", ".join(sorted(hosts))
    log.info(
        "inference API: %s; model repository API: %s; Host names answered: %s",
        inference,
        repository,
        allowed,
        extra={
            "inference_auth": bool(settings.api_keys),
            "inference_keys": len(settings.api_keys),
            "repository_api": bool(settings.admin_keys),
            "admin_key_count": len(settings.admin_keys),
            "allowed_hosts": sorted(hosts),
        },
    )


def serve(settings: Settings) -> None:
    """Serve until a signal; blocks."""
    configure_logging(settings.log_level, settings.log_format)
    settings = _sized(settings).as_served()
    protocols = _protocols(settings)
    log.info(
        "serving with %d worker(s), %s and %s; per worker %d inference thread(s) and %d "
        "decode thread(s) on %d usable core(s)",
        settings.workers,
        protocols["loop"],
        "httptools" if HAVE_HTTPTOOLS else "h11",
        settings.intra_op_threads,
        settings.decode_threads,
        usable_cores(),
    )
    _log_access(settings)
    if settings.workers > 1:
        _multiprocess_metrics_dir()
        # Each worker process reads the same CNNSERVE_* environment.
        os.environ.update(
            {
                f"CNNSERVE_{k.upper()}": str(v)
                for k, v in settings.model_dump(exclude=_LIST_SETTINGS).items()
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
        **_protocols(settings),
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        # A float, as it is: 0.5 s is 0.5 s (int() made it 0, which uvicorn reads as "wait
        # for ever", and a stalled client then kept the process alive).
        "timeout_graceful_shutdown": settings.drain_timeout_s + DRAIN_BACKSTOP_S,
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
    settings = Settings().as_served()
    configure_logging(settings.log_level, settings.log_format)
    sock = _listening_socket(host, port)
    config = uvicorn.Config(_frozen_after_startup(create_app(settings)), **_options(settings))
    _DrainingServer(config).run(sockets=[sock])
