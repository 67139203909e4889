"""Every error becomes one JSON shape: ``{"error": {...}}`` natively, ``{"error": "..."}`` on /v2.

Domain errors carry their own code; FastAPI's validation errors and Starlette's HTTP errors
are translated here, so no default ``{"detail": ...}`` body ever leaves the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.responses import JSON
from service.errors import ServiceError, status_for

__all__ = [
    "CLIENT_CLOSED",
    "call_endpoint",
    "error_response",
    "install_handlers",
    "service_error_response",
]

log = logging.getLogger(__name__)
# nginx's status for "the client closed the connection before the response": never sent (no
# one is listening), but it is what the access log and the request metrics record.
CLIENT_CLOSED = 499

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _is_v2(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    detail: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSON:
    """The error body of the API the request was made to."""
    body: dict[str, Any] = (
        {"error": message}
        if _is_v2(request)
        else {"error": {"code": code, "message": message, "detail": detail or {}}}
    )
    return JSON(body, status_code=status, headers=headers)


def service_error_response(
    request: Request, exc: ServiceError, headers: Mapping[str, str] | None = None
) -> JSON:
    """The response of a domain error: its status from ``status_for``, its code, message and
    detail, ``Retry-After`` when it has one, and any extra ``headers``."""
    extra = dict(headers or {})
    if exc.retry_after_s is not None:
        extra["Retry-After"] = str(exc.retry_after_s)
    return error_response(
        request, status_for(exc), exc.code, exc.message, exc.detail, extra or None
    )


async def _service_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, ServiceError)
    return service_error_response(request, exc)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc if part not in ("query", "path", "body"))


async def _validation_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"parameter": _location(e.get("loc", ())), "problem": e.get("msg", "")}
        for e in exc.errors()
    ]
    message = "; ".join(f"{p['parameter']}: {p['problem']}" for p in problems) or "invalid request"
    return error_response(request, 400, "invalid_parameter", message, {"errors": problems})


async def _http_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    return error_response(request, exc.status_code, code, message, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up (or its body broke off) while the body was being read: not a
    server error, so no traceback, and no 500 in the metrics."""
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.info("client disconnected before its request was read (request id %s)", request_id)
    return Response(status_code=CLIENT_CLOSED)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception("unhandled error (request id %s)", request_id)
    return error_response(
        request,
        500,
        "internal_error",
        f"internal error; quote request id {request_id} when reporting it",
        {"request_id": request_id},
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def _handler_for(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The handler installed for the closest class of ``exc``, short of ``Exception`` (whose
    handler is the server-error middleware's, as under Starlette); None if there is none."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


async def call_endpoint(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, responded: Callable[[], bool]
) -> None:
    """Serve a route's ASGI app as Starlette's router, exception and server-error middleware
    would: an error it raises before its response has started is answered by the handler
    the app has installed for it (``install_handlers``, looked up along the error's
    classes); an unexpected one by ``_unexpected``'s 500, and raised again for the server
    to log, as Starlette does. For a route served ahead of them (``ServiceMiddleware``)."""
    try:
        await app(scope, receive, send)
    except Exception as exc:
        if responded():
            raise
        handlers = scope["app"].exception_handlers
        handler = _handler_for(handlers, exc)
        request = Request(scope, receive)
        if handler is not None:
            response = await handler(request, exc)
            await response(scope, receive, send)
            return
        await (await _unexpected(request, exc))(scope, receive, send)
        raise
