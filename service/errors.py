"""Domain errors, and the one table that maps each to an HTTP status.

ServiceError                    code                    status
 +-- InvalidImageError          invalid_image           400
 +-- InvalidParameterError      invalid_parameter       400
 +-- UnknownLayerError          unknown_layer           400
 +-- InvalidHostError           invalid_host            400
 +-- UnauthorizedError          unauthorized            401
 +-- ForbiddenError             forbidden               403
 +-- ModelNotFoundError         model_not_found         404
 +-- ConflictError              conflict                409 (with Retry-After)
 +-- BodyTooLargeError          body_too_large          413
 +-- TooManyImagesError         too_many_images         413
 +-- ImageTooLargeError         image_too_large         413
 +-- UnsupportedMediaTypeError  unsupported_media_type  415
 +-- ModelUnavailableError      model_unavailable       503
 +-- OverloadedError            overloaded              503 (with Retry-After)
 +-- ShuttingDownError          shutting_down           503
 +-- DeadlineExceededError      deadline_exceeded       504

Nothing here imports FastAPI: the model, runtime and repository code raise these, and the
HTTP layer turns them into responses with ``status_for``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BodyTooLargeError",
    "ConflictError",
    "DeadlineExceededError",
    "ForbiddenError",
    "ImageTooLargeError",
    "InvalidHostError",
    "InvalidImageError",
    "InvalidParameterError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "OverloadedError",
    "ServiceError",
    "ShuttingDownError",
    "TooManyImagesError",
    "UnauthorizedError",
    "UnknownLayerError",
    "UnsupportedMediaTypeError",
    "status_for",
]


class ServiceError(Exception):
    """An error a client can act on: a stable ``code``, a message and structured detail.

    ``retry_after_s``, when not None, is sent as ``Retry-After``."""

    code: ClassVar[str] = "internal_error"
    retry_after_s: int | None = None

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidImageError(ServiceError):
    code = "invalid_image"


class InvalidParameterError(ServiceError):
    code = "invalid_parameter"


class UnknownLayerError(ServiceError):
    code = "unknown_layer"


class InvalidHostError(ServiceError):
    """The Host header names a host this server does not answer to (DNS rebinding)."""

    code = "invalid_host"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class ForbiddenError(ServiceError):
    """Refused whatever the credentials: the repository API without CNNSERVE_ADMIN_KEYS."""

    code = "forbidden"


class ModelNotFoundError(ServiceError):
    code = "model_not_found"


class BodyTooLargeError(ServiceError):
    code = "body_too_large"


class TooManyImagesError(ServiceError):
    code = "too_many_images"


class ImageTooLargeError(ServiceError):
    code = "image_too_large"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"


class ModelUnavailableError(ServiceError):
    code = "model_unavailable"


class ConflictError(ServiceError):
    """Another load or unload of the same model is running."""

    code = "conflict"

    def __init__(self, message: str, *, retry_after_s: int = 1, **detail: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **detail)
        self.retry_after_s = retry_after_s


class OverloadedError(ServiceError):
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1, **detail: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **detail)
        self.retry_after_s = retry_after_s


class ShuttingDownError(ServiceError):
    """The drain ended before the request did: retry it on another replica."""

    code = "shutting_down"


class DeadlineExceededError(ServiceError):
    code = "deadline_exceeded"


_STATUS: dict[type[ServiceError], int] = {
    InvalidImageError: 400,
    InvalidParameterError: 400,
    UnknownLayerError: 400,
    InvalidHostError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    ModelNotFoundError: 404,
    ConflictError: 409,
    BodyTooLargeError: 413,
    TooManyImagesError: 413,
    ImageTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    ModelUnavailableError: 503,
    OverloadedError: 503,
    ShuttingDownError: 503,
    DeadlineExceededError: 504,
}


def status_for(error: ServiceError) -> int:
    """The HTTP status of a domain error (500 for one the table does not know)."""
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500
