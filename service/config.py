"""All configuration: one settings class, read from CNNSERVE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]

MiB = 1024 * 1024


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Service settings; every field is also the environment variable CNNSERVE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="CNNSERVE_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_dir: Path = Path("models")
    providers: Literal["auto", "cuda", "cpu"] = "auto"
    workers: int = Field(1, ge=1, description="server processes")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per op; 0: cores")
    inter_op_threads: int = Field(1, ge=1)
    decode_threads: int = Field(0, ge=0, description="decode/preprocess pool; 0: cores")

    # Input limits.
    max_body_bytes: int = Field(32 * MiB, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="pixels of all the images of one request together"
    )
    max_decoding_pixels: int = Field(
        80_000_000,
        ge=1,
        description="pixels being decoded at once in a process, over all requests and threads "
        "(memory: about 12 bytes each)",
    )
    max_response_bytes: int = Field(
        16 * MiB, ge=1, description="the largest feature-map response to encode"
    )

    # Dynamic batching.
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0.0)
    queue_capacity: int = Field(512, ge=1, description="images waiting per model")

    request_timeout_s: float = Field(
        30.0, gt=0.0, description="deadline per request: arrival to the response's start"
    )
    drain_timeout_s: float = Field(20.0, ge=0.0, description="graceful-shutdown budget")
    # SecretStr: keys never show in a repr, a log line or a dump of the settings.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    _split = field_validator("api_keys", "cors_origins", mode="before")(_split_csv)
