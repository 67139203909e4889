"""The exceptions the client raises; nothing from httpx ever escapes.

Every error carries what the server said: ``.status`` (the HTTP status, ``None`` when no
response came back), ``.code`` (the machine-readable ``error.code`` of the body, such as
``model_not_found``), ``.message`` and ``.detail`` (``error.detail``, a dict, maybe empty)::

    CnnServeError
    +-- NotFoundError              404: unknown model, version or route
    +-- InvalidInputError          400, 415, 422: bad image, parameter, layer or method
    +-- TooLargeError              413: body, image count or image size over a limit
    +-- UnauthorizedError          401, 403: missing or wrong API key
    +-- ServerError                any other 5xx
    |   +-- UnavailableError       503: not ready or overloaded (retried with backoff first)
    +-- CnnServeConnectionError    no response: refused, reset, DNS, TLS...
    |   +-- CnnServeTimeoutError   no response in time
    +-- InvalidResponseError       a response the client cannot read (not the documented shape)

``.code`` tells errors of one class apart: an InvalidInputError is ``invalid_image``,
``invalid_parameter``, ``unknown_layer`` or ``method_not_supported`` (an explanation method
the model cannot have; ``.detail["supported"]`` lists those it can), among others.

Other 4xx statuses raise :class:`CnnServeError` itself. Mistakes made before anything is
sent (an image of an unsupported type, a missing file) raise the usual ``TypeError``,
``ValueError`` and ``OSError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CnnServeConnectionError",
    "CnnServeError",
    "CnnServeTimeoutError",
    "InvalidInputError",
    "InvalidResponseError",
    "NotFoundError",
    "ServerError",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
]


class CnnServeError(Exception):
    """The root of every error the client raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail: dict[str, Any] = dict(detail or {})

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r})"
        )


class NotFoundError(CnnServeError):
    """404: the model, version or route does not exist."""


class InvalidInputError(CnnServeError):
    """400, 415 or 422: the server rejected the image, a parameter or a method."""


class TooLargeError(CnnServeError):
    """413: the body, the number of images or one image is over the server's limit."""


class UnauthorizedError(CnnServeError):
    """401 or 403: the API key is missing or not accepted."""


class ServerError(CnnServeError):
    """5xx: the server failed."""


class UnavailableError(ServerError):
    """503: a model is not ready or the server is overloaded, after every retry.

    ``retry_after`` is the server's last ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 503,
        code: str = "unavailable",
        detail: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, detail=detail)
        self.retry_after = retry_after


class CnnServeConnectionError(CnnServeError):
    """No response: the connection was refused, reset or never made."""


class CnnServeTimeoutError(CnnServeConnectionError):
    """No response within the client's timeout."""


class InvalidResponseError(CnnServeError):
    """The server answered, but not in the documented shape."""
