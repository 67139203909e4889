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
too, silently), through the bounded protocols of ``service.connections`` (head size and head
time per request).

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

import threadpoolctl
import uvicorn
from fastapi import FastAPI

from service.app import VERSION, create_app
from service.config import ANY_HOST, Settings, unknown_variables
from service.connections import HAVE_HTTPTOOLS, MAX_HEAD_BYTES, bounded_protocol
from service.logs import configure_logging
from service.runtime import usable_cores
from service.supervisor import supervise
from service.tracing import configure_tracing

__all__ = ["DRAIN_BACKSTOP_S", "serve"]

log = logging.getLogger(__name__)
# uvicorn's own limit on the drain, after ours: by then the middleware has answered every
# request still running (503 shutting_down); this only catches a response that cannot be
# written (a client that stopped reading).
DRAIN_BACKSTOP_S = 1.0
# Lists: the workers read them from the environment they inherit, as given.
_LIST_SETTINGS = {"api_keys", "admin_keys", "allowed_hosts", "cors_origins"}


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
    http = bounded_protocol(settings.head_timeout_s)
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
    for name, close in unknown_variables():
        hint = f"; did you mean {close}?" if close else ""
        log.warning("%s is not a cnnserve setting: ignored%s", name, hint)
    settings = _sized(settings).as_served()
    if settings.workers == 1:  # a worker process sets up its own
        configure_tracing(VERSION)
        _single_threaded_blas()
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


def _single_threaded_blas() -> None:
    """numpy's BLAS on one thread for the life of the process: the service's matrix products
    are small (a batch's out-of-distribution scores), and OpenBLAS's own threads would wait
    for cores ONNX Runtime and the decode pool already use (tens of milliseconds per product
    on a busy machine)."""
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


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
    configure_tracing(VERSION)
    _single_threaded_blas()
    sock = _listening_socket(host, port)
    config = uvicorn.Config(_frozen_after_startup(create_app(settings)), **_options(settings))
    _DrainingServer(config).run(sockets=[sock])
