"""A real `cnnserve serve` process on 127.0.0.1: serving over TCP, and a graceful drain."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from pydantic import ValidationError
from testkit import ServerFactory, metric_value

from service.config import Settings

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
    access = [e for e in server.log_entries() if e.get("request_id") == "trace-42"]
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


def test_two_workers_share_requests_and_every_scrape_counts_both(
    start_server: ServerFactory, photos: dict[str, bytes]
) -> None:
    server = start_server(workers=2, models="lenet5-fashion", log_level="info")
    url = f"{server.url}/v1/models/lenet5-fashion/classify?top_k=1"
    image = photos["chelsea"]

    def classify(_: int) -> int:
        with httpx.Client(timeout=30) as client:  # a new connection: the kernel picks a worker
            return client.post(
                url, content=image, headers={"Content-Type": "image/png"}
            ).status_code

    sent, workers = 0, set()
    with ThreadPoolExecutor(8) as pool:
        while len(workers) < 2 and sent < 2000:
            assert set(pool.map(classify, range(40))) == {200}
            sent += 40
            time.sleep(0.2)  # the access line is written after the response
            workers = {
                e["pid"] for e in server.log_entries() if e.get("path", "").endswith("/classify")
            }
    assert len(workers) == 2, f"one worker served all {sent} requests"

    for _ in range(6):  # each scrape is answered by either worker: both must say the sum
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        endpoint = "/v1/models/{name}/classify"
        requests = metric_value(
            metrics,
            "cnnserve_requests_total",
            endpoint=endpoint,
            model="lenet5-fashion",
            status="200",
        )
        assert requests == sent
        assert metric_value(metrics, "cnnserve_images_total", model="lenet5-fashion") == sent
        assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
    assert server.stop() == 0


def test_a_worker_that_dies_is_replaced_and_the_service_goes_on(
    start_server: ServerFactory,
) -> None:
    server = start_server(workers=2, models="lenet5-fashion", log_level="info")

    def started() -> list[int]:
        return [
            int(e["message"].split()[-1])
            for e in server.log_entries()
            if e["message"].startswith("started worker")
        ]

    first = started()
    assert len(first) == 2, server.log()
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(started()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(started()) == 3, "no replacement worker was started"
    replacement = started()[2]

    def served_by() -> set[int]:
        return {e["pid"] for e in server.log_entries() if e.get("path") == "/health/ready"}

    statuses = set()
    while replacement not in served_by() and time.monotonic() < deadline:
        # New connections: the kernel spreads them over the workers that listen, and the
        # replacement listens once its models are loaded.
        with httpx.Client(timeout=10) as client:
            statuses.add(client.get(f"{server.url}/health/ready").status_code)
        time.sleep(0.05)
    assert replacement in served_by(), "the replacement worker never answered"
    assert statuses == {200}
    assert "restarting it" in server.log()
    assert server.stop() == 0


def test_an_unknown_variable_is_named_with_the_closest_setting(
    start_server: ServerFactory,
) -> None:
    """A misspelt CNNSERVE_ variable is a warning naming the setting meant (not an error:
    Kubernetes injects CNNSERVE_SERVICE_HOST for a Service of that name); the server serves."""
    server = start_server(max_body_byte=5, service_host="10.0.0.1")
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
    warnings = [e["message"] for e in server.log_entries() if e["level"] == "warning"]
    assert (
        "CNNSERVE_MAX_BODY_BYTE is not a cnnserve setting: ignored; did you mean "
        "CNNSERVE_MAX_BODY_BYTES?"
    ) in warnings
    assert "CNNSERVE_SERVICE_HOST is not a cnnserve setting: ignored" in warnings


def test_an_unknown_keyword_to_the_settings_is_an_error() -> None:
    with pytest.raises(ValidationError, match="max_body_byte"):
        Settings(max_body_byte=5)  # type: ignore[call-arg]


def test_the_server_runs_numpy_blas_on_one_thread() -> None:
    """A batch's out-of-distribution scores are small matrix products: BLAS threads of their
    own would only wait for cores the runtime and the decode pool use."""
    import threadpoolctl

    from service import server

    server._single_threaded_blas()
    blas = threadpoolctl.threadpool_info()
    assert blas and all(lib["num_threads"] == 1 for lib in blas if lib["user_api"] == "blas")
