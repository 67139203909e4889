"""Run the app under uvicorn with a graceful drain.

On SIGTERM or SIGINT readiness turns 503 at once (``AppState.draining``), uvicorn stops
accepting connections, requests in flight get up to ``drain_timeout_s`` to finish, and the
process exits 0. With ``workers > 1`` uvicorn's supervisor runs that many processes, each
building its own app from the environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from service.app import create_app
from service.config import Settings
from service.logs import configure_logging

__all__ = ["serve"]

log = logging.getLogger(__name__)


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


def serve(settings: Settings) -> None:
    """Serve until a signal; blocks."""
    configure_logging(settings.log_level, settings.log_format)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.drain_timeout_s) or None,
        "server_header": False,
        "proxy_headers": False,
    }
    if settings.workers > 1:
        # Each worker process reads the same CNNSERVE_* environment.
        os.environ.update(
            {
                f"CNNSERVE_{k.upper()}": str(v)
                for k, v in settings.model_dump(exclude={"api_keys", "cors_origins"}).items()
            }
        )
        uvicorn.run(
            "service.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
        return
    config = uvicorn.Config(create_app(settings), **common)
    _DrainingServer(config).run()
