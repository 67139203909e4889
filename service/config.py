"""All configuration: one settings class, read from CNNSERVE_* environment variables.

A keyword the class does not know is an error (a typo in code or a test must not pass
silently). An environment variable with the prefix that names no setting is only worth a
warning (``unknown_variables``): Kubernetes injects CNNSERVE_SERVICE_HOST and the like for a
Service of that name, so refusing them would make a pod fail to start for a name.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ANY_HOST", "LOOPBACK_NAMES", "PREFIX", "Settings", "unknown_variables"]

PREFIX = "CNNSERVE_"

MiB = 1024 * 1024
ANY_HOST = "*"
# What a browser or a probe on the same machine puts in Host for a loopback server.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def _split_csv(value: object) -> object:
    """``"a, b"`` -> ``["a", "b"]``."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _split_required(value: object) -> object:
    """Like ``_split_csv``, but a value that is set must name something: ``""`` or
    ``" , "`` for a key list used to start the server with authentication silently off."""
    items = _split_csv(value)
    if isinstance(value, str) and not items:
        raise ValueError("is set but names nothing; unset the variable instead")
    return items


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Service settings; every field is also the environment variable CNNSERVE_<FIELD>."""

    # hide_input_in_errors: a refused key must not be printed in the refusal.
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

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

    explain_cache_bytes: int = Field(
        16 * MiB, ge=0, description="explanations kept for repeated requests; 0: none"
    )

    # Dynamic batching.
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0.0)
    queue_capacity: int = Field(512, ge=1, description="images waiting per model")

    request_timeout_s: float = Field(
        30.0, gt=0.0, description="deadline per request: arrival to the response's start"
    )
    drain_timeout_s: float = Field(
        20.0,
        ge=0.0,
        description="graceful-shutdown budget: requests in flight at SIGTERM get at most this "
        "long (then 503 shutting_down)",
    )
    head_timeout_s: float = Field(
        10.0, gt=0.0, description="to send a request's line and headers, from their first byte"
    )
    # SecretStr: keys never show in a repr, a log line or a dump of the settings.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # The model repository API (/v2/repository/...) takes these and only these; off without.
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Host header values answered; empty: the loopback names on a loopback host, else any.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: text on a terminal, JSON otherwise"
    )

    _split = field_validator("cors_origins", mode="before")(_split_csv)
    _split_required = field_validator("api_keys", "admin_keys", "allowed_hosts", mode="before")(
        _split_required
    )

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _sendable(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """A key with a control character could never arrive in a header: refuse it."""
        for key in keys:
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key.get_secret_value()):
                raise ValueError("a key contains a control character")
        return keys

    @field_validator("allowed_hosts")
    @classmethod
    def _lowercase(cls, hosts: list[str]) -> list[str]:
        return [host.lower().rstrip(".") or host for host in hosts]

    @property
    def host_names(self) -> frozenset[str]:
        """The Host header names answered; ``ANY_HOST`` among them: any. Unset, any: an app
        built in process serves whatever its caller names (a test client's "testserver");
        ``cnnserve serve`` applies the default of its address first (``as_served``)."""
        return frozenset(self.allowed_hosts or [ANY_HOST])

    def as_served(self) -> Settings:
        """These settings as a server bound to ``host`` runs them: unless ``allowed_hosts``
        is set, a loopback address answers the loopback names only (a page on another site
        whose name points at 127.0.0.1, DNS rebinding, is refused), any other address any
        name (Docker and Kubernetes bind 0.0.0.0 and are reached by names this process
        cannot know)."""
        if self.allowed_hosts or not _is_loopback(self.host):
            return self
        names = dict.fromkeys([*LOOPBACK_NAMES, self.host.lower()])
        return self.model_copy(update={"allowed_hosts": list(names)})


# Variables the project's own tools read beside the server's settings: the CLI's, the
# datasets', and those docker-compose.yml substitutes (which never reach the container).
_NOT_SETTINGS = frozenset(
    {
        "CNNSERVE_URL",
        "CNNSERVE_API_KEY",
        "CNNSERVE_DEBUG",
        "CNNSERVE_FASHION_MNIST_DIR",
        "CNNSERVE_BIND",
        "CNNSERVE_MODELS",
        "CNNSERVE_IMAGE",
        "CNNSERVE_GPU_IMAGE",
        "CNNSERVE_GPU_PORT",
        "CNNSERVE_GPU_PROVIDERS",
        "CNNSERVE_GPU_COUNT",
    }
)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """Each CNNSERVE_ variable that names no setting, with the closest setting's variable
    (None when nothing is close)."""
    environ = os.environ if environ is None else environ
    known = [PREFIX + name.upper() for name in Settings.model_fields]
    unknown = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in known and name not in _NOT_SETTINGS:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            unknown.append((name, close[0] if close else None))
    return unknown
