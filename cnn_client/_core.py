"""The sans-IO core shared by Client and AsyncClient.

Each API call is an *operation*: a generator that yields what it needs done, an
``httpx.Request`` to send or a :class:`Sleep` to wait, and is sent back the
``httpx.Response`` (or ``None`` after a sleep). Retries, chunking, request building and
response parsing all live here; the clients only drive operations with real I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

try:  # the caller's trace, when its application uses OpenTelemetry
    from opentelemetry import propagate
except ImportError:  # pragma: no cover - not installed: no trace headers
    propagate = None  # type: ignore[assignment]

from cnn_client._images import ImageInput, Upload, to_upload
from cnn_client._parse import (
    error_from_response,
    json_body,
    parse_classifications,
    parse_explanation,
    parse_feature_maps,
    parse_model_info,
    parse_models,
    retry_after_seconds,
)
from cnn_client._results import Classification, Explanation, FeatureMap, ModelInfo
from cnn_client.errors import (
    CnnServeConnectionError,
    CnnServeError,
    CnnServeTimeoutError,
    InvalidResponseError,
    TooLargeError,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "ClientCore",
    "ExplainQuery",
    "Operation",
    "Sleep",
    "Target",
    "transport_error",
]

logger = logging.getLogger("cnn_client")

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_RETRIES: Final = 3
DEFAULT_BACKOFF: Final = 0.5
DEFAULT_IMAGES_PER_REQUEST: Final = 64
# No server may make the client wait longer than this between two attempts.
MAX_RETRY_DELAY: Final = 60.0
_LIMIT_KEYS = ("limit", "max_images", "max_images_per_request", "max", "maximum")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Target: TypeAlias = int | str | None
"""A class index, a label, or None for the model's top class."""


@dataclass(frozen=True)
class ExplainQuery:
    """What an explain call asks for besides the image and the model (None: the default)."""

    method: str
    target: Target
    window: int | None
    stride: int | None
    version: str | int | None


@dataclass(frozen=True)
class Sleep:
    """Wait this long before the next request (a retry's backoff)."""

    seconds: float


Step: TypeAlias = httpx.Request | Sleep
Operation: TypeAlias = Generator[Step, httpx.Response | None, T]


def transport_error(exc: httpx.HTTPError, request: httpx.Request) -> CnnServeError:
    """The client's own exception for an httpx error raised while sending ``request``."""
    where = f"{request.method} {request.url}"
    if isinstance(exc, httpx.TimeoutException):
        return CnnServeTimeoutError(f"timed out: {where}", code="timeout")
    if isinstance(exc, httpx.TransportError):
        reason = str(exc) or type(exc).__name__
        return CnnServeConnectionError(
            f"could not reach the server: {where}: {reason}", code="connection_error"
        )
    return InvalidResponseError(f"unreadable response: {where}: {exc}", code="invalid_response")


def _png_body(response: httpx.Response, what: str) -> bytes:
    """The PNG a successful response carries; the mapped error otherwise."""
    if not response.is_success:
        raise error_from_response(response)
    if not response.content.startswith(_PNG_SIGNATURE):
        raise InvalidResponseError(
            f"expected a PNG image from {what}",
            status=response.status_code,
            code="invalid_response",
        )
    return response.content


def _target_param(target: Target) -> str | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, int | str):
        raise TypeError(f"target must be a class index or label, not {type(target).__name__}")
    return str(target)


def _limit_from(error: TooLargeError) -> int | None:
    for key in _LIMIT_KEYS:
        value = error.detail.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class ClientCore:
    """Builds requests for one server and turns responses into results or errors."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None,
        api_key: str | None,
        retries: int,
        backoff: float,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid base_url {base_url!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.base_url = str(url.copy_with(query=None, fragment=None)).rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.images_per_request = DEFAULT_IMAGES_PER_REQUEST
        self._timeout = httpx.Timeout(timeout).as_dict()
        self._headers = {"accept": "application/json", "user-agent": "cnnserve-client"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    # Requests -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        uploads: Sequence[Upload] = (),
    ) -> httpx.Request:
        """A complete request, its body already in memory so that retries can resend it.
        With OpenTelemetry installed and a span current, it carries the W3C ``traceparent``
        (and ``tracestate``): the server's spans join the caller's trace."""
        files = [("file", upload.as_file()) for upload in uploads] or None
        headers = self._headers
        if propagate is not None:
            headers = dict(headers)
            propagate.inject(headers)
        request = httpx.Request(
            method,
            self.base_url + path,
            params=tuple(params or ()),
            files=files,
            headers=headers,
            extensions={"timeout": self._timeout},
        )
        request.read()
        return request

    @staticmethod
    def _model_path(name: str, suffix: str = "") -> str:
        return f"/v1/models/{quote(name, safe='')}{suffix}"

    @staticmethod
    def _params(version: str | int | None, **values: Any) -> list[tuple[str, str]]:
        params = [(key, str(value)) for key, value in values.items() if value is not None]
        if version is not None:
            params.append(("version", str(version)))
        return params

    # Retries --------------------------------------------------------------------------

    def retry_delay(self, attempt: int, response: httpx.Response) -> float:
        """Seconds before retry number ``attempt + 1``: Retry-After, else exponential."""
        delay = retry_after_seconds(response)
        if delay is None:
            delay = self.backoff * 2**attempt
        return min(delay, MAX_RETRY_DELAY)

    def exchange(
        self, request: httpx.Request, *, retry: bool = True
    ) -> Generator[Step, httpx.Response | None, httpx.Response]:
        """Send ``request``; on 503, wait and send it again, up to ``retries`` times."""
        attempt = 0
        while True:
            response = yield request
            if response is None:
                raise RuntimeError("an operation was resumed without the response it needs")
            if not retry or response.status_code != 503 or attempt >= self.retries:
                return response
            delay = self.retry_delay(attempt, response)
            logger.info(
                "%s %s: 503, retry %d of %d in %.2fs",
                request.method,
                request.url.path,
                attempt + 1,
                self.retries,
                delay,
            )
            yield Sleep(delay)
            attempt += 1

    # Operations -----------------------------------------------------------------------

    def _health(self, path: str) -> Operation[bool]:
        response = yield from self.exchange(self.request("GET", path), retry=False)
        if response.status_code == 200:
            return True
        if response.status_code == 503:
            return False
        raise error_from_response(response)

    def live(self) -> Operation[bool]:
        return self._health("/health/live")

    def ready(self) -> Operation[bool]:
        return self._health("/health/ready")

    def models(self) -> Operation[list[ModelInfo]]:
        response = yield from self.exchange(self.request("GET", "/v1/models"))
        return parse_models(response)

    def model(self, name: str, *, version: str | int | None) -> Operation[ModelInfo]:
        request = self.request("GET", self._model_path(name), params=self._params(version))
        response = yield from self.exchange(request)
        return parse_model_info(json_body(response), response)

    def classify_many(
        self,
        images: Sequence[ImageInput],
        *,
        model: str,
        top_k: int,
        version: str | int | None,
        calibrated: bool = True,
    ) -> Operation[list[Classification]]:
        """Classify in as few requests as the server's per-request image limit allows.

        ``calibrated=False`` asks for the raw softmax; the default sends nothing, so that a
        server older than calibration sees the request it knows.
        """
        uploads = [to_upload(image, index) for index, image in enumerate(images)]
        path = self._model_path(model, "/classify")
        params = self._params(version, top_k=top_k, calibrated=None if calibrated else "false")
        results: list[Classification] = []
        start = 0
        while start < len(uploads):
            chunk = uploads[start : start + self.images_per_request]
            request = self.request("POST", path, params=params, uploads=chunk)
            response = yield from self.exchange(request)
            if response.status_code == 413 and len(chunk) > 1:
                error = error_from_response(response)
                if isinstance(error, TooLargeError) and error.code == "too_many_images":
                    limit = _limit_from(error)
                    # Without a usable limit from the server, halve the chunk and try again.
                    self.images_per_request = (
                        limit if limit is not None and limit < len(chunk) else len(chunk) // 2
                    )
                    logger.info("server takes %d images per request", self.images_per_request)
                    continue
            results.extend(parse_classifications(response, expected=len(chunk)))
            start += len(chunk)
        return results

    def classify(
        self,
        image: ImageInput,
        *,
        model: str,
        top_k: int,
        version: str | int | None,
        calibrated: bool = True,
    ) -> Operation[Classification]:
        results = yield from self.classify_many(
            [image], model=model, top_k=top_k, version=version, calibrated=calibrated
        )
        return results[0]

    def feature_maps(
        self,
        image: ImageInput,
        *,
        model: str,
        layers: str | Sequence[str],
        version: str | int | None,
    ) -> Operation[list[FeatureMap]]:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("name at least one layer")
        params = [("layer", name) for name in names] + self._params(version, format="json")
        request = self.request(
            "POST",
            self._model_path(model, "/feature-maps"),
            params=params,
            uploads=[to_upload(image)],
        )
        response = yield from self.exchange(request)
        return parse_feature_maps(response)

    def feature_map_png(
        self, image: ImageInput, *, model: str, layer: str, version: str | int | None
    ) -> Operation[bytes]:
        params = [("layer", layer), *self._params(version, format="png")]
        request = self.request(
            "POST",
            self._model_path(model, "/feature-maps"),
            params=params,
            uploads=[to_upload(image)],
        )
        response = yield from self.exchange(request)
        return _png_body(response, "feature-maps?format=png")

    def _explain_request(
        self, image: ImageInput, model: str, query: ExplainQuery, format: str
    ) -> httpx.Request:
        params = self._params(
            query.version,
            method=query.method,
            target=_target_param(query.target),
            window=query.window,
            stride=query.stride,
            format=format,
        )
        path = self._model_path(model, "/explain")
        return self.request("POST", path, params=params, uploads=[to_upload(image)])

    def explain(
        self, image: ImageInput, *, model: str, query: ExplainQuery
    ) -> Operation[Explanation]:
        response = yield from self.exchange(self._explain_request(image, model, query, "json"))
        return parse_explanation(response)

    def explanation_png(
        self, image: ImageInput, *, model: str, query: ExplainQuery
    ) -> Operation[bytes]:
        response = yield from self.exchange(self._explain_request(image, model, query, "png"))
        return _png_body(response, "explain?format=png")
