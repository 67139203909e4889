"""Who may call what: the Host header, API keys, and the model repository's admin keys.

Checked by ``service.api.middleware`` before any route runs, in this order: the Host header
against ``Settings.host_names`` (DNS rebinding: 400 ``invalid_host``, probes included); the
model repository API (``/v2/repository/``) only with an admin key, and only when
CNNSERVE_ADMIN_KEYS is set (else 403 ``forbidden``), never with a CORS "simple" content type
(415); API keys when configured (``Authorization: Bearer`` or ``X-API-Key``, the raw header
bytes compared with each key's UTF-8 bytes in constant time; admin keys are accepted too; the
health probes, CORS preflights and the web page's static files are open).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.types import Scope

from service.config import ANY_HOST, Settings
from service.errors import (
    ForbiddenError,
    InvalidHostError,
    ServiceError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "OPEN_PATHS",
    "REPOSITORY_PREFIX",
    "AccessRules",
    "header",
    "host_name",
    "key_matches",
]

OPEN_PATHS = frozenset(
    {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/", "/favicon.ico"}
)
OPEN_PREFIXES = ("/ui/",)
REPOSITORY_PREFIX = "/v2/repository/"
# Content types a page on any site may POST without a CORS preflight: a browser would let
# it reach the repository API with no say from this server.
SIMPLE_CONTENT_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)


_HEADERS = "cnnserve.headers"


def _rawheader(scope: Scope, name: bytes) -> bytes | None:
    """The first ``name`` header (names lower-case, as ASGI gives them), from a dict of the
    request's headers built on the first lookup: a request's path looks up several."""
    headers = scope.get(_HEADERS)
    if headers is None:  # reversed: the first of a repeated header wins
        headers = scope[_HEADERS] = dict(reversed(scope["headers"]))
    value = headers.get(name)
    return None if value is None else bytes(value)


def header(scope: Scope, name: bytes) -> str | None:
    value = _rawheader(scope, name)
    return None if value is None else value.decode("latin-1")


def _presented_key(scope: Scope) -> bytes | None:
    """The key as sent: raw header bytes (a UTF-8 key arrives as its UTF-8 bytes)."""
    auth = _rawheader(scope, b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return _rawheader(scope, b"x-api-key")


def _preflight(scope: Scope) -> bool:
    """A CORS preflight: browsers send it without credentials, by the Fetch standard, so
    it cannot carry a key. CORSMiddleware answers it (or, with CORS off, the app's 405);
    it never reaches an endpoint."""
    return (
        scope["method"] == "OPTIONS"
        and _rawheader(scope, b"origin") is not None
        and _rawheader(scope, b"access-control-request-method") is not None
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


class AccessRules:
    """The checks above for one app's settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._host_names = settings.host_names

    def error(self, scope: Scope) -> ServiceError | None:
        """The domain error refusing this request, or None (sets
        ``scope["state"]["authenticated"]``: whether a key was needed and given)."""
        settings = self._settings
        path = scope["path"]
        if not self._host_allowed(scope):
            host = header(scope, b"host")
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
            media = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
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
        settings = self._settings
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
