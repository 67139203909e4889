"""The model card: what ``model.json`` says about a model, validated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["InputSpec", "ModelCard", "load_card"]


class InputSpec(BaseModel):
    """How an uploaded image becomes the model's input tensor (resize, colour, normalise)."""

    model_config = ConfigDict(frozen=True)

    name: str = "input"
    color_mode: Literal["L", "RGB"]
    size: tuple[int, int] = Field(description="height, width")
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: Literal["stretch", "center-crop"] = "stretch"
    resize_shorter: int | None = Field(None, description="shorter side before a centre crop")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s) for {self.color_mode}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        if min(self.size) < 1:
            raise ValueError("size must be positive")
        return self


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    description: str = ""
    labels: list[str]
    input: InputSpec
    output: dict[str, Any] = Field(default_factory=lambda: {"name": "logits", "kind": "logits"})
    architecture: str | None = None
    dataset: str | None = None
    parameters: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)

    @property
    def output_kind(self) -> str:
        """ "logits" (the service applies softmax) or "probabilities"."""
        return str(self.output.get("kind", "logits"))


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
