"""The native API: model metadata, classification and feature maps under /v1/models."""

from __future__ import annotations

import base64
import functools
import io
import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.openapi import CLASSIFY_PATH, IMAGE_BODY, Version, error_responses
from service.api.responses import JSON, send_json
from service.api.schemas import (
    FeatureMapResponse,
    InputInfo,
    LayerInfo,
    ModelInfo,
    ModelList,
    ReceptiveFieldInfo,
)
from service.api.state import AppState, State
from service.api.uploads import read_uploads, receive_images
from service.dataplane import FeatureMap
from service.errors import InvalidParameterError
from service.explainer import supported_methods
from service.repository import ModelEntry, ModelVersion
from service.visualize import feature_grid_png

__all__ = ["CLASSIFY_ROUTE", "ClassifyEndpoint", "model_info", "router"]

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_info(entry: ModelEntry, version: str | None = None) -> ModelInfo:
    """ModelInfo of ``version`` (default: the served default) of a repository entry."""
    card = entry.card
    info: dict[str, Any] = {
        "name": entry.name,
        "versions": entry.version_names,
        "state": entry.state.value,
        "reason": entry.reason,
        "providers": [],
    }
    if card is not None:
        info |= {
            "description": card.description,
            "labels": card.labels,
            "output": card.output.model_dump(),
            "architecture": card.architecture,
            "dataset": card.dataset,
            "parameters": card.parameters,
            "metrics": card.metrics,
        }
    wanted = version or entry.default
    info["version"] = wanted
    served = entry.versions.get(wanted or "")
    if served is None:
        if wanted in entry.failed_versions:
            info |= {"state": "unavailable", "reason": entry.failed_versions[wanted or ""]}
        return ModelInfo(**info)
    runtime = served.runtime
    spec = runtime.card.input
    info |= {
        "providers": list(runtime.placement.providers),
        "device": runtime.placement.device,
        "fallback_reason": runtime.placement.fallback_reason,
        "input": InputInfo(
            name=runtime.input.name,
            shape=runtime.input_shape,
            color_mode=spec.color_mode,
            size=list(spec.size),
            layout=spec.layout,
            datatype="FP32" if spec.dtype == "float32" else "UINT8",
            mean=None if spec.mean is None else list(spec.mean),
            std=None if spec.std is None else list(spec.std),
            resize=spec.resize,
            resize_shorter=spec.resize_shorter,
        ),
        "explanations": supported_methods(served),
        **_version_facts(served),
        "layers": [
            LayerInfo(
                name=layer.name,
                op_type=layer.op_type,
                output_shape=[-1 if d is None else d for d in layer.output_shape],
                receptive_field=ReceptiveFieldInfo(**layer.receptive_field.to_json())
                if layer.receptive_field
                else None,
            )
            for layer in runtime.layers
        ],
    }
    return ModelInfo(**info)


def _version_facts(served: ModelVersion) -> dict[str, Any]:
    """What ModelInfo says of a version's precision, calibration and out-of-distribution
    statistics: model.json's facts (the fitting's details left out) and what is applied."""
    facts = served.runtime.card.version_facts(served.version)
    trust = served.runtime.trust
    calibration = {"temperature": trust.temperature, "fitted": facts.calibration is not None}
    if facts.calibration:
        calibration |= {k: v for k, v in facts.calibration.items() if k in ("ece", "nll")}
    detector = trust.detector
    ood: dict[str, Any] = {
        "method": "msp" if trust.kind == "probabilities" and not detector.fitted else detector.name,
        "fitted": detector.fitted,
    }
    if facts.ood:
        ood |= {k: v for k, v in facts.ood.items() if k not in ("selection", "command", "file")}
    return {"precision": facts.precision, "calibration": calibration, "ood": ood}


@router.get(
    "",
    response_model=ModelList,
    summary="Every model in the repository",
    responses=error_responses(401),
)
async def list_models(state: State) -> JSON:
    infos = [model_info(entry).model_dump() for entry in state.repository.entries()]
    return JSON({"models": infos})


@router.get(
    "/{name}",
    response_model=ModelInfo,
    summary="One model: input, labels, layers",
    responses=error_responses(400, 401, 404),
)
async def get_model(state: State, name: str, version: Version = None) -> JSON:
    entry = state.repository.entry(name)
    if version is not None and version not in entry.version_names:
        entry.get(version)  # raises model_not_found naming the versions there are
    return JSON(model_info(entry, version).model_dump())


_VERSION = re.compile(r"^[0-9]{1,9}$")
_INTEGER = re.compile(r"^\s*[+-]?[0-9]{1,18}\s*$")
# What FastAPI's validation takes for a boolean query parameter.
_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "on", "t", "y"), True),
    **dict.fromkeys(("false", "0", "no", "off", "f", "n"), False),
}


def _parameter_error(parameter: str, problem: str) -> InvalidParameterError:
    """A bad query parameter, in the shape and words of FastAPI's validation errors on the
    other routes (service.api.handlers)."""
    return InvalidParameterError(
        f"{parameter}: {problem}", errors=[{"parameter": parameter, "problem": problem}]
    )


def _query(scope: Scope) -> dict[str, str]:
    """The query parameters, the last of a repeated one winning (as Starlette's)."""
    raw = scope["query_string"]
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


class ClassifyEndpoint:
    """POST /v1/models/{name}/classify as a raw ASGI app: the hot path, without FastAPI's
    dependency injection and validation or Starlette's request and response objects
    (docs/performance.md measures it). Its three query parameters are checked here, in the
    words of FastAPI's validation; service.api.openapi documents it. A domain error is
    raised, as from any route, for the app's handlers to answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = CLASSIFY_ROUTE  # the endpoint label of the request metrics, errors too
        query = _query(scope)
        version = query.get("version")
        if version is not None and not _VERSION.match(version):
            raise _parameter_error("version", f"String should match pattern '{_VERSION.pattern}'")
        top_k = query.get("top_k", "5")
        if not _INTEGER.match(top_k):
            raise _parameter_error(
                "top_k", "Input should be a valid integer, unable to parse string as an integer"
            )
        calibrated = _BOOLEANS.get(query.get("calibrated", "true").strip().lower())
        if calibrated is None:
            raise _parameter_error(
                "calibrated", "Input should be a valid boolean, unable to interpret input"
            )
        state: AppState = scope["app"].state.cnnserve
        name = scope["path_params"]["name"]
        model = state.dataplane.model(name, version)  # unknown or unavailable: before the body
        images = await receive_images(
            scope, receive, max_images=state.settings.max_images_per_request
        )
        served, results = await state.dataplane.classify(
            model, images, k=int(top_k), version=version, calibrated=calibrated
        )
        body = {"model": name, "model_version": served.version, "results": results}
        await send_json(send, body)


def _layer_json(fmap: FeatureMap) -> dict[str, Any]:
    array = fmap.array.astype("<f4", copy=False)
    rf = fmap.layer.receptive_field
    return {
        "name": fmap.layer.name,
        "op_type": fmap.layer.op_type,
        "shape": list(array.shape),
        "receptive_field": rf.to_json() if rf else None,
        "stats": {
            "min": float(array.min()),
            "max": float(array.max()),
            "mean": float(array.mean()),
        },
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype("<f4", copy=False))
    return buffer.getvalue()


@router.post(
    "/{name}/feature-maps",
    response_model=FeatureMapResponse,
    summary="The activations of any layer for one image, with its receptive field",
    description="`layer` is repeatable for JSON; `png` (a tiled, colour-mapped grid of the "
    "channels) and `npy` (numpy's format, C x H x W float32) take exactly one layer.",
    responses={
        **error_responses(400, 401, 404, 413, 415, 503, 504),
        200: {"content": {"image/png": {}, "application/x-npy": {}}},
    },
    openapi_extra=IMAGE_BODY,
)
async def feature_maps(
    request: Request,
    state: State,
    name: str,
    version: Version = None,
    layer: Annotated[list[str], Query(description="layer name; repeatable")] = [],  # noqa: B006
    format: Annotated[Literal["json", "png", "npy"], Query()] = "json",
) -> Response:
    model = state.dataplane.model(name, version)
    layers = state.dataplane.resolve_layers(model, layer)
    if format != "json" and len(layers) != 1:
        raise InvalidParameterError(
            f"format={format} takes exactly one layer, got {len(layers)}", parameter="layer"
        )
    limit = state.settings.max_response_bytes
    _check_response_size(state.dataplane.activation_bytes(layers), format, limit)
    uploads = await read_uploads(request, max_images=1)
    maps = await state.dataplane.feature_maps(model, uploads[0].data, layers)
    _check_response_size(sum(m.array.nbytes for m in maps), format, limit)
    headers = {"X-Model-Version": model.version}
    if format == "png":
        png = await state.dataplane.run_in_pool(functools.partial(feature_grid_png, maps[0].array))
        return Response(png, media_type="image/png", headers=headers)
    if format == "npy":
        return Response(_npy(maps[0].array), media_type="application/x-npy", headers=headers)
    layers_json = await state.dataplane.run_in_pool(lambda: [_layer_json(m) for m in maps])
    body = {"model": name, "model_version": model.version, "layers": layers_json}
    return JSON(body, headers=headers)


def _check_response_size(activation_bytes: int | None, format: str, limit: int) -> None:
    """Refuse a feature-map request whose response would pass ``limit`` bytes (JSON carries
    the activations in base64: 4/3 of their bytes; a PNG grid is at most 2048 pixels wide)."""
    if activation_bytes is None or format == "png":
        return
    size = activation_bytes * 4 // 3 if format == "json" else activation_bytes
    if size > limit:
        raise InvalidParameterError(
            f"the layers asked for make a response of about {size} bytes; the limit is "
            f"{limit} (CNNSERVE_MAX_RESPONSE_BYTES): ask for fewer or later layers",
            parameter="layer",
            response_bytes=size,
            limit=limit,
        )


# Documented by service.api.openapi (a Starlette route is not in FastAPI's document).
CLASSIFY_ROUTE = Route(CLASSIFY_PATH, ClassifyEndpoint(), methods=["POST"], include_in_schema=False)
