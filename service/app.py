"""``create_app(settings)``: the FastAPI app, its middleware, routers and lifespan.

Models are loaded and warmed in ``lifespan``, off the event loop, before the server takes
traffic; nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.telemetry import TelemetryConfig
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from service import __name__ as _package
from service import tracing
from service.api import explain, health, models, v2
from service.api.docs import install_docs
from service.api.handlers import install_handlers
from service.api.middleware import UNCOUNTED_PATHS, ServiceMiddleware
from service.api.openapi import install_openapi
from service.api.state import AppState
from service.config import Settings
from service.dataplane import DataPlane
from service.explainer import Explainer
from service.memory import return_large_buffers
from service.metrics import Metrics
from service.repository import BatchingConfig, ModelRepository
from service.runtime import SessionConfig
from service.v2.plane import V2Plane

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
VERSION = "0.1.0"


def _build_state(settings: Settings) -> AppState:
    return_large_buffers()
    metrics = Metrics()
    repository = ModelRepository(
        settings.model_dir,
        session=SessionConfig(
            settings.providers, settings.intra_op_threads, settings.inter_op_threads
        ),
        batching=BatchingConfig(
            settings.max_batch_size, settings.max_queue_delay_ms / 1000, settings.queue_capacity
        ),
        observer=metrics.batch_observer,
        # No request holds a model version past its deadline: a swapped-out one is
        # released by then at the latest.
        release_timeout_s=settings.request_timeout_s + 1.0,
    )
    metrics.watch(repository)
    threads = settings.decode_threads or min(8, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    dataplane = DataPlane(settings, repository, metrics, executor)
    explainer = Explainer(dataplane, metrics, cache_bytes=settings.explain_cache_bytes)
    return AppState(settings, dataplane, metrics, V2Plane(dataplane, settings), explainer)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.cnnserve
    await asyncio.to_thread(state.repository.load_all)
    state.loading = False
    ready = [e.name for e in state.repository.entries() if e.state.value == "ready"]
    log.info("serving %d model(s): %s", len(ready), ", ".join(ready) or "none")
    try:
        yield
    finally:
        state.draining = True
        state.repository.close()
        state.dataplane.executor.shutdown(wait=False, cancel_futures=True)
        state.metrics.close()


def _telemetry(untraced: frozenset[str], traced: bool) -> TelemetryConfig:
    """FastAPI's own telemetry settings: its server span per request is the request's span
    (the caller's W3C context honoured, OpenTelemetry's HTTP attributes), without spans per
    dependency; ``untraced`` paths (probes, scrapes) get none. Its metrics and logs stay
    off: Prometheus and the JSON log have them. Off unless ``traced`` (``configure_tracing``
    ran first and turned tracing on): then a request does not even ask whether it is on."""
    return {
        "tracing": traced,
        "operation_spans": False,
        "metrics": False,
        "logs": False,
        "auto_configure": False,
        "exclude": lambda scope: scope.get("path") in untraced,
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: from CNNSERVE_* environment variables)."""
    settings = settings or Settings()
    app = _Service(
        title="cnnserve",
        version=VERSION,
        summary="CNN inference over HTTP with ONNX Runtime: classification, feature maps, "
        "receptive fields, and the Open Inference Protocol.",
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=_telemetry(UNCOUNTED_PATHS, tracing.enabled()),
    )
    state = _build_state(settings)
    app.state.cnnserve = state
    install_handlers(app)
    install_docs(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(explain.router)
    app.include_router(v2.router)
    app.router.routes.insert(0, models.CLASSIFY_ROUTE)
    install_openapi(app)
    if (STATIC_DIR / "index.html").is_file():
        app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html")

    log.debug("%s app built for %s", _package, settings.model_dir)
    return app


class _Service(FastAPI):
    """FastAPI with cnnserve's middleware outside its own layers: ``ServiceMiddleware``
    (and, when configured, CORS, outermost, so that even a 401 or 413 from the service
    middleware carries the headers a browser needs to show it, and preflights need no key)
    wraps FastAPI's error, telemetry and body-limit middleware. So the hot path it serves
    directly (classify) passes through none of them, and a 500 from the server-error
    middleware carries the request id and security headers like every other answer."""

    def build_middleware_stack(self) -> ASGIApp:
        state: AppState = self.state.cnnserve
        app: ASGIApp = ServiceMiddleware(
            super().build_middleware_stack(), state=state, direct=[models.CLASSIFY_ROUTE]
        )
        if state.settings.cors_origins:
            app = CORSMiddleware(
                app,
                allow_origins=state.settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=[
                    *("Authorization", "X-API-Key", "Content-Type", "X-Request-ID"),
                    *("traceparent", "tracestate"),  # a traced web page's context
                ],
            )
        return app


def create_app_from_env() -> FastAPI:
    """The factory uvicorn's workers call (``service.app:create_app_from_env``)."""
    return create_app(Settings())
