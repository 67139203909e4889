"""Domain errors, and the one table that maps each to an HTTP status.

ServiceError                    code                    status
 +-- InvalidImageError          invalid_image           400
 +-- InvalidParameterError      invalid_parameter       400
 +-- UnknownLayerError          unknown_layer           400
 +-- InvalidHostError           invalid_host            400
 +-- MethodNotSupportedError    method_not_supported    400
 +-- UnauthorizedError          unauthorized            401
 +-- ForbiddenError             forbidden               403
 +-- ModelNotFoundError         model_not_found         404
 +-- ConflictError              conflict                409 (with Retry-After)
 +-- BodyTooLargeError          body_too_large          413
 +-- TooManyImagesError         too_many_images         413
 +-- ImageTooLargeError         image_too_large         413
 +-- TooManyPixelsError         too_many_pixels         413
 +-- UnsupportedMediaTypeError  unsupported_media_type  415
 +-- ModelUnavailableError      model_unavailable       503
 |    +-- ModelRetiredError      model_unavailable       503 (its version was swapped out)
 +-- OverloadedError            overloaded              503 (with Retry-After)
 +-- ShuttingDownError          shutting_down           503
 +-- DeadlineExceededError      deadline_exceeded       504
 +-- ModelOutputError           model_error             500 (NaN or infinite scores)

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
    "MethodNotSupportedError",
    "ModelNotFoundError",
    "ModelOutputError",
    "ModelRetiredError",
    "ModelUnavailableError",
    "OverloadedError",
    "ServiceError",
    "ShuttingDownError",
    "TooManyImagesError",
    "TooManyPixelsError",
    "UnauthorizedError",
    "UnknownLayerError",
    "UnsupportedMediaTypeError",
    "codes_by_status",
    "status_for",
]


class ServiceError(Exception):
    """An error a client can act on: a stable ``code``, a message and structured detail.

    ``retry_after_s``, when not None, is sent as ``Retry-After``."""

    code: ClassVar[str] = "internal_error"
    default_retry_after_s: ClassVar[int | None] = None

    def __init__(self, message: str, *, retry_after_s: int | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s or self.default_retry_after_s
        if self.retry_after_s is not None:
            detail["retry_after_s"] = self.retry_after_s
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


class MethodNotSupportedError(ServiceError):
    """An explanation method this model cannot have (its graph lacks what it needs)."""

    code = "method_not_supported"


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


class TooManyPixelsError(ServiceError):
    """The images of one request hold more pixels in all than one request may."""

    code = "too_many_pixels"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"


class ModelUnavailableError(ServiceError):
    code = "model_unavailable"


class ModelRetiredError(ModelUnavailableError):
    """The version a request holds was swapped out (a reload) before its images queued: the
    data plane retries on the version serving now."""


class ConflictError(ServiceError):
    """Another load or unload of the same model is running."""

    code = "conflict"
    default_retry_after_s = 1


class OverloadedError(ServiceError):
    code = "overloaded"
    default_retry_after_s = 1


class ShuttingDownError(ServiceError):
    """The drain ended before the request did: retry it on another replica."""

    code = "shutting_down"


class DeadlineExceededError(ServiceError):
    code = "deadline_exceeded"


class ModelOutputError(ServiceError):
    """The model gave NaN or infinite scores for valid input: never served as probabilities."""

    code = "model_error"


_STATUS: dict[type[ServiceError], int] = {
    InvalidImageError: 400,
    InvalidParameterError: 400,
    UnknownLayerError: 400,
    InvalidHostError: 400,
    MethodNotSupportedError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    ModelNotFoundError: 404,
    ConflictError: 409,
    BodyTooLargeError: 413,
    TooManyImagesError: 413,
    ImageTooLargeError: 413,
    TooManyPixelsError: 413,
    UnsupportedMediaTypeError: 415,
    ModelUnavailableError: 503,
    OverloadedError: 503,
    ShuttingDownError: 503,
    DeadlineExceededError: 504,
    ModelOutputError: 500,
}


def codes_by_status() -> dict[int, list[str]]:
    """Each status the table maps to, with the codes of its errors (for the API's documents)."""
    codes: dict[int, list[str]] = {}
    for error, status in _STATUS.items():
        if error.code not in codes.setdefault(status, []):
            codes[status].append(error.code)
    return codes


def status_for(error: ServiceError) -> int:
    """The HTTP status of a domain error (500 for one the table does not know)."""
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500
