"""The Open Inference Protocol (KServe V2) over REST, on the same data plane as /v1.

Health, server and model metadata, and inference with JSON or binary tensors (Triton's
``binary_tensor_data`` extension), plus Triton's ``classification``, ``model_repository``
and ``model_configuration`` extensions, so Triton's and KServe's clients work unchanged.
Tensors are read and written by ``service.v2codec``; inference goes through
``DataPlane.infer`` and the model's batcher, exactly as the native API's does.

The batch (dimension 0 of the input) may be 1 to ``max_images_per_request`` (64 by default,
the ``max_batch_size`` of the exported ``config.pbtxt``), and a tensor may hold at most
``max_body_bytes`` elements (one byte each is the densest a body can carry), which is
checked before anything is allocated.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
import onnxruntime as ort
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from service.api.health import health_report
from service.api.responses import JSON
from service.api.state import AppState, State
from service.api.v2_schemas import (
    LoadResponse,
    MetadataTensor,
    ModelConfig,
    ModelConfigTensor,
    ModelMetadata,
    ModelReady,
    RepositoryModel,
    ServerLive,
    ServerMetadata,
    ServerReady,
    UnloadResponse,
    V2Error,
)
from service.errors import InvalidParameterError, ModelNotFoundError, ModelUnavailableError
from service.repository import ModelEntry, ModelState, ModelVersion
from service.runtime import ModelRuntime
from service.v2binding import TensorSpec, bind_input, classification, select_outputs
from service.v2codec import (
    InferRequest,
    OutputTensor,
    RequestedOutput,
    decode_body,
    decode_request,
    encode_response,
    parse_json_object,
)

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["v2"])

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration"]
HEADER_LENGTH = "Inference-Header-Content-Length"
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

Version = Annotated[str, Path(pattern=r"^[0-9]{1,9}$", description="a model version")]
T = TypeVar("T")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2Error} for status in statuses}


def _spec(node: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, _ORT_TYPES.get(node.type, node.type), shape)


def _specs(runtime: ModelRuntime) -> tuple[TensorSpec, list[TensorSpec]]:
    """The model's input and its outputs (the runtime serves its first output)."""
    return _spec(runtime.input), [_spec(runtime.output)]


async def _in_pool(state: AppState, call: Callable[[], T]) -> T:
    """CPU work on request bodies runs in the decode pool, never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(state.dataplane.executor, call)


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
    ready, _ = health_report(state)
    return JSON({"ready": ready}, status_code=200 if ready else 400)


def _model_ready(state: AppState, name: str, version: str | None) -> JSON:
    entry = state.repository.entry(name)
    if version is not None and version not in entry.version_names:
        raise ModelNotFoundError(f"model {name} has no version {version!r}", model=name)
    wanted = version or entry.latest
    ready = entry.state is not ModelState.LOADING and wanted in entry.versions
    if version is None:
        ready = ready and entry.state is ModelState.READY
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
    # 400: not ready ({"name", "ready": false}), or a malformed version ({"error": ...}).
    responses={400: {"model": ModelReady | V2Error}, **_errors(404)},
)
async def model_version_ready(state: State, name: str, version: Version) -> JSON:
    return _model_ready(state, name, version)


def _metadata_tensor(spec: TensorSpec) -> MetadataTensor:
    return MetadataTensor(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def _metadata(state: AppState, name: str, version: str | None) -> JSON:
    model = state.repository.get(name, version)
    entry = state.repository.entry(name)
    inp, outputs = _specs(model.runtime)
    body = ModelMetadata(
        name=name,
        versions=sorted(entry.versions, key=int),
        platform=PLATFORM,
        inputs=[
            MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in [inp]
        ],
        outputs=[
            MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in outputs
        ],
    )
    return JSON(body.model_dump())


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata",
    responses=_errors(400, 404, 503),
)
async def model_metadata(state: State, name: str) -> JSON:
    return _metadata(state, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model version metadata",
    responses=_errors(400, 404, 503),
)
async def model_version_metadata(state: State, name: str, version: Version) -> JSON:
    return _metadata(state, name, version)


def _config(state: AppState, name: str, version: str | None) -> JSON:
    model = state.repository.get(name, version)
    inp, outputs = _specs(model.runtime)
    has_labels = (state.repository.model_dir / name / "labels.txt").is_file()

    def tensor(spec: TensorSpec, labels: bool = False) -> ModelConfigTensor:
        return ModelConfigTensor(
            name=spec.name,
            data_type=f"TYPE_{'STRING' if spec.datatype == 'BYTES' else spec.datatype}",
            dims=list(spec.shape[1:]),
            label_filename="labels.txt" if labels and has_labels else None,
        )

    body = ModelConfig(
        name=name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=state.settings.max_images_per_request,
        input=[tensor(inp)],
        output=[tensor(spec, labels=True) for spec in outputs],
    )
    return JSON(body.model_dump(exclude_none=True))


@router.get(
    "/models/{name}/config",
    response_model=ModelConfig,
    summary="Model configuration (Triton's model_configuration extension)",
    responses=_errors(400, 404, 503),
)
async def model_config(state: State, name: str) -> JSON:
    return _config(state, name, None)


@router.get(
    "/models/{name}/versions/{version}/config",
    response_model=ModelConfig,
    summary="Model version configuration",
    responses=_errors(400, 404, 503),
)
async def model_version_config(state: State, name: str, version: Version) -> JSON:
    return _config(state, name, version)


# -- inference ---------------------------------------------------------------------------


def _decode(state: AppState, body: bytes, encoding: str | None, header: str | None) -> InferRequest:
    limit = state.settings.max_body_bytes
    return decode_request(decode_body(body, encoding, limit=limit), header, max_elements=limit)


async def _prepare(
    state: AppState, model: ModelVersion, decoded: InferRequest
) -> tuple[np.ndarray, list[RequestedOutput]]:
    inp, outputs = _specs(model.runtime)
    wanted = select_outputs(decoded, outputs, classes=len(model.runtime.card.labels))
    limit = state.settings.max_images_per_request
    batch = await _in_pool(state, functools.partial(bind_input, decoded, inp, max_batch=limit))
    return batch, wanted


async def _run(
    state: AppState, name: str, version: str | None, decoded: InferRequest
) -> tuple[ModelVersion, np.ndarray, list[RequestedOutput]]:
    """Infer on the version serving now; if it was swapped out (``load``) while this request
    waited, run on its replacement instead of failing."""
    model = state.repository.get(name, version)
    batch, wanted = await _prepare(state, model, decoded)
    try:
        return model, await state.dataplane.infer(model, batch), wanted
    except ModelUnavailableError:
        fresh = state.repository.get(name, version)
        if fresh is model:
            raise
    batch, wanted = await _prepare(state, fresh, decoded)
    return fresh, await state.dataplane.infer(fresh, batch), wanted


def _output(model: ModelVersion, logits: np.ndarray, out: RequestedOutput) -> OutputTensor:
    if out.classification:
        strings = classification(logits, out.classification, model.runtime.card.labels)
        return OutputTensor(out.name, "BYTES", strings, bool(out.binary))
    return OutputTensor(out.name, _spec(model.runtime.output).datatype, logits, bool(out.binary))


async def _infer(request: Request, state: AppState, name: str, version: str | None) -> Response:
    state.repository.get(name, version)  # unknown or unavailable: say so before reading a body
    body = await request.body()
    decoded = await _in_pool(
        state,
        functools.partial(
            _decode,
            state,
            body,
            request.headers.get("content-encoding"),
            request.headers.get(HEADER_LENGTH),
        ),
    )
    model, logits, wanted = await _run(state, name, version, decoded)
    outputs = [_output(model, logits, out) for out in wanted]
    content, header_length = encode_response(
        model_name=name, model_version=model.version, request_id=decoded.id, outputs=outputs
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
