"""One pure-ASGI middleware for what every request needs before and after its endpoint.

In order: a request id (``X-Request-ID`` kept when sane, else generated, always returned);
the Host header against ``Settings.host_names`` (DNS rebinding: 400 ``invalid_host``, probes
included); the model repository API (``/v2/repository/``) only with an admin key, and only
when CNNSERVE_ADMIN_KEYS is set (else 403 ``forbidden``), never with a CORS "simple"
content type (415); API keys when configured (``Authorization: Bearer`` or ``X-API-Key``,
the raw header bytes compared with each key's UTF-8 bytes in constant time; admin keys are
accepted too; the health probes, CORS preflights and the web page's static files are open);
the body size limit (from ``Content-Length`` up front, and counted while streaming); the
request deadline (``request_timeout_s`` from the request's arrival to the response's start:
reading the body, decoding, queueing and inference all count, and what is still running is
cancelled; a repository request's deadline covers reading its body only: a model load then
finishes whatever the caller does); a client that hangs up while its request waits cancels
it the same way (its images leave the batch queue: abandoned work must not hold capacity
others need); from SIGTERM on, no request runs past the drain's end: one still running
then is answered 503 ``shutting_down`` with ``Connection: close``; security headers; one
structured access-log line and the request metrics.
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
from collections.abc import Callable, Sequence

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.handlers import CLIENT_CLOSED, service_error_response
from service.api.state import AppState
from service.config import ANY_HOST
from service.errors import (
    BodyTooLargeError,
    DeadlineExceededError,
    ForbiddenError,
    InvalidHostError,
    InvalidParameterError,
    ServiceError,
    ShuttingDownError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

__all__ = ["ServiceMiddleware", "host_name", "key_matches"]

log = logging.getLogger("cnnserve.access")

OPEN_PATHS = frozenset(
    {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/", "/favicon.ico"}
)
OPEN_PREFIXES = ("/ui/",)
UNCOUNTED_PATHS = frozenset(
    {"/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
REPOSITORY_PREFIX = "/v2/repository/"
# Content types a page on any site may POST without a CORS preflight: a browser would let
# it reach the repository API with no say from this server.
SIMPLE_CONTENT_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)
# A request that has not answered this long after its body arrived starts listening for its
# client hanging up: quicker ones never pay for the listener (a task per request).
WATCH_AFTER_S = 0.05
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


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    value = _raw_header(scope, name)
    return None if value is None else value.decode("latin-1")


def _presented_key(scope: Scope) -> bytes | None:
    """The key as sent: raw header bytes (a UTF-8 key arrives as its UTF-8 bytes)."""
    auth = _raw_header(scope, b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return _raw_header(scope, b"x-api-key")


def _preflight(scope: Scope) -> bool:
    """A CORS preflight: browsers send it without credentials, by the Fetch standard, so
    it cannot carry a key. CORSMiddleware answers it (or, with CORS off, the app's 405);
    it never reaches an endpoint."""
    return (
        scope["method"] == "OPTIONS"
        and _raw_header(scope, b"origin") is not None
        and _raw_header(scope, b"access-control-request-method") is not None
    )


def key_matches(presented: bytes | str | None, keys: Sequence[SecretStr]) -> bool:
    """Constant-time comparison of the presented bytes with every key's UTF-8 bytes (no
    early exit)."""
    if not presented:
        return False
    given = presented.encode() if isinstance(presented, str) else presented
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.get_secret_value().encode())
    return found


def host_name(value: bytes) -> str:
    """The host of a Host header, lower-cased, without its port or a trailing dot."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    if text.count(":") == 1:  # name:port (a bare v6 address has several colons)
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def _disarm(deadline: asyncio.Timeout) -> None:
    """Stop a deadline that is running; one not entered, expired or over is left alone."""
    with contextlib.suppress(RuntimeError):  # asyncio's word for "not running"
        deadline.reschedule(None)


class _ClientWatch:
    """The request's ``receive``, counting the body against the limit; once the body is in,
    ``on_body_done`` runs, and (``listen``) once the request has waited ``WATCH_AFTER_S`` a
    task listens for the client hanging up and, if it does before the response starts,
    expires the request's deadline: the app is cancelled where it waits (the batcher drops
    its queued images) and ``gone`` is set."""

    def __init__(
        self,
        receive: Receive,
        limit: int,
        deadline: asyncio.Timeout,
        *,
        listen: bool,
        on_body_done: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0
        self._deadline = deadline
        self._on_body_done = on_body_done
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        if listen:  # a model load finishes whatever the caller does: nothing to cancel
            self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)
        self._listen_later = listen
        self.body_done = False
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
                self.body_done = True
                if self._on_body_done is not None:
                    self._on_body_done()
                if self._timer is None and self._listen_later:
                    self._start()  # the wait was over before the body was in
        return message

    def _start(self) -> None:
        self._timer = None
        if self.body_done and self._task is None and not self.responded:
            self._task = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        # With the body read, the server's next message is the disconnect (which it also
        # sends once the response is complete: hence ``responded``).
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responded:
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
        # Requests between their deadline's start and their response's: what SIGTERM cuts.
        self._running: dict[asyncio.Timeout, _ClientWatch] = {}
        self._host_names = state.settings.host_names
        state.drain_listeners.append(self._cut_to_drain)

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
        deadline = asyncio.timeout_at(self._deadline_at())
        control = scope["path"].startswith(REPOSITORY_PREFIX)
        watch = _ClientWatch(
            receive,
            settings.max_body_bytes,
            deadline,
            listen=not control,
            # Only reading a control request's body has a deadline: the load runs on.
            on_body_done=(lambda: self._relax(deadline)) if control else None,
        )

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

    # -- deadlines and the drain -------------------------------------------------------

    def _deadline_at(self) -> float:
        """The event loop's time at which a request arriving now is cut: its own deadline,
        or the drain's end when that comes first."""
        at = asyncio.get_running_loop().time() + self.state.settings.request_timeout_s
        drain_end = self.state.drain_ends_at
        return at if drain_end is None else min(at, drain_end)

    def _relax(self, deadline: asyncio.Timeout) -> None:
        """A control request's body is in: no deadline but the drain's end."""
        with contextlib.suppress(RuntimeError):
            deadline.reschedule(self.state.drain_ends_at)

    def _cut_to_drain(self, drain_end: float) -> None:
        """SIGTERM: every request whose response has not started ends by ``drain_end``."""
        for deadline, watch in list(self._running.items()):
            when = deadline.when()
            if not watch.responded and (when is None or when > drain_end):
                with contextlib.suppress(RuntimeError):
                    deadline.reschedule(drain_end)

    def _drain_over(self) -> bool:
        drain_end = self.state.drain_ends_at
        return drain_end is not None and asyncio.get_running_loop().time() >= drain_end

    # -- refusals before the app -------------------------------------------------------

    def _refuse(self, scope: Scope) -> Response | None:
        """An error response to send instead of calling the app, or None."""
        error = self._access_error(scope)
        headers = None
        if isinstance(error, UnauthorizedError):
            headers = {"WWW-Authenticate": "Bearer"}
        if error is None:
            error = self._length_error(scope)
        return None if error is None else service_error_response(Request(scope), error, headers)

    def _access_error(self, scope: Scope) -> ServiceError | None:
        settings = self.state.settings
        path = scope["path"]
        if not self._host_allowed(scope):
            host = _header(scope, b"host")
            shown = "no Host header" if host is None else f"the host {host[:100]!r}"
            return InvalidHostError(
                f"this server does not answer to {shown}; CNNSERVE_ALLOWED_HOSTS lists the "
                "names it answers to",
                host=host[:100] if host is not None else None,
            )
        if path.startswith(REPOSITORY_PREFIX):
            if not settings.admin_keys:
                return ForbiddenError(
                    "the model repository API is off: set CNNSERVE_ADMIN_KEYS to turn it on "
                    "(its requests then need one of those keys)"
                )
            if _preflight(scope):
                return None
            if not key_matches(_presented_key(scope), settings.admin_keys):
                return UnauthorizedError(
                    "the model repository API needs an admin API key (one of CNNSERVE_ADMIN_KEYS, "
                    "as Authorization: Bearer <key> or X-API-Key)"
                )
            media = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if scope["method"] == "POST" and media in SIMPLE_CONTENT_TYPES:
                return UnsupportedMediaTypeError(
                    f"the model repository API takes application/json, not {media}",
                    content_type=media,
                )
            return None
        authenticated = not settings.api_keys or self._known_key(_presented_key(scope))
        scope["state"]["authenticated"] = authenticated
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or _preflight(scope)
        if not authenticated and not open_path:
            return UnauthorizedError(
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
            )
        return None

    def _known_key(self, presented: bytes | None) -> bool:
        settings = self.state.settings
        # Both lists, always: which one a key is in must not show in the time taken.
        inference = key_matches(presented, settings.api_keys)
        admin = key_matches(presented, settings.admin_keys)
        return inference or admin

    def _host_allowed(self, scope: Scope) -> bool:
        names = self._host_names
        if ANY_HOST in names:
            return True
        hosts = [value for key, value in scope["headers"] if key == b"host"]
        # None (HTTP/1.0) or several (which one would a proxy have used?): refused.
        return len(hosts) == 1 and host_name(hosts[0]) in names

    def _length_error(self, scope: Scope) -> ServiceError | None:
        length = _header(scope, b"content-length")
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

    async def _within(
        self, deadline: asyncio.Timeout, scope: Scope, watch: _ClientWatch, send: Send
    ) -> None:
        """Run the app; past the deadline, cancel it and answer 504 ``deadline_exceeded``
        (503 ``shutting_down`` at the drain's end; nothing when the client has gone)."""
        try:
            async with deadline:
                self._running[deadline] = watch
                try:
                    await self.app(scope, watch.receive, send)
                finally:
                    del self._running[deadline]
        except TimeoutError:
            if not deadline.expired():
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
