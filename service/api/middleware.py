"""One pure-ASGI middleware for what every request needs before and after its endpoint.

In order: a request id (``X-Request-ID`` kept when sane, else generated, always returned);
API keys when configured (``Authorization: Bearer`` or ``X-API-Key``, compared in constant
time; the health probes, CORS preflights and the web page's static files are open); the
body size limit (from ``Content-Length`` up front, and counted while streaming); the
request deadline (``request_timeout_s`` from the request's arrival to the response's start:
reading the body, decoding, queueing and inference all count, and what is still running is
cancelled); a client that hangs up while its request waits cancels it the same way (its
images leave the batch queue: abandoned work must not hold capacity others need); security
headers; one structured access-log line and the request metrics.
Image bytes and keys are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.handlers import CLIENT_CLOSED, error_response
from service.api.state import AppState
from service.errors import BodyTooLargeError

__all__ = ["ServiceMiddleware"]

log = logging.getLogger("cnnserve.access")

OPEN_PATHS = frozenset(
    {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/", "/favicon.ico"}
)
OPEN_PREFIXES = ("/ui/",)
UNCOUNTED_PATHS = frozenset(
    {"/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
# Loading a model is control-plane work that finishes whatever the caller does: a deadline
# there would only tell the caller it failed while it goes on.
NO_DEADLINE_PREFIXES = ("/v2/repository/",)
# A request that has not answered this long after its body arrived starts listening for its
# client hanging up: quicker ones never pay for the listener (a task per request).
WATCH_AFTER_S = 0.05
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
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


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _presented_key(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-api-key")


def _preflight(scope: Scope) -> bool:
    """A CORS preflight: browsers send it without credentials, by the Fetch standard, so
    it cannot carry a key. CORSMiddleware answers it (or, with CORS off, the app's 405);
    it never reaches an endpoint."""
    return (
        scope["method"] == "OPTIONS"
        and _header(scope, b"origin") is not None
        and _header(scope, b"access-control-request-method") is not None
    )


def key_matches(presented: str | None, keys: Sequence[SecretStr]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    if not presented:
        return False
    given = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.get_secret_value().encode())
    return found


def _disarm(deadline: asyncio.Timeout) -> None:
    """Stop a deadline that is running; one not entered, expired or over is left alone."""
    with contextlib.suppress(RuntimeError):  # asyncio's word for "not running"
        deadline.reschedule(None)


class _ClientWatch:
    """The request's ``receive``, counting the body against the limit; once the body is in
    and the request has waited ``WATCH_AFTER_S``, a task listens for the client hanging up
    and, if it does before the response starts, expires the request's deadline: the app is
    cancelled where it waits (the batcher drops its queued images) and ``gone`` is set."""

    def __init__(self, receive: Receive, limit: int, deadline: asyncio.Timeout | None) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0
        self._deadline = deadline
        self._body_done = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        if deadline is not None:  # no deadline, nothing to cancel with (model loads)
            self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)
        self.responded = False
        self.gone = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise BodyTooLargeError(
                    f"the body exceeds the limit of {self._limit} bytes", limit=self._limit
                )
            if not message.get("more_body", False):
                self._body_done = True
                if self._timer is None and self._deadline is not None:
                    self._start()  # the wait was over before the body was in
        return message

    def _start(self) -> None:
        self._timer = None
        if self._body_done and self._task is None and not self.responded:
            self._task = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        # With the body read, the server's next message is the disconnect (which it also
        # sends once the response is complete: hence ``responded``).
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responded:
            assert self._deadline is not None
            self.gone = True
            with contextlib.suppress(RuntimeError):  # already expired or over
                self._deadline.reschedule(asyncio.get_running_loop().time())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        settings = self.state.settings
        control = scope["path"].startswith(NO_DEADLINE_PREFIXES)
        deadline = asyncio.timeout(None if control else settings.request_timeout_s)
        watch = _ClientWatch(receive, settings.max_body_bytes, None if control else deadline)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                watch.responded = True
                _disarm(deadline)  # a response that has started is not cut off
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                present = {name.lower() for name, _ in headers}
                # A response may set its own policy (the API docs page does): keep it.
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
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
                await self._within(deadline, scope, watch, send_wrapper)
                if watch.gone:
                    status["code"] = CLIENT_CLOSED
        finally:
            watch.close()
            if counted:
                metrics.inflight.dec()
            self._record(scope, status["code"], time.perf_counter() - started, request_id)

    def _refuse(self, scope: Scope) -> Any:
        """An error response to send instead of calling the app, or None."""
        request = Request(scope)
        keys = self.state.settings.api_keys
        path = scope["path"]
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or _preflight(scope)
        if keys and not open_path and not key_matches(_presented_key(scope), keys):
            return error_response(
                request,
                401,
                "unauthorized",
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        length = _header(scope, b"content-length")
        limit = self.state.settings.max_body_bytes
        if length is not None:
            if not length.isdigit():
                return error_response(
                    request, 400, "invalid_parameter", "Content-Length is not a number"
                )
            if int(length) > limit:
                return error_response(
                    request,
                    413,
                    "body_too_large",
                    f"the body is {length} bytes; the limit is {limit}",
                    {"limit": limit},
                )
        return None

    async def _within(
        self, deadline: asyncio.Timeout, scope: Scope, watch: _ClientWatch, send: Send
    ) -> None:
        """Run the app; past the deadline, cancel it and answer 504 ``deadline_exceeded``
        (or nothing, when the client has gone)."""
        try:
            async with deadline:
                await self.app(scope, watch.receive, send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own, not ours
            if watch.gone:
                return
            seconds = self.state.settings.request_timeout_s
            response = error_response(
                Request(scope),
                504,
                "deadline_exceeded",
                f"the request did not finish within {seconds:g} s",
                {"timeout_s": seconds},
            )
            await response(scope, watch.receive, send)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        model = scope.get("path_params", {}).get("name", "")
        if model and model not in self.state.repository.names():
            model = ""  # unknown names must not become label values (unbounded cardinality)
        self.state.metrics.requests.labels(endpoint, model, str(status)).inc()
        self.state.metrics.latency.labels(endpoint).observe(seconds)
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
