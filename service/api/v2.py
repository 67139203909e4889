"""The Open Inference Protocol (KServe V2) over REST: HTTP mapped onto ``service.v2.plane``.

Health, server and model metadata, and inference with JSON or binary tensors (Triton's
``binary_tensor_data`` extension), plus Triton's ``classification``, ``model_repository``
and ``model_configuration`` extensions, so Triton's and KServe's clients work unchanged.
Everything the protocol means lives in ``service.v2``; this module reads paths, headers and
bodies, and writes responses. An ``/infer`` body is read up to what the model can take
(``V2Plane.body_limit``) and no further.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from service.api.openapi import error_responses
from service.api.responses import JSON
from service.api.state import AppState, State
from service.api.uploads import read_body
from service.errors import InvalidParameterError, ModelNotFoundError
from service.repository import ModelEntry, ModelState
from service.v2.plane import EXTENSIONS
from service.v2.schemas import (
    LoadResponse,
    ModelConfig,
    ModelMetadata,
    ModelReady,
    RepositoryModel,
    ServerLive,
    ServerMetadata,
    ServerReady,
    UnloadResponse,
    V2Error,
)
from service.v2.wire import parse_json_object

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
Version = Annotated[str, Path(pattern=r"^[0-9]{1,9}$", description="a model version")]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(*statuses, v2=True)


# -- health and metadata -----------------------------------------------------------------


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata(request: Request) -> JSON:
    return JSON({"name": "cnnserve", "version": request.app.version, "extensions": EXTENSIONS})


@router.get("/health/live", response_model=ServerLive, summary="Liveness")
async def server_live() -> JSON:
    return JSON({"live": True})


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Readiness: 200 when ready, 400 (the protocol's 4xx) when not",
    responses={400: {"model": ServerReady}},
)
async def server_ready(state: State) -> JSON:
    ready = state.status == "ready"
    return JSON({"ready": ready}, status_code=200 if ready else 400)


def _model_ready(state: AppState, name: str, version: str | None) -> JSON:
    entry = state.repository.entry(name)
    if version is not None and version not in entry.version_names:
        raise ModelNotFoundError(f"model {name} has no version {version!r}", model=name)
    ready = entry.ready(version)
    return JSON({"name": name, "ready": ready}, status_code=200 if ready else 400)


@router.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    summary="Model readiness",
    responses={400: {"model": ModelReady}, **_errors(404)},
)
async def model_ready(state: State, name: str) -> JSON:
    return _model_ready(state, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    summary="Model version readiness",
    responses={
        400: {
            "model": ModelReady | V2Error,
            "description": 'not ready ({"name", "ready": false}), or a malformed version '
            '({"error": "..."})',
        },
        **_errors(404),
    },
)
async def model_version_ready(state: State, name: str, version: Version) -> JSON:
    return _model_ready(state, name, version)


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata",
    responses=_errors(400, 404, 503),
)
async def model_metadata(state: State, name: str) -> JSON:
    return JSON(state.v2.metadata(name, None).model_dump())


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model version metadata",
    responses=_errors(400, 404, 503),
)
async def model_version_metadata(state: State, name: str, version: Version) -> JSON:
    return JSON(state.v2.metadata(name, version).model_dump())


@router.get(
    "/models/{name}/config",
    response_model=ModelConfig,
    summary="Model configuration (Triton's model_configuration extension)",
    responses=_errors(400, 404, 503),
)
async def model_config(state: State, name: str) -> JSON:
    return JSON(state.v2.config(name, None).model_dump(exclude_none=True))


@router.get(
    "/models/{name}/versions/{version}/config",
    response_model=ModelConfig,
    summary="Model version configuration",
    responses=_errors(400, 404, 503),
)
async def model_version_config(state: State, name: str, version: Version) -> JSON:
    return JSON(state.v2.config(name, version).model_dump(exclude_none=True))


# -- inference ---------------------------------------------------------------------------


async def _infer(request: Request, state: AppState, name: str, version: str | None) -> Response:
    model = state.dataplane.model(name, version)  # unknown or unavailable: before the body
    body = await read_body(request, limit=state.v2.body_limit(model))
    content, header_length = await state.v2.infer(
        model,
        version,
        body,
        encoding=request.headers.get("content-encoding"),
        header_length=request.headers.get(HEADER_LENGTH),
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "description": "The inference request as JSON, optionally followed by binary tensor "
        f"data; then the {HEADER_LENGTH} header gives the size of the JSON part.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/models/{name}/infer",
    summary="Inference (JSON or binary tensors)",
    responses=_errors(400, 404, 413, 503, 504),
    openapi_extra=_INFER_DOC,
)
async def infer(request: Request, state: State, name: str) -> Response:
    return await _infer(request, state, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a given version",
    responses=_errors(400, 404, 413, 503, 504),
    openapi_extra=_INFER_DOC,
)
async def infer_version(request: Request, state: State, name: str, version: Version) -> Response:
    return await _infer(request, state, name, version)


# -- model repository --------------------------------------------------------------------
# Only with an admin key, and only when CNNSERVE_ADMIN_KEYS is set: the middleware refuses
# everything else under /v2/repository/ (401, 403, 415) before these run.
_REFUSALS = (401, 403, 415)


def _index_rows(entry: ModelEntry | None, name: str) -> list[RepositoryModel]:
    if entry is None:
        return [RepositoryModel(name=name, state="UNAVAILABLE", reason="not loaded")]
    if not entry.version_names:
        return [RepositoryModel(name=name, state=entry.state.value.upper(), reason=entry.reason)]
    rows = []
    for version in entry.version_names:
        if entry.state is ModelState.LOADING:
            row = RepositoryModel(name=name, version=version, state="LOADING")
        elif version in entry.versions:
            row = RepositoryModel(name=name, version=version, state="READY")
        else:
            reason = entry.failed_versions.get(version)
            row = RepositoryModel(name=name, version=version, state="UNAVAILABLE", reason=reason)
        rows.append(row)
    return rows


@router.post(
    "/repository/index",
    response_model=list[RepositoryModel],
    summary="Every model in the model directory, loaded or not, with its state",
    responses=_errors(400, *_REFUSALS),
)
async def repository_index(request: Request, state: State) -> JSON:
    options = parse_json_object(await request.body(), "the index request")
    ready_only = options.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidParameterError("ready must be true or false")
    loaded = {entry.name: entry for entry in state.repository.entries()}
    names = sorted(set(loaded) | set(state.repository.names_on_disk()))
    rows = [row for n in names for row in _index_rows(loaded.get(n), n)]
    if ready_only:
        rows = [row for row in rows if row.state == "READY"]
    return JSON([row.model_dump(exclude_none=True) for row in rows])


@router.post(
    "/repository/models/{name}/load",
    response_model=LoadResponse,
    summary="Load or reload a model from its folder; the old versions drain, then are freed",
    description="One load or unload per model at a time (409 `conflict` with Retry-After "
    "while one runs); loads of different models run one after another.",
    responses=_errors(400, 404, 409, *_REFUSALS),
)
async def repository_load(request: Request, state: State, name: str) -> JSON:
    options = parse_json_object(await request.body(), "the load request")
    params = options.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidParameterError("parameters must be a JSON object")
    if "config" in params or any(str(key).startswith("file:") for key in params):
        raise InvalidParameterError(
            "config and file overrides are not supported: models load from their folder "
            "in the model directory"
        )
    # Only direct subfolders of the model directory, by exact name: no path ever reaches disk.
    if name not in state.repository.names_on_disk():
        raise ModelNotFoundError(
            f"no model folder named {name!r} in the model repository", model=name
        )
    # As Triton does: a reload that fails leaves the serving versions serving.
    load = functools.partial(state.repository.load, name, keep_serving=True)
    entry = await asyncio.to_thread(load)
    if entry.state is not ModelState.READY:
        raise InvalidParameterError(f"failed to load {name!r}: {entry.reason}")
    return JSON({"name": name, "load": True})


@router.post(
    "/repository/models/{name}/unload",
    response_model=UnloadResponse,
    summary="Unload a model; requests already running finish",
    responses=_errors(400, 404, 409, *_REFUSALS),
)
async def repository_unload(request: Request, state: State, name: str) -> JSON:
    parse_json_object(await request.body(), "the unload request")
    state.repository.unload(name)  # model_not_found when it is not loaded
    return JSON({"name": name, "unload": True})
