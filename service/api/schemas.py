"""Wire schemas of the native API (what clients read; field names are the contract)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClassifyResponse",
    "ErrorBody",
    "ErrorResponse",
    "ExplanationResponse",
    "ExplanationTarget",
    "FeatureMapLayer",
    "FeatureMapResponse",
    "HealthResponse",
    "HeatmapInfo",
    "ImageResult",
    "InputInfo",
    "LayerInfo",
    "ModelHealth",
    "ModelInfo",
    "ModelList",
    "OutOfDistribution",
    "Prediction",
    "ReceptiveFieldInfo",
    "Stats",
]


class ReceptiveFieldInfo(BaseModel):
    size: list[float] = Field(description="height, width of the input region, in pixels")
    jump: list[float] = Field(description="input pixels between neighbouring units")
    start: list[float] = Field(description="centre of the first unit's region (pixel i at i)")


class LayerInfo(BaseModel):
    name: str
    op_type: str
    output_shape: list[int] = Field(description="C, H, W; -1 where the graph leaves it open")
    receptive_field: ReceptiveFieldInfo | None


class InputInfo(BaseModel):
    name: str
    shape: list[int] = Field(examples=[[-1, 1, 28, 28]])
    layout: str = Field("NCHW", description="NCHW, or NHWC (channels last)")
    datatype: str = Field("FP32", description="FP32 (normalised with mean and std) or UINT8")
    color_mode: str = Field(examples=["L"])
    size: list[int] = Field(description="height, width")
    mean: list[float] | None = Field(None, description="per channel; none for UINT8 inputs")
    std: list[float] | None = None
    resize: str = Field(description="stretch, or center-crop after resizing the shorter side")
    resize_shorter: int | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "lenet5-fashion",
                    "versions": ["1"],
                    "state": "ready",
                    "providers": ["CPUExecutionProvider"],
                }
            ]
        }
    )

    name: str
    versions: list[str]
    version: str | None = Field(None, description="the version described")
    state: str = Field(description="loading, ready or unavailable")
    reason: str | None = Field(None, description="why the model or version cannot serve")
    providers: list[str] = Field(description="execution providers ONNX Runtime placed it on")
    device: str | None = Field(None, description="cpu or cuda")
    fallback_reason: str | None = Field(None, description="why CUDA was not used")
    description: str = ""
    input: InputInfo | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    layers: list[LayerInfo] = Field(default_factory=list)
    explanations: list[str] = Field(
        default_factory=list, description="explanation methods this model supports"
    )
    precision: str | None = Field(None, description="fp32, fp16 or int8: the version's graph")
    calibration: dict[str, Any] | None = Field(
        None, description="the version's temperature and expected calibration error figures"
    )
    ood: dict[str, Any] | None = Field(
        None, description="the version's out-of-distribution methods and thresholds"
    )
    architecture: str | None = None
    dataset: str | None = None
    parameters: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    models: list[ModelInfo]


class Prediction(BaseModel):
    index: int = Field(description="position in the model's output and in its labels")
    label: str
    probability: float


class OutOfDistribution(BaseModel):
    score: float = Field(
        description="higher: less like the training data; with a threshold, scaled so that "
        "the validation median is 0 and the threshold 1"
    )
    threshold: float | None = Field(description="null where none was fitted")
    flagged: bool
    method: str = Field(
        description="the method(s) used, joined by +; when flagged, those that fired",
        examples=["energy+mahalanobis"],
    )


class ImageResult(BaseModel):
    filename: str | None
    predictions: list[Prediction]
    ood: OutOfDistribution


class ClassifyResponse(BaseModel):
    model: str
    model_version: str
    results: list[ImageResult]


class Stats(BaseModel):
    min: float
    max: float
    mean: float


class FeatureMapLayer(BaseModel):
    name: str
    op_type: str
    shape: list[int] = Field(description="C, H, W")
    receptive_field: ReceptiveFieldInfo | None
    stats: Stats
    data: str = Field(description="base64 of little-endian float32, row-major C*H*W")


class FeatureMapResponse(BaseModel):
    model: str
    model_version: str
    layers: list[FeatureMapLayer]


class ExplanationTarget(BaseModel):
    index: int
    label: str
    probability: float = Field(description="the target's probability for the input as sent")


class HeatmapInfo(BaseModel):
    shape: list[int] = Field(description="rows, cols")
    values: list[list[float]] = Field(description="in [0, 1]; higher: more important")
    grid: ReceptiveFieldInfo = Field(
        description="cell (i, j) is centred at start + (i, j) * jump, size across, in "
        "model-input pixels"
    )


class ExplanationResponse(BaseModel):
    model: str
    model_version: str
    method: str
    parameters: dict[str, int]
    target: ExplanationTarget
    heatmap: HeatmapInfo
    elapsed_ms: float = Field(description="time to compute it (the original, when cached)")
    cached: bool


class ModelHealth(BaseModel):
    name: str
    state: str
    versions: list[str]
    providers: list[str]
    reason: str | None = None
    fallback_reason: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="ready, loading, draining or unavailable")
    models: list[ModelHealth] = Field(default_factory=list)


class ErrorBody(BaseModel):
    code: str = Field(examples=["image_too_large"])
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody
