"""Fixtures for the client tests: a fake cnnserve behind httpx.MockTransport, real images."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from client_fakes import FAKE_HEATMAP, explanation_body
from testkit import launch_server

from cnn_client import AsyncClient, Client
from model_export.datasets import FASHION_LABELS, load_fashion_mnist


@pytest.fixture(scope="session")
def fashion() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    test = load_fashion_mnist().test
    return test.images[:200], test.labels[:200].astype(np.uint8)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `cnnserve serve` on 127.0.0.1, shared by the live tests of every module."""
    server = launch_server(tmp_path_factory.mktemp("server"))
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    content: bytes


def multipart_parts(request: httpx.Request) -> list[Part]:
    """The parts of a multipart/form-data request, parsed by the standard library."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.content, policy=email.policy.HTTP)
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append(
            Part(
                name=str(part.get_param("name", header="content-disposition")),
                filename=part.get_filename(),
                content_type=part.get_content_type(),
                content=payload,
            )
        )
    return parts


def error(status: int, code: str, message: str = "nope", **detail: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "detail": detail}}
    return httpx.Response(status, json=body)


LENET_INFO: dict[str, Any] = {
    "name": "lenet5-fashion",
    "versions": ["1", "2"],
    "state": "ready",
    "providers": ["CPUExecutionProvider"],
    "input": {
        "name": "input",
        "shape": [-1, 1, 28, 28],
        "color_mode": "L",
        "size": [28, 28],
        "mean": [0.286],
        "std": [0.353],
        "resize": "stretch",
        "something_new": True,
    },
    "labels": FASHION_LABELS,
    "layers": [
        {
            "name": "conv1",
            "op_type": "Conv",
            "output_shape": [6, 28, 28],
            "receptive_field": {"size": [5, 5], "jump": [1, 1], "start": [0.0, 0.0]},
        },
        {"name": "fc3", "op_type": "Gemm", "output_shape": [10]},
    ],
    "description": "LeNet-5",
    "explanations": ["occlusion"],
    "training": {"test_accuracy": 0.9},
}

# The activations the fake returns for any layer: 2 channels of 3 x 4.
FAKE_ACTIVATIONS = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 4 - 1).astype(np.float32)
FAKE_PNG = b"\x89PNG\r\n\x1a\n" + b"fake grid"


# The heatmap the fake explains any image with: 3 rows x 4 columns in [0, 1].
@dataclass
class FakeServer:
    """A cnnserve that follows the contract, with knobs for the failure cases.

    ``busy`` 503s come first (with ``retry_after`` as Retry-After when set). Classify
    answers class ``len(file) % 10`` for each file, echoing filenames in order, and gives
    image ``i`` the verdict ``ood[i % len(ood)]`` when ``ood`` is not empty. Explain answers
    ``explanation_body()``, or ``method_not_supported`` for cam.
    """

    INFO: ClassVar[dict[str, Any]] = LENET_INFO
    HEATMAP: ClassVar[list[list[float]]] = FAKE_HEATMAP
    ACTIVATIONS: ClassVar[npt.NDArray[np.float32]] = FAKE_ACTIVATIONS
    PNG: ClassVar[bytes] = FAKE_PNG
    LABELS: ClassVar[list[str]] = FASHION_LABELS

    max_images: int = 64
    announce_limit: bool = True
    busy: int = 0
    retry_after: str | None = None
    ready: bool = True
    ood: list[dict[str, Any] | None] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.busy > 0:
            self.busy -= 1
            response = error(503, "overloaded", "queue full")
            if self.retry_after is not None:
                response.headers["Retry-After"] = self.retry_after
            return response
        return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health/live":
            return httpx.Response(200, json={"status": "live"})
        if path == "/health/ready":
            return httpx.Response(200 if self.ready else 503, json={"ready": self.ready})
        if path == "/v1/models":
            return httpx.Response(200, json={"models": [LENET_INFO]})
        if not path.startswith("/v1/models/lenet5-fashion"):
            return error(404, "model_not_found", "no such model", name=path.split("/")[3])
        if request.url.params.get("version") not in (None, "1", "2"):
            return error(404, "model_not_found", "no such version")
        if path.endswith("/classify"):
            return self.classify(request)
        if path.endswith("/feature-maps"):
            return self.feature_maps(request)
        if path.endswith("/explain"):
            return self.explain(request)
        return httpx.Response(200, json=LENET_INFO)

    def classify(self, request: httpx.Request) -> httpx.Response:
        files = [part for part in multipart_parts(request) if part.name == "file"]
        if len(files) > self.max_images:
            detail = {"limit": self.max_images} if self.announce_limit else {}
            return error(413, "too_many_images", "too many images", **detail)
        top_k = int(request.url.params.get("top_k", "5"))
        results = []
        for number, part in enumerate(files):
            first = len(part.content) % 10
            indices = [(first + i) % 10 for i in range(top_k)]
            predictions = [
                {"index": i, "label": FASHION_LABELS[i], "probability": 0.5**rank}
                for rank, i in enumerate(indices, start=1)
            ]
            result = {"filename": part.filename, "predictions": predictions}
            if self.ood:
                result["ood"] = self.ood[number % len(self.ood)]
            results.append(result)
        version = request.url.params.get("version", "2")
        return httpx.Response(
            200, json={"model": "lenet5-fashion", "model_version": version, "results": results}
        )

    def feature_maps(self, request: httpx.Request) -> httpx.Response:
        layers = request.url.params.get_list("layer")
        unknown = [name for name in layers if name not in ("conv1", "fc3")]
        if not layers or unknown:
            return error(400, "unknown_layer", "unknown layer", valid=["conv1", "fc3"])
        if request.url.params.get("format") == "png":
            return httpx.Response(200, content=FAKE_PNG, headers={"content-type": "image/png"})
        data = base64.b64encode(FAKE_ACTIVATIONS.astype("<f4").tobytes()).decode()
        return httpx.Response(
            200,
            json={
                "model": "lenet5-fashion",
                "model_version": "2",
                "layers": [
                    {
                        "name": name,
                        "op_type": "Conv",
                        "shape": list(FAKE_ACTIVATIONS.shape),
                        "receptive_field": {"size": [5, 5], "jump": [2, 2], "start": [2, 2]},
                        "stats": {"min": -1.0, "max": 4.75, "mean": 1.875},
                        "data": data,
                    }
                    for name in layers
                ],
            },
        )

    def explain(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if params.get("method", "occlusion") == "cam":
            return error(
                400,
                "method_not_supported",
                "model lenet5-fashion cannot have cam explanations",
                method="cam",
                supported=["occlusion"],
            )
        if params.get("format") == "png":
            return httpx.Response(200, content=FAKE_PNG, headers={"content-type": "image/png"})
        return httpx.Response(200, json=explanation_body())


class AsyncAsSync:
    """Drives an AsyncClient with asyncio.run, so that one test body checks both clients."""

    def __init__(self, **options: Any) -> None:
        self._options = options

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                async with AsyncClient(**self._options) as client:
                    return await getattr(client, name)(*args, **kwargs)

            return asyncio.run(run())

        return call


@dataclass
class Harness:
    """What a test needs: a way to build a client over a handler, and the sleeps it took."""

    kind: str
    sleeps: list[float] = field(default_factory=list)

    def client(self, handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Any:
        transport = httpx.MockTransport(handler)
        options.setdefault("base_url", "http://cnnserve.test")
        if self.kind == "sync":
            return Client(transport=transport, sleep=self.sleeps.append, **options)

        async def record(seconds: float) -> None:
            self.sleeps.append(seconds)

        return AsyncAsSync(transport=transport, sleep=record, **options)


@pytest.fixture(params=["sync", "async"])
def harness(request: pytest.FixtureRequest) -> Harness:
    return Harness(kind=request.param)


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def parse_multipart() -> Callable[[httpx.Request], list[Part]]:
    return multipart_parts


@pytest.fixture
def error_response() -> Callable[..., httpx.Response]:
    return error


class _StubHandler(http.server.BaseHTTPRequestHandler):
    """Serves a FakeServer over real HTTP, for the CLI run as a user runs it."""

    fake: FakeServer

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = httpx.Request(
            self.command,
            f"http://{self.headers['host']}{self.path}",
            headers=dict(self.headers.items()),
            content=body,
        )
        response = self.fake(request)
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class StubServer:
    url: str
    fake: FakeServer


@pytest.fixture
def stub_server() -> Iterator[StubServer]:
    """A FakeServer on 127.0.0.1 in a thread."""
    fake = FakeServer()
    handler = type("Handler", (_StubHandler,), {"fake": fake})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield StubServer(url=f"http://127.0.0.1:{server.server_address[1]}", fake=fake)
    finally:
        server.shutdown()
        server.server_close()
