"""Wire schemas of the Open Inference Protocol (KServe V2) and Triton's extensions.

Field names are the protocol's; they document the OpenAPI schema and shape the JSON that the
``/v2`` endpoints return. Inference bodies are not here: ``service.v2.wire`` reads and
writes those (JSON plus binary tensor data is not something pydantic should parse).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "LoadResponse",
    "MetadataTensor",
    "ModelConfig",
    "ModelConfigTensor",
    "ModelMetadata",
    "ModelReady",
    "RepositoryModel",
    "ServerLive",
    "ServerMetadata",
    "ServerReady",
    "UnloadResponse",
    "V2Error",
]


class V2Error(BaseModel):
    error: str = Field(examples=["input 'input': expected shape [-1, 1, 28, 28], got [2, 3]"])


class ServerMetadata(BaseModel):
    name: str = Field(examples=["cnnserve"])
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 for a dynamic axis", examples=[[-1, 1, 28, 28]])


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions that serve and can be named")
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ModelConfigTensor(BaseModel):
    name: str
    data_type: str = Field(examples=["TYPE_FP32"])
    dims: list[int] = Field(description="without the batch dimension", examples=[[1, 28, 28]])
    label_filename: str | None = None


class ModelConfig(BaseModel):
    """The subset of Triton's model configuration that describes what the server does."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[ModelConfigTensor]
    output: list[ModelConfigTensor]


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str | None = Field(None, description="READY, LOADING or UNAVAILABLE")
    reason: str | None = None


class LoadResponse(BaseModel):
    name: str
    load: bool


class UnloadResponse(BaseModel):
    name: str
    unload: bool
