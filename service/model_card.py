"""The model card: what ``model.json`` says about a model, validated. One contract, written by
``model_export`` and read by the service.

The input a model takes is described once, by ``InputSpec``: its colour mode and size, how an
image is resized, its layout (NCHW, or NHWC as TensorFlow exports are), its datatype
(float32 normalised with ``mean`` and ``std``, or uint8 pixels 0..255 for a graph that
normalises them itself). Preprocessing, batches, receptive fields, explanations and the
Open Inference Protocol's metadata all follow from it (``InputSpec.shape``). The output is
``logits`` (the service applies softmax) or ``probabilities`` (a graph ending in Softmax).
Facts that belong to one version of a model (its precision, calibration, out-of-distribution
statistics) sit under ``versions``, keyed by version; ``default_version`` says which version a
request that names none gets (absent: the highest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "FP32",
    "INT8",
    "TRITON_MAX_BATCH_SIZE",
    "InputSpec",
    "ModelCard",
    "OutputSpec",
    "VersionFacts",
    "load_card",
    "triton_config",
]

# The batch a model folder promises Triton (config.pbtxt), and the service's default
# max_images_per_request.
TRITON_MAX_BATCH_SIZE = 64
FP32, INT8 = "fp32", "int8"  # a version's precision


class InputSpec(BaseModel):
    """How an uploaded image becomes the model's input tensor."""

    model_config = ConfigDict(frozen=True)

    name: str = "input"
    color_mode: Literal["L", "RGB"]
    size: tuple[int, int] = Field(description="height, width")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = Field(
        "float32",
        description="float32: pixels / 255 normalised with mean and std; uint8: pixels 0..255 "
        "(the graph normalises them)",
    )
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: Literal["stretch", "center-crop"] = "stretch"
    resize_shorter: int | None = Field(None, description="shorter side before a centre crop")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    def shape(self, batch: int | None = None) -> tuple[int, ...]:
        """The model's input shape for ``batch`` images (without the batch axis if None)."""
        height, width = self.size
        dims = (
            (self.channels, height, width)
            if self.layout == "NCHW"
            else (height, width, self.channels)
        )
        return dims if batch is None else (batch, *dims)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32 if self.dtype == "float32" else np.uint8)

    @property
    def spatial_axes(self) -> tuple[int, int]:
        """The (height, width) axes of one input (no batch axis)."""
        return (1, 2) if self.layout == "NCHW" else (0, 1)

    @property
    def channel_axis(self) -> int:
        return 0 if self.layout == "NCHW" else 2

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        given = [v for v in (self.mean, self.std) if v is not None]
        if self.dtype == "float32" and len(given) != 2:
            raise ValueError("a float32 input needs mean and std (per channel)")
        if any(len(v) != self.channels for v in given):
            raise ValueError(f"mean and std need {self.channels} value(s) for {self.color_mode}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        if min(self.size) < 1:
            raise ValueError("size must be positive")
        return self


class OutputSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = "logits"
    kind: Literal["logits", "probabilities"] = "logits"


class VersionFacts(BaseModel):
    """What is true of one version of a model (absent: an FP32 version, nothing fitted)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    calibration: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    description: str = ""
    labels: list[str]
    input: InputSpec
    output: OutputSpec = Field(default_factory=OutputSpec)
    architecture: str | None = None
    dataset: str | None = None
    parameters: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, VersionFacts] = Field(default_factory=dict)
    default_version: str | None = Field(
        None,
        description="the version served when a request names none; absent: the highest "
        "(an INT8 version is made the default only where its accuracy was measured)",
    )

    @property
    def output_kind(self) -> str:
        """ "logits" (the service applies softmax) or "probabilities"."""
        return self.output.kind

    def version_facts(self, version: str) -> VersionFacts:
        return self.versions.get(version) or VersionFacts()

    def served_default(self, versions: Iterable[str]) -> str | None:
        """Which of ``versions`` (those on disk) a request naming none gets: ``default_version``
        when it is one of them, else the highest."""
        names = sorted(versions, key=int)
        if self.default_version in names:
            return self.default_version
        return names[-1] if names else None


def triton_config(
    card: ModelCard, *, max_batch_size: int = TRITON_MAX_BATCH_SIZE
) -> dict[str, Any]:
    """Triton's model configuration for a model folder: what ``config.pbtxt`` says (so Triton's
    ONNX Runtime backend serves the same folder) and what ``/v2/models/{m}/config`` answers."""
    spec = card.input
    return {
        "name": card.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": spec.name,
                "data_type": "TYPE_FP32" if spec.dtype == "float32" else "TYPE_UINT8",
                "dims": list(spec.shape()),
            }
        ],
        "output": [
            {
                "name": card.output.name,
                "data_type": "TYPE_FP32",
                "dims": [len(card.labels)],
                "label_filename": "labels.txt",
            }
        ],
    }


def load_card(path: Path) -> ModelCard:
    """Read and validate a model.json; raises ValueError with a readable reason."""
    try:
        return ModelCard.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"{path} is invalid: {exc}") from None
