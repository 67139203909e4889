"""Deadlines and load shedding, with a real server process.

A request that cannot finish within CNNSERVE_REQUEST_TIMEOUT_S gets a 504
``deadline_exceeded`` at about that time, and what it left behind is dropped: the queue
empties and the server answers the next request. A full queue (CNNSERVE_QUEUE_CAPACITY)
refuses with 503 ``overloaded`` and ``Retry-After``, and serves again by itself once the
load drops.
"""

from __future__ import annotations

import io
import socket
import time

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image
from reliability_kit import (
    TIMEOUT,
    Call,
    LoadGenerator,
    Summary,
    native_error,
    v2_error,
)
from testkit import LiveServer, ServerFactory, metric_value, png

from model_export.datasets import Split

pytestmark = pytest.mark.slow

MOBILENET = "mobilenetv2-imagenet"


def _jpeg(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _binary_infer(count: int, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    """A /v2 binary request of ``count`` random MobileNetV2 inputs."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, 3, 224, 224), dtype=np.float32).tobytes()
    tensor = {
        "name": "input",
        "shape": [count, 3, 224, 224],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(data)},
    }
    header = orjson.dumps({"inputs": [tensor]})
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def _settled(server: LiveServer, timeout_s: float = 15.0) -> dict[str, float]:
    """Wait until nothing is queued or in flight; the gauges as last read."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
        gauges = {
            "queue_depth": metric_value(text, "cnnserve_queue_depth", model=MOBILENET) or 0.0,
            "inflight": metric_value(text, "cnnserve_inflight_requests") or 0.0,
        }
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        time.sleep(0.1)


def test_a_request_past_its_deadline_gets_504_and_leaves_nothing_behind(
    start_server: ServerFactory, photos: dict[str, bytes], fashion_test: Split, summary: Summary
) -> None:
    timeout_s = 0.1  # 64 MobileNetV2 images take 0.4 s or more on two fast cores
    server = start_server(
        request_timeout_s=timeout_s, max_batch_size=8, max_body_bytes=64 * 1024 * 1024
    )
    photo = _jpeg(photos["chelsea"])
    files = [("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(64)]
    started = time.monotonic()
    native = httpx.post(
        f"{server.url}/v1/models/{MOBILENET}/classify", files=files, timeout=TIMEOUT
    )
    native_s = time.monotonic() - started
    body, headers = _binary_infer(64)
    started = time.monotonic()
    v2 = httpx.post(
        f"{server.url}/v2/models/{MOBILENET}/infer", content=body, headers=headers, timeout=TIMEOUT
    )
    v2_s = time.monotonic() - started
    gauges = _settled(server)
    after = httpx.post(
        f"{server.url}/v1/models/lenet5-fashion/classify",
        content=png(fashion_test.images[0]),
        headers={"Content-Type": "image/png"},
        timeout=TIMEOUT,
    )
    summary.row(
        "faults/deadline",
        area="faults",
        tried=f"CNNSERVE_REQUEST_TIMEOUT_S={timeout_s}: 64 photos on /v1, a batch of 64 on /v2 "
        "(MobileNetV2)",
        held=native.status_code == v2.status_code == 504
        and max(native_s, v2_s) < timeout_s + 1.5
        and not any(gauges.values())
        and after.status_code == 200,
        v1_status=native.status_code,
        v1_seconds=round(native_s, 2),
        v2_status=v2.status_code,
        v2_seconds=round(v2_s, 2),
        **gauges,
    )
    assert native.status_code == 504, native.text
    error = native_error(native)
    assert error["code"] == "deadline_exceeded" and error["detail"]["timeout_s"] == timeout_s
    assert v2.status_code == 504 and "did not finish" in v2_error(v2)
    assert native_s < timeout_s + 1.5, f"the 504 came after {native_s:.2f} s"
    assert v2_s < timeout_s + 1.5, f"the 504 came after {v2_s:.2f} s"
    assert not any(gauges.values()), gauges
    assert after.status_code == 200, after.text
    assert server.log().count("Traceback") == 0


def test_work_abandoned_at_the_deadline_stops(
    start_server: ServerFactory, photos: dict[str, bytes], summary: Summary
) -> None:
    """128 small photos (decoded in a moment, then 64 slices of 2 for MobileNetV2) time out:
    the slices not yet run must be dropped, so the next one-image request is served within
    its own deadline."""
    images = 128
    server = start_server(request_timeout_s=0.5, max_batch_size=2, max_images_per_request=images)
    thumb = io.BytesIO()
    Image.open(io.BytesIO(photos["coffee"])).convert("RGB").resize((64, 48)).save(thumb, "JPEG")
    files = [("file", (f"{i}.jpg", thumb.getvalue(), "image/jpeg")) for i in range(images)]
    url = f"{server.url}/v1/models/{MOBILENET}/classify"
    abandoned = httpx.post(url, files=files, timeout=TIMEOUT)
    after = httpx.post(url, files=files[:1], timeout=TIMEOUT)
    _settled(server)
    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    ran = int(metric_value(text, "cnnserve_batch_size_sum", model=MOBILENET) or 0)
    ran -= after.status_code == 200
    if abandoned.status_code != 504 or ran == 0:
        pytest.skip(f"the batch never ran past its deadline here ({abandoned.status_code}, {ran})")
    summary.row(
        "faults/deadline-abandoned-work",
        area="faults",
        tried=f"{images} photos on /v1 past a 0.5 s deadline, then a 1-photo request",
        held=after.status_code == 200 and ran < images,
        next_request_status=after.status_code,
        images_run=ran,
        images_sent=images,
    )
    assert after.status_code == 200, after.text
    assert ran < images, f"all {ran} images ran, most after their caller was gone"


def test_a_full_queue_sheds_with_retry_after_and_recovers_by_itself(
    start_server: ServerFactory, photos: dict[str, bytes], summary: Summary
) -> None:
    server = start_server(queue_capacity=4, max_batch_size=2)
    calls = [
        Call(
            "mobilenet",
            "POST",
            f"/v1/models/{MOBILENET}/classify",
            _jpeg(photos["coffee"]),
            {"Content-Type": "image/jpeg"},
        )
    ]
    with LoadGenerator(server.url, calls, concurrency=24) as flood:
        time.sleep(4.0)
    stopped = time.monotonic()
    shed = [o for o in flood.outcomes if o.status == 503]
    other = [o for o in flood.outcomes if o.status not in (200, 503)]
    recovered_after = None
    while time.monotonic() - stopped < 10:
        response = httpx.post(
            f"{server.url}/v1/models/{MOBILENET}/classify",
            content=calls[0].content,
            headers=calls[0].headers,
            timeout=TIMEOUT,
        )
        if response.status_code == 200:
            recovered_after = time.monotonic() - stopped
            break
        time.sleep(0.1)
    gauges = _settled(server)
    served = sum(o.status == 200 for o in flood.outcomes)
    summary.row(
        "faults/load-shedding",
        area="faults",
        tried="CNNSERVE_QUEUE_CAPACITY=4 under 24 concurrent MobileNetV2 clients for 4 s",
        held=bool(shed) and not other and recovered_after is not None,
        requests=len(flood.outcomes),
        served=served,
        shed_503=len(shed),
        other_failures=len(other),
        recovered_after_s=None if recovered_after is None else round(recovered_after, 2),
    )
    assert shed, f"nothing was shed in {len(flood.outcomes)} requests"
    assert served > 0
    assert not other, other[:5]
    for outcome in shed:
        assert outcome.refusal is not None
        retry_after, body = outcome.refusal
        assert retry_after is not None and int(retry_after) >= 1
        error = orjson.loads(body)["error"]
        assert error["code"] == "overloaded" and set(error) == {"code", "message", "detail"}
    assert recovered_after is not None and recovered_after < 5, "it did not recover"
    assert not any(gauges.values()), gauges
    assert server.log().count("Traceback") == 0


def test_clients_that_hang_up_leave_nothing_queued(
    start_server: ServerFactory, photos: dict[str, bytes], summary: Summary
) -> None:
    """Clients that give up (their own timeout, a closed tab) while their requests wait: the
    server notices the closed connections, drops their queued images, records 499, and the
    capacity they held is free for the next client at once."""
    clients, per_request = 8, 16
    server = start_server(
        max_batch_size=4, queue_capacity=clients * per_request, max_images_per_request=per_request
    )
    photo = _jpeg(photos["chelsea"])
    request = httpx.Request(
        "POST",
        f"{server.url}/v1/models/{MOBILENET}/classify",
        files=[("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(per_request)],
    )
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    raw = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n{head}\r\n".encode() + body
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(clients)]
    for sock in sockets:
        sock.sendall(raw)
    time.sleep(0.3)  # every request is in: one running, the rest queued
    for sock in sockets:
        sock.close()
    gauges = _settled(server)
    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    ran = int(metric_value(text, "cnnserve_batch_size_sum", model=MOBILENET) or 0)
    closed = metric_value(text, "cnnserve_requests_total", model=MOBILENET, status="499") or 0
    answered = metric_value(text, "cnnserve_requests_total", model=MOBILENET, status="200") or 0
    after = httpx.post(
        f"{server.url}/v1/models/{MOBILENET}/classify",
        files=[("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(per_request)],
        timeout=TIMEOUT,
    )
    sent = clients * per_request
    summary.row(
        "faults/clients-hang-up",
        area="faults",
        tried=f"{clients} clients send {per_request} photos each and close their connections "
        "while the requests wait",
        held=closed + answered == clients
        and closed >= clients // 2
        and ran < sent
        and after.status_code == 200,
        recorded_499=closed,
        answered_before_the_close=answered,
        images_run=ran,
        images_sent=sent,
        next_request_status=after.status_code,
    )
    # Those answered in the 0.3 s before the close are 200s; every other one is a 499.
    assert closed + answered == clients, (closed, answered)
    assert closed >= clients // 2, f"only {closed} of {clients} requests were still waiting"
    assert ran < sent, f"all {ran} images ran, most after their clients had gone"
    assert not any(gauges.values()), gauges
    assert after.status_code == 200, after.text
    assert server.log().count("Traceback") == 0
