"""A real `cnnserve serve` process on 127.0.0.1: serving over TCP, and a graceful drain."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from testkit import ServerFactory

pytestmark = pytest.mark.slow


def test_serves_over_tcp_and_logs_json_without_image_bytes(
    start_server: ServerFactory, photos: dict[str, bytes]
) -> None:
    server = start_server()
    response = httpx.post(
        f"{server.url}/v1/models/mobilenetv2-imagenet/classify?top_k=1",
        files={"file": ("cat.png", photos["chelsea"], "image/png")},
        headers={"X-Request-ID": "trace-42"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["predictions"][0]["label"] == "Egyptian cat"
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "trace-42"]
    assert access and access[0]["status"] == 200 and access[0]["path"].endswith("/classify")
    assert photos["chelsea"][:64].hex() not in server.log()


def test_sigterm_finishes_requests_in_flight_and_exits_zero(
    start_server: ServerFactory, photos: dict[str, bytes]
) -> None:
    server = start_server(max_batch_size=8)
    files = [("file", (f"{i}.png", photos["coffee"], "image/png")) for i in range(48)]
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            r = httpx.post(
                f"{server.url}/v1/models/mobilenetv2-imagenet/classify?top_k=1",
                files=files,
                timeout=60,
            )
            result["status"] = r.status_code
            result["labels"] = {p["predictions"][0]["label"] for p in r.json()["results"]}
        except httpx.HTTPError as exc:  # pragma: no cover - reported below
            result["error"] = repr(exc)

    worker = threading.Thread(target=slow_request)
    worker.start()
    time.sleep(0.5)  # the request is being decoded and batched
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # new connections are refused cleanly
        httpx.get(f"{server.url}/health/ready", timeout=2)
    worker.join(60)
    assert result == {"status": 200, "labels": {"espresso"}}, result
    assert server.process.wait(30) == 0
    assert "draining" in server.log()
