"""The OpenAPI document: every operation, and every error it can answer, from the error table.

FastAPI documents its routes; this adds what it cannot know:

- ``POST /v1/models/{name}/classify``, served by a raw ASGI endpoint (no dependency
  injection or request objects on the hot path), documented here with its parameters, body
  and response;
- the errors of every operation, from the one table in ``service.errors``: the statuses the
  route declares (``error_responses``) and those any request can meet before reaching it
  (the middleware's: an unknown Host, a body over the limit, a missing key on a protected
  route, the drain's end, the deadline), each listing its codes, in the error shape of the
  operation's API (``{"error": {...}}`` natively, ``{"error": "..."}`` on /v2);
- no 422: a request FastAPI cannot validate is a 400 ``invalid_parameter`` here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.api.schemas import ClassifyResponse, ErrorResponse
from service.api.uploads import FIELD
from service.errors import codes_by_status
from service.v2.schemas import V2Error

__all__ = ["CLASSIFY_PATH", "IMAGE_BODY", "Version", "error_responses", "install_openapi"]

CLASSIFY_PATH = "/v1/models/{name}/classify"  # served by service.api.models.CLASSIFY_ROUTE
VERSION_PATTERN = r"^[0-9]{1,9}$"
VERSION_DESCRIPTION = (
    "a version; default: the model's default version (model.json's default_version, else "
    "the highest)"
)
# ?version= on every /v1 model route.
Version = Annotated[str | None, Query(pattern=VERSION_PATTERN, description=VERSION_DESCRIPTION)]
# What the middleware may answer before any route runs, and where.
_EVERY_REQUEST = (400, 413, 503, 504)
_PROTECTED = (401,)
_REPOSITORY = (401, 403, 409, 415)
_OPEN_PATHS = ("/health/", "/v2/health/")
_CLASSIFY_ERRORS = (400, 404, 413, 415, 503, 504)


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def error_responses(*statuses: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for the error statuses it can answer: each with the
    codes of that status, in the error shape of its API."""
    model = V2Error if v2 else ErrorResponse
    codes = codes_by_status()
    return {
        status: {"model": model, "description": ", ".join(codes.get(status, ["error"]))}
        for status in statuses
    }


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    """A $ref to ``model``'s schema, adding it (and what it refers to) to the components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _classify_operation(components: dict[str, Any]) -> dict[str, Any]:
    return {
        "tags": ["models"],
        "summary": "Classify one or more images",
        "description": "Send images as multipart field(s) `file`, or one raw body with "
        "`Content-Type: image/*`. Results come back in request order with their filenames.",
        "operationId": "classify",
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            {
                "name": "version",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "pattern": VERSION_PATTERN},
                "description": VERSION_DESCRIPTION,
            },
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "default": 5},
                "description": "predictions per image (1..classes)",
            },
            {
                "name": "calibrated",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": True},
                "description": "false: the raw softmax instead of the temperature-calibrated "
                "probabilities",
            },
        ],
        **IMAGE_BODY,
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": _ref(ClassifyResponse, components)}},
            }
        },
    }


def _statuses(path: str) -> tuple[int, ...]:
    if path.startswith(_OPEN_PATHS):
        return _EVERY_REQUEST
    if path.startswith("/v2/repository/"):
        return _EVERY_REQUEST + _REPOSITORY
    return _EVERY_REQUEST + _PROTECTED


def _with_errors(
    path: str, operation: dict[str, Any], components: dict[str, Any], *own: int
) -> None:
    """Add the error responses ``operation`` lacks: ``own`` (the route's) and the
    middleware's; 422 goes."""
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    v2 = path == "/v2" or path.startswith("/v2/")
    error = _ref(V2Error if v2 else ErrorResponse, components)
    for status, described in error_responses(*own, *_statuses(path), v2=v2).items():
        if str(status) not in responses:
            responses[str(status)] = {
                "description": described["description"],
                "content": {"application/json": {"schema": error}},
            }


def install_openapi(app: FastAPI) -> None:
    """Build the app's document as described above (once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        classify = _classify_operation(components)
        _with_errors(CLASSIFY_PATH, classify, components, *_CLASSIFY_ERRORS)
        document["paths"].setdefault(CLASSIFY_PATH, {})["post"] = classify
        for path, item in document["paths"].items():
            for operation in item.values():
                _with_errors(path, operation, components)
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
