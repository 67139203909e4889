"""POST /v1/models/{name}/explain: why the model chose a class, as a heatmap over the input."""

from __future__ import annotations

import functools
import io
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from service.api.openapi import IMAGE_BODY, Version, error_responses
from service.api.responses import JSON
from service.api.schemas import ExplanationResponse
from service.api.state import State
from service.api.uploads import read_uploads
from service.explain import METHODS
from service.explainer import Explanation
from service.preprocessing import to_pixels
from service.visualize import overlay_png

__all__ = ["router"]

router = APIRouter(prefix="/v1/models", tags=["models"])

Pixels = Annotated[str | None, Query(description="occlusion: pixels of the model input")]
TargetClass = Annotated[
    str | None, Query(description="a class index or label; default: the top class", max_length=256)
]


def _json(explanation: Explanation) -> dict[str, Any]:
    heatmap = explanation.heatmap
    return {
        "model": explanation.model,
        "model_version": explanation.version,
        "method": explanation.method,
        "parameters": explanation.parameters,
        "target": {
            "index": explanation.target.index,
            "label": explanation.target.label,
            "probability": explanation.target.probability,
        },
        "heatmap": {
            "shape": list(heatmap.values.shape),
            "values": heatmap.values.astype(np.float64).round(5).tolist(),
            "grid": heatmap.grid.to_json(),
        },
        "elapsed_ms": round(explanation.seconds * 1000, 2),
        "cached": explanation.cached,
    }


@router.post(
    "/{name}/explain",
    response_model=ExplanationResponse,
    summary="Why the model chose a class: a heatmap over the input (occlusion or CAM)",
    description="One image, as for feature maps. `method`: `occlusion` (every model) or "
    "`cam` (models whose head is global average pooling and one linear layer; ModelInfo's "
    "`explanations` lists each model's). `target`: a class index or label (default: the "
    "top class). `format`: `json` (the heatmap grid and where its cells lie in model-input "
    "pixels), `png` (a colour overlay on the model input), `npy` (the grid alone, rows x "
    "cols float32 in [0, 1]). A repeated request is answered from a cache "
    "(`X-Explanation-Cache: hit`).",
    responses={
        **error_responses(400, 404, 413, 415, 503, 504),
        200: {"content": {"image/png": {}, "application/x-npy": {}}},
    },
    openapi_extra=IMAGE_BODY,
)
async def explain(
    request: Request,
    state: State,
    name: str,
    version: Version = None,
    method: Annotated[
        str, Query(description=f"one of {', '.join(METHODS)}", max_length=64)
    ] = "occlusion",
    target: Annotated[
        str | None, Query(description="a class index or label", max_length=256)
    ] = None,
    window: Pixels = None,
    stride: Pixels = None,
    format: Annotated[Literal["json", "png", "npy"], Query()] = "json",
) -> Response:
    model = state.dataplane.model(name, version)
    explainer = state.explainer
    wanted, parameters = explainer.check(
        model, method, target, {"window": window, "stride": stride}
    )
    uploads = await read_uploads(request, max_images=1)
    explanation = await explainer.explain(
        model, uploads[0].data, method=method, target=wanted, parameters=parameters
    )
    headers = {
        "X-Model-Version": explanation.version,
        "X-Explanation-Cache": "hit" if explanation.cached else "miss",
    }
    if format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, explanation.heatmap.values.astype("<f4"))
        return Response(buffer.getvalue(), media_type="application/x-npy", headers=headers)
    if format == "png":
        spec = model.runtime.card.input
        image = explanation.input
        if image is None:  # from the cache: the input, decoded again (cheap beside the rest)
            image = (await state.dataplane.prepare(model, [(None, uploads[0].data)]))[0]
        heat = explanation.heatmap.pixels(spec.size)
        picture = functools.partial(overlay_png, to_pixels(image, spec), heat)
        png = await state.dataplane.run_in_pool(picture)
        return Response(png, media_type="image/png", headers=headers)
    return JSON(_json(explanation), headers=headers)
