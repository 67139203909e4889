"""Liveness, readiness (with each model's state and execution provider) and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.responses import JSON
from service.api.schemas import HealthResponse, ModelHealth
from service.api.state import AppState, State

__all__ = ["health_report", "router"]

router = APIRouter(tags=["health"])


def health_report(state: AppState) -> tuple[bool, HealthResponse]:
    """(ready?, body): ready once start-up loading is over, at least one model serves, and
    the server is not draining; the body says what every model is doing and where it runs."""
    models = []
    for entry in state.repository.entries():
        providers: list[str] = []
        fallback = None
        for version in entry.versions.values():
            providers = list(version.runtime.placement.providers)
            fallback = version.runtime.placement.fallback_reason
        models.append(
            ModelHealth(
                name=entry.name,
                state=entry.state.value,
                versions=entry.version_names,
                providers=providers,
                reason=entry.reason,
                fallback_reason=fallback,
            )
        )
    status = state.status
    return status == "ready", HealthResponse(status=status, models=models)


@router.get("/health/live", summary="Liveness: 200 while the process serves")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    summary="Readiness: 200 once models are loaded and warmed, else 503",
    description="With CNNSERVE_API_KEYS set, a request without a valid key gets the status "
    'word alone (`{"status": "ready"}`): model names, versions and reasons (which hold '
    "server paths) are for key holders.",
    responses={503: {"model": HealthResponse, "description": "loading, draining or no model"}},
)
async def ready(request: Request, state: State) -> JSON:
    is_ready, body = health_report(state)
    code = 200 if is_ready else 503
    # Set by the middleware: a valid key, or no keys configured.
    if not request.scope.get("state", {}).get("authenticated", True):
        return JSON({"status": body.status}, status_code=code)
    return JSON(body.model_dump(), status_code=code)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
