"""One pure-ASGI middleware for what every request needs before and after its endpoint.

In order: a request id (``X-Request-ID`` kept when sane, else generated, always returned);
who may call what (``service.api.access``: the Host header, API keys, admin keys for the
model repository); the body size limit (from ``Content-Length`` up front, and counted while
streaming); the request deadline (``request_timeout_s`` from the request's arrival to the
response's start: reading the body, decoding, queueing and inference all count, and what is
still running is cancelled (``service.api.watch``: one timer per event loop keeps every deadline
and client watch); a repository request's deadline covers reading its body only: a
model load then finishes whatever the caller does); a client that hangs up while its request
waits cancels it the same way (its images leave the batch queue: abandoned work must not
hold capacity others need); from SIGTERM on, no request runs past the drain's end: one still
running then is answered 503 ``shutting_down`` with ``Connection: close``; security headers;
one structured access-log line and the request metrics.
Image bytes and keys are never logged.

It wraps FastAPI's own middleware (``service.app._Service``). A ``direct`` route (the hot
path: classify, a raw ASGI endpoint) is served from here, past all of FastAPI's and
Starlette's layers: it is called as the router would, its errors answered by the same
handlers (``call_endpoint``); docs/performance.md measures what that saves. A traced
request takes the router, which names its span.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.api.access import REPOSITORY_PREFIX, AccessRules, header
from service.api.handlers import CLIENT_CLOSED, call_endpoint, service_error_response
from service.api.state import AppState
from service.api.watch import RequestWatch, Running
from service.errors import (
    BodyTooLargeError,
    DeadlineExceededError,
    InvalidParameterError,
    ServiceError,
    ShuttingDownError,
    UnauthorizedError,
)

__all__ = ["ServiceMiddleware"]

log = logging.getLogger("cnnserve.access")

UNCOUNTED_PATHS = frozenset(
    {"/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CLOSE = {"Connection": "close"}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
]
_SECURITY_NAMES = frozenset(name for name, _ in _SECURITY_HEADERS)


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, state: AppState, direct: Sequence[Route] = ()) -> None:
        self.app = app
        self.state = state
        self._direct = tuple(direct)
        # Generated request ids: 32 hex digits, a random prefix per process (each worker
        # builds its own app) and a counter: unique without a uuid4's system call.
        self._id_prefix = os.urandom(10).hex()
        self._ids = itertools.count(1)
        # Requests between their deadline's start and their response's: what SIGTERM cuts.
        self._running = Running()
        self._access = AccessRules(state.settings)
        state.drain_listeners.append(self._cut_to_drain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = header(scope, b"x-request-id")
        if given and _REQUEST_ID.match(given):
            request_id = given
        else:
            request_id = f"{self._id_prefix}{next(self._ids):012x}"
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        settings = self.state.settings
        control = scope["path"].startswith(REPOSITORY_PREFIX)
        watch = RequestWatch(
            receive,
            settings.max_body_bytes,
            at=self._deadline_at(),
            listen=not control,
            # Only reading a control request's body has a deadline: the load runs on.
            on_body_done=(lambda: self._relax(watch)) if control else None,
        )

        # The request's span is FastAPI's (``service.app._telemetry``); its trace id goes
        # back to the caller. (It ends as the response does: attributes are set before.)
        trace_id = tracing.trace_id()
        tracing.annotate(request_id=request_id)

        extra = [(b"x-request-id", request_id.encode())]
        if trace_id:
            extra.append((b"x-trace-id", trace_id.encode()))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                watch.respond()  # a response that has started is not cut off
                status["code"] = message["status"]
                headers = [*message.get("headers", ()), *extra]
                # A response may set its own policy (the API docs page does): keep it.
                if any(name.lower() in _SECURITY_NAMES for name, _ in headers):
                    present = {name.lower() for name, _ in headers}
                    headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
                else:
                    headers.extend(_SECURITY_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        metrics = self.state.metrics
        # Probes and scrapes are not load: the autoscaler reads this gauge.
        counted = scope["path"] not in UNCOUNTED_PATHS
        if counted:
            metrics.inflight.inc()
        try:
            refusal = self._refuse(scope)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
            else:
                await self._within(scope, watch, send_wrapper)
                if watch.gone:
                    status["code"] = CLIENT_CLOSED
        finally:
            watch.close()
            if counted:
                metrics.inflight.dec()
            self._record(scope, status["code"], time.perf_counter() - started, request_id)

    # -- deadlines and the drain -------------------------------------------------------

    def _deadline_at(self) -> float:
        """The event loop's time at which a request arriving now is cut: its own deadline,
        or the drain's end when that comes first."""
        at = asyncio.get_running_loop().time() + self.state.settings.request_timeout_s
        drain_end = self.state.drain_ends_at
        return at if drain_end is None else min(at, drain_end)

    def _relax(self, watch: RequestWatch) -> None:
        """A control request's body is in: no deadline but the drain's end."""
        drain_end = self.state.drain_ends_at
        watch.move(math.inf if drain_end is None else drain_end)

    def _cut_to_drain(self, drain_end: float) -> None:
        """SIGTERM: every request whose response has not started ends by ``drain_end``."""
        for watch in self._running:
            if not watch.responded and watch.at > drain_end:
                watch.move(drain_end)

    def _drain_over(self) -> bool:
        drain_end = self.state.drain_ends_at
        return drain_end is not None and asyncio.get_running_loop().time() >= drain_end

    # -- refusals before the app -------------------------------------------------------

    def _refuse(self, scope: Scope) -> Response | None:
        """An error response to send instead of calling the app, or None."""
        error = self._access.error(scope)
        headers = None
        if isinstance(error, UnauthorizedError):
            headers = {"WWW-Authenticate": "Bearer"}
        if error is None:
            error = self._length_error(scope)
        return None if error is None else service_error_response(Request(scope), error, headers)

    def _length_error(self, scope: Scope) -> ServiceError | None:
        length = header(scope, b"content-length")
        limit = self.state.settings.max_body_bytes
        if length is None:
            return None
        if not length.isdigit():
            return InvalidParameterError("Content-Length is not a number")
        if int(length) > limit:
            return BodyTooLargeError(
                f"the body is {length} bytes; the limit is {limit}", limit=limit
            )
        return None

    async def _within(self, scope: Scope, watch: RequestWatch, send: Send) -> None:
        """Run the app; past the deadline, cancel it and answer 504 ``deadline_exceeded``
        (503 ``shutting_down`` at the drain's end; nothing when the client has gone)."""
        try:
            async with watch:
                self._running.add(watch)
                try:
                    route = self._direct_route(scope)
                    if route is None:
                        await self.app(scope, watch.receive, send)
                    else:
                        await call_endpoint(
                            route.endpoint,
                            scope,
                            watch.receive,
                            send,
                            responded=lambda: watch.responded,
                        )
                finally:
                    self._running.remove(watch)
        except TimeoutError:
            if not watch.expired:
                raise  # the app's own, not ours
            if watch.gone:
                return
            error: ServiceError
            if self._drain_over():
                seconds = self.state.settings.drain_timeout_s
                error = ShuttingDownError(
                    f"the server is shutting down and the request did not finish within its "
                    f"drain ({seconds:g} s); retry it",
                    drain_timeout_s=seconds,
                )
            else:
                seconds = self.state.settings.request_timeout_s
                error = DeadlineExceededError(
                    f"the request did not finish within {seconds:g} s", timeout_s=seconds
                )
            # A body not read to its end would be read as the next request: close instead.
            close = isinstance(error, ShuttingDownError) or not watch.body_done
            response = service_error_response(Request(scope), error, _CLOSE if close else None)
            await response(scope, watch.receive, send)

    def _direct_route(self, scope: Scope) -> Route | None:
        """The direct route that takes this request whole (path and method), with its path
        parameters put in ``scope`` as the router would; None for every other request, and
        for a traced one (FastAPI's telemetry names the request's span after the route the
        router selects)."""
        if scope.get("fastapi.telemetry") is not None:
            return None
        for route in self._direct:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                return route
        return None

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        """The request's metrics and access-log line."""
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        model = scope.get("path_params", {}).get("name", "")
        if model and not self.state.repository.known(model):
            model = ""  # unknown names must not become label values (unbounded cardinality)
        metrics = self.state.metrics
        metrics.child(metrics.requests, endpoint, model, str(status)).inc()
        metrics.child(metrics.latency, endpoint).observe(seconds)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "model": model or None,
                },
            )
