"""Turn the server's responses into result objects, or into the matching exception."""

from __future__ import annotations

import base64
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from cnn_client._results import (
    Classification,
    Explanation,
    FeatureMap,
    FeatureStats,
    HeatmapGrid,
    InputSpec,
    LayerInfo,
    ModelInfo,
    OutOfDistribution,
    Prediction,
    ReceptiveField,
)
from cnn_client.errors import (
    CnnServeError,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    ServerError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
)

__all__ = [
    "error_from_response",
    "json_body",
    "parse_classifications",
    "parse_explanation",
    "parse_feature_maps",
    "parse_model_info",
    "parse_models",
    "retry_after_seconds",
]

T = TypeVar("T")

_ERRORS_BY_STATUS: dict[int, type[CnnServeError]] = {
    400: InvalidInputError,
    401: UnauthorizedError,
    403: UnauthorizedError,
    404: NotFoundError,
    413: TooLargeError,
    415: InvalidInputError,
    422: InvalidInputError,
    503: UnavailableError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_from_response(response: httpx.Response) -> CnnServeError:
    """The exception for an error response, read from ``{"error": {code, message, detail}}``.

    Bodies of another shape (a proxy's HTML page, say) still give the right class, with the
    reason phrase as the code and the start of the body as the message.
    """
    status = response.status_code
    reason = response.reason_phrase or httpx.codes.get_reason_phrase(status) or "error"
    code = reason.lower().replace(" ", "_").replace("-", "_")
    message = response.text.strip()[:300] or reason
    detail: Mapping[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        if isinstance(error.get("detail"), dict):
            detail = error["detail"]
    cls = _ERRORS_BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else CnnServeError
    if cls is UnavailableError:
        return UnavailableError(
            message, code=code, detail=detail, retry_after=retry_after_seconds(response)
        )
    return cls(message, status=status, code=code, detail=detail)


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful response; raises the mapped error otherwise."""
    if not response.is_success:
        raise error_from_response(response)
    try:
        body = response.json()
    except ValueError:
        raise _invalid(response, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _invalid(response, "the body is not a JSON object")
    return body


def _invalid(response: httpx.Response, why: str) -> InvalidResponseError:
    return InvalidResponseError(
        f"unexpected response from {response.request.method} {response.request.url.path}: {why}",
        status=response.status_code,
        code="invalid_response",
    )


def _field(obj: Mapping[str, Any], key: str, kind: type[T], response: httpx.Response) -> T:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(response, f"{key!r} is missing or not a {kind.__name__}")
    return value


def _pair(value: Any, kind: type[int] | type[float]) -> tuple[Any, Any]:
    items = [kind(v) for v in value]
    if len(items) == 1:
        return (items[0], items[0])
    if len(items) != 2:
        raise ValueError(f"expected two values, got {len(items)}")
    return (items[0], items[1])


def _receptive_field(value: Any) -> ReceptiveField | None:
    if not isinstance(value, dict):
        return None
    try:
        return ReceptiveField(
            size=_pair(value["size"], int),
            jump=_pair(value["jump"], int),
            start=_pair(value.get("start", [0.0, 0.0]), float),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _input_spec(value: Any) -> InputSpec | None:
    if not isinstance(value, dict):
        return None
    resize = value.get("resize")
    return InputSpec(
        name=str(value.get("name", "")),
        shape=tuple(int(v) for v in value.get("shape") or ()),
        color_mode=str(value.get("color_mode", "")),
        size=tuple(int(v) for v in value.get("size") or ()),
        mean=tuple(float(v) for v in value.get("mean") or ()),
        std=tuple(float(v) for v in value.get("std") or ()),
        resize=resize if isinstance(resize, str) or resize is None else str(resize),
    )


def _layer(value: Any) -> LayerInfo:
    return LayerInfo(
        name=str(value["name"]),
        op_type=str(value.get("op_type", "")),
        output_shape=tuple(int(v) for v in value.get("output_shape") or ()),
        receptive_field=_receptive_field(value.get("receptive_field")),
    )


def parse_model_info(obj: Any, response: httpx.Response) -> ModelInfo:
    """One ModelInfo object; fields this client does not know are kept in ``raw``."""
    if not isinstance(obj, dict):
        raise _invalid(response, "a model is not a JSON object")
    try:
        description = obj.get("description")
        return ModelInfo(
            name=_field(obj, "name", str, response),
            versions=tuple(str(v) for v in obj.get("versions") or ()),
            state=str(obj.get("state", "unknown")),
            providers=tuple(str(p) for p in obj.get("providers") or ()),
            input=_input_spec(obj.get("input")),
            labels=tuple(str(label) for label in obj.get("labels") or ()),
            layers=tuple(_layer(layer) for layer in obj.get("layers") or ()),
            description=description if isinstance(description, str) else None,
            explanations=tuple(str(m) for m in obj.get("explanations") or ()),
            version=str(obj["version"]) if obj.get("version") is not None else None,
            precision=str(obj["precision"]) if obj.get("precision") is not None else None,
            raw=obj,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(response, f"model fields: {exc}") from None


def parse_models(response: httpx.Response) -> list[ModelInfo]:
    """The body of ``GET /v1/models``."""
    models = _field(json_body(response), "models", list, response)
    return [parse_model_info(model, response) for model in models]


def _number(value: Any, what: str) -> float:
    """A finite JSON number (not a bool), as a float; ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number: {value!r}")
    return float(value)


def _ood(value: Any) -> OutOfDistribution | None:
    """A result's ``ood`` object, checked field by field (absent or null: None)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"ood is not an object: {value!r}")
    threshold, flagged, method = value.get("threshold"), value.get("flagged"), value.get("method")
    if not isinstance(flagged, bool):
        raise ValueError(f"ood.flagged is not a bool: {flagged!r}")
    if not isinstance(method, str) or not method:
        raise ValueError(f"ood.method is not a method name: {method!r}")
    return OutOfDistribution(
        score=_number(value.get("score"), "ood.score"),
        threshold=None if threshold is None else _number(threshold, "ood.threshold"),
        flagged=flagged,
        method=method,
    )


def parse_classifications(response: httpx.Response, *, expected: int) -> list[Classification]:
    """The body of a classify call that uploaded ``expected`` images, in upload order."""
    body = json_body(response)
    model = str(body.get("model", ""))
    version = str(body.get("model_version", ""))
    results = _field(body, "results", list, response)
    if len(results) != expected:
        raise _invalid(response, f"{len(results)} results for {expected} images")
    try:
        return [
            Classification(
                predictions=tuple(
                    Prediction(
                        index=int(p["index"]),
                        label=str(p["label"]),
                        probability=float(p["probability"]),
                    )
                    for p in result["predictions"]
                ),
                model=model,
                model_version=version,
                filename=result.get("filename"),
                ood=_ood(result.get("ood")),
            )
            for result in results
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(response, f"result fields: {exc}") from None


def _feature_map(layer: Any, response: httpx.Response) -> FeatureMap:
    shape = tuple(int(v) for v in layer["shape"])
    data = base64.b64decode(layer["data"], validate=True)
    count = math.prod(shape)
    if len(data) != 4 * count:
        raise _invalid(response, f"layer {layer['name']!r}: {len(data)} bytes for shape {shape}")
    array = np.frombuffer(data, dtype="<f4").astype(np.float32, copy=False).reshape(shape)
    array.setflags(write=False)
    stats = layer.get("stats") or {}
    return FeatureMap(
        name=str(layer["name"]),
        op_type=str(layer.get("op_type", "")),
        array=array,
        receptive_field=_receptive_field(layer.get("receptive_field")),
        stats=FeatureStats(
            min=float(stats.get("min", np.nan)),
            max=float(stats.get("max", np.nan)),
            mean=float(stats.get("mean", np.nan)),
        ),
    )


def parse_feature_maps(response: httpx.Response) -> list[FeatureMap]:
    """The JSON body of a feature-maps call, one map per requested layer."""
    layers = _field(json_body(response), "layers", list, response)
    try:
        return [_feature_map(layer, response) for layer in layers]
    except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise _invalid(response, f"layer fields: {exc}") from None


def _grid(value: Any) -> HeatmapGrid:
    pairs = {key: _pair(value[key], float) for key in ("size", "jump", "start")}
    if not all(math.isfinite(v) for pair in pairs.values() for v in pair):
        raise ValueError(f"grid numbers must be finite: {value!r}")
    if min(pairs["jump"]) <= 0:
        raise ValueError(f"grid jump must be positive: {value['jump']!r}")
    return HeatmapGrid(**pairs)


def _heatmap(value: Any) -> npt.NDArray[np.float32]:
    rows, cols = (int(v) for v in value["shape"])
    values = value["values"]
    if not isinstance(values, list) or len(values) != rows:
        raise ValueError(f"heatmap values are not {rows} rows")
    if not all(isinstance(row, list) and len(row) == cols for row in values):
        raise ValueError(f"heatmap rows are not all {cols} values")
    array = np.array([[_number(v, "a heatmap value") for v in row] for row in values], np.float32)
    array = array.reshape(rows, cols)  # also for rows == 0, where np.array gives (0,)
    array.setflags(write=False)
    return array


def parse_explanation(response: httpx.Response) -> Explanation:
    """The JSON body of an explain call."""
    body = json_body(response)
    try:
        heatmap, target = body["heatmap"], body["target"]
        parameters = body.get("parameters") or {}
        return Explanation(
            model=_field(body, "model", str, response),
            model_version=str(body.get("model_version", "")),
            method=_field(body, "method", str, response),
            parameters={str(k): int(v) for k, v in parameters.items()},
            target=Prediction(
                index=int(target["index"]),
                label=str(target["label"]),
                probability=_number(target["probability"], "target.probability"),
            ),
            heatmap=_heatmap(heatmap),
            grid=_grid(heatmap["grid"]),
            cached=_field(body, "cached", bool, response),
            elapsed_ms=_number(body.get("elapsed_ms"), "elapsed_ms"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _invalid(response, f"explanation fields: {exc}") from None
