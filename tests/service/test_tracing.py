"""Traces: a real server exporting OTLP/HTTP to a real receiver, the spans decoded from the
protocol's own messages; W3C trace context in (headers, the SDK) and out (X-Trace-ID, logs);
tracing that cannot export or is misconfigured never stops serving."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import secrets
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from otlp_receiver import ReceivedSpan, Receiver
from testkit import CNNSERVE, MODELS, LiveServer, free_port, launch_server, png

from cnn_client import Client
from service import tracing
from service.logs import JsonFormatter, TextFormatter, resolve_format

pytestmark = pytest.mark.slow

CLASSIFY = "/v1/models/lenet5-fashion/classify"
SERVER_KIND = 2  # SPAN_KIND_SERVER in the OTLP protobuf
ERROR = 2  # STATUS_CODE_ERROR
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _image(seed: int) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8))


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    collector = Receiver()
    yield collector
    collector.close()


@pytest.fixture(scope="module")
def traced(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server exporting every trace to ``receiver`` (short batching delay: spans arrive
    within a tenth of a second), decoding in a pool of two threads."""
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "cnnserve-under-test",
    }
    server = launch_server(tmp_path_factory.mktemp("traced"), environ=environ, decode_threads=2)
    yield server
    server.stop()


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_a_classify_request_joins_the_callers_trace(traced: LiveServer, receiver: Receiver) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    response = httpx.post(
        traced.url + CLASSIFY,
        files=[("file", ("a.png", _image(1), "image/png")), ("file", ("b.png", _image(2)))],
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == trace_id

    names = {"POST /v1/models/{name}/classify", "read body", "pool wait", "decode", "preprocess"}
    spans = receiver.trace(trace_id, until=names | {"queue wait", "postprocess"})
    request = _one(spans, "POST /v1/models/{name}/classify")
    assert request.parent_span_id == parent and request.kind == SERVER_KIND
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/v1/models/{name}/classify"
    assert request.attributes["cnnserve.model"] == "lenet5-fashion"
    assert request.attributes["cnnserve.images"] == 2
    assert _HEX32.match(request.attributes["cnnserve.request_id"])
    assert request.resource["service.name"] == "cnnserve-under-test"
    children = {s.name for s in spans if s.parent_span_id == request.span_id}
    assert {"read body", "pool wait", "queue wait", "postprocess"} <= children
    decodes = [s for s in spans if s.name == "decode"]
    assert sorted(s.attributes["cnnserve.image"] for s in decodes) == [0, 1]
    assert all(s.attributes["cnnserve.pixels"] == 28 * 28 for s in decodes)
    for span in spans:  # every span inside the request's time
        assert request.start_ns <= span.start_ns <= span.end_ns <= request.end_ns, span.name

    # The batch that ran it: a trace of its own, linked both ways with the request.
    batches = receiver.linked_to(request.span_id)
    assert len(batches) == 1
    batch = batches[0]
    assert batch.name == "batch inference" and batch.trace_id != trace_id
    assert batch.attributes["cnnserve.batcher"] == "lenet5-fashion/1"
    assert batch.attributes["cnnserve.images"] >= 2
    assert (batch.trace_id, batch.span_id) in request.links


def test_without_traceparent_a_request_starts_a_trace_named_in_header_and_logs(
    traced: LiveServer, receiver: Receiver
) -> None:
    response = httpx.post(
        traced.url + CLASSIFY, content=_image(3), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    trace_id = response.headers["x-trace-id"]
    assert _HEX32.match(trace_id)
    spans = receiver.trace(trace_id, until={"POST /v1/models/{name}/classify"})
    assert _one(spans, "POST /v1/models/{name}/classify").parent_span_id == ""
    request_id = response.headers["x-request-id"]
    access = [e for e in traced.log_entries() if e.get("request_id") == request_id]
    assert access and all(e["trace_id"] == trace_id for e in access)


def test_errors_are_traced_with_their_status(traced: LiveServer, receiver: Receiver) -> None:
    response = httpx.post(
        traced.url + CLASSIFY, content=b"not an image", headers={"content-type": "image/png"}
    )
    assert response.status_code == 400
    spans = receiver.trace(
        response.headers["x-trace-id"], until={"POST /v1/models/{name}/classify"}
    )
    request = _one(spans, "POST /v1/models/{name}/classify")
    assert request.attributes["http.response.status_code"] == 400
    assert request.status_code != ERROR  # a client's mistake is not the server's failure


def test_v2_inference_spans(traced: LiveServer, receiver: Receiver) -> None:
    values = np.random.default_rng(4).random((1, 1, 28, 28)).round(3).ravel().tolist()
    body = {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": values}]
    }
    response = httpx.post(traced.url + "/v2/models/lenet5-fashion/infer", json=body)
    assert response.status_code == 200, response.text
    names = {"POST /v2/models/{name}/infer", "decode request", "bind input", "encode response"}
    spans = receiver.trace(response.headers["x-trace-id"], until=names | {"queue wait"})
    assert names | {"queue wait"} <= {s.name for s in spans}
    request = _one(spans, "POST /v2/models/{name}/infer")
    assert request.attributes["cnnserve.model"] == "lenet5-fashion"


def test_health_and_metrics_are_not_traced(traced: LiveServer) -> None:
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert "x-trace-id" not in httpx.get(traced.url + path).headers


def test_the_sdk_carries_the_callers_trace(traced: LiveServer, receiver: Receiver) -> None:
    tracer = TracerProvider().get_tracer("an application")  # not the global provider
    with tracer.start_as_current_span("the caller") as caller, Client(traced.url) as client:
        result = client.classify(_image(5), model="lenet5-fashion")
    assert result.predictions
    context = caller.get_span_context()
    trace_id = f"{context.trace_id:032x}"
    spans = receiver.trace(trace_id, until={"POST /v1/models/{name}/classify"})
    request = _one(spans, "POST /v1/models/{name}/classify")
    assert request.parent_span_id == f"{context.span_id:016x}"


def test_the_sampler_decides_and_a_callers_decision_is_kept(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """parentbased_always_off: a request of its own is not traced (no spans, no trace id to
    look up); one whose caller sampled it is."""
    collector = Receiver()
    try:
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_TRACES_SAMPLER": "parentbased_always_off",
        }
        server = start_server(environ=environ)
        headers = {"content-type": "image/png"}
        alone = httpx.post(server.url + CLASSIFY, content=_image(8), headers=headers)
        assert alone.status_code == 200 and "x-trace-id" not in alone.headers
        trace_id = secrets.token_hex(16)
        headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        joined = httpx.post(server.url + CLASSIFY, content=_image(9), headers=headers)
        assert joined.headers["x-trace-id"] == trace_id
        spans = collector.trace(trace_id, until={"POST /v1/models/{name}/classify", "decode"})
        assert {"read body", "decode", "queue wait", "postprocess"} <= {s.name for s in spans}
        assert {s.trace_id for s in collector.spans} == {trace_id} | {
            s.trace_id for s in collector.spans if s.name == "batch inference"
        }
    finally:
        collector.close()


def test_an_unreachable_collector_never_stops_serving(start_server) -> None:  # type: ignore[no-untyped-def]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = start_server(
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
            "OTEL_BSP_SCHEDULE_DELAY": "20",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        },
    )
    with httpx.Client(base_url=server.url) as client:
        for seed in range(20):
            response = client.post(
                CLASSIFY, content=_image(seed), headers={"content-type": "image/png"}
            )
            assert response.status_code == 200
            assert _HEX32.match(response.headers["x-trace-id"])
    assert server.process.poll() is None


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
    ],
)
def test_a_refused_configuration_warns_once_and_serves_untraced(
    start_server,
    environ: dict[str, str],  # type: ignore[no-untyped-def]
) -> None:
    server = start_server(environ=environ)
    response = httpx.post(
        server.url + CLASSIFY, content=_image(6), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200 and "x-trace-id" not in response.headers
    warnings = [e for e in server.log_entries() if e["message"].startswith("tracing stays off")]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_which_environment_turns_tracing_on(environ: dict[str, str], wanted: list[str]) -> None:
    assert tracing._wanted(environ) == wanted


def _record(name: str, message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(fields)
    return record


def test_text_log_lines_read_like_an_access_log() -> None:
    record = _record(
        "cnnserve.access",
        "request",
        method="POST",
        path=CLASSIFY,
        status=200,
        duration_ms=3.1,
        request_id="r1",
        model=None,
    )
    line = TextFormatter().format(record)
    assert re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z INFO    cnnserve.access: request POST ", line)
    assert line.endswith(f"{CLASSIFY} 200 3.1ms request_id=r1")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["status"] == 200 and entry["path"] == CLASSIFY and "model" in entry


def test_auto_log_format_is_text_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert resolve_format("auto") == "text"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert resolve_format("auto") == "json"
    assert resolve_format("text") == "text"


def test_text_is_what_a_terminal_gets_from_the_server(tmp_path: Path) -> None:
    """`make serve` in a terminal: readable lines, the access line with method and path."""
    port = free_port()
    primary, secondary = pty.openpty()
    env = {
        "PATH": os.environ["PATH"],
        "CNNSERVE_PROVIDERS": "cpu",
        "CNNSERVE_MODEL_DIR": str(MODELS),
    }
    process = subprocess.Popen(
        [str(CNNSERVE), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    output = b""
    try:
        LiveServer(process, port, tmp_path / "unused.log").wait_ready()
        headers = {"content-type": "image/png"}
        httpx.post(f"http://127.0.0.1:{port}{CLASSIFY}", content=_image(7), headers=headers)
        deadline = time.monotonic() + 10
        while b"cnnserve.access" not in output and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.2)[0]:
                output += os.read(primary, 1 << 16)
    finally:
        process.terminate()
        process.wait(30)
        os.close(primary)
    text = output.decode(errors="replace")
    assert not any(line.startswith("{") for line in text.splitlines()), text
    assert f"cnnserve.access: request POST {CLASSIFY} 200 " in text, text
