"""A reload while a slow upload holds the old version: the request runs on the new one.

A request resolves its model version when it arrives, before its body; a reload swaps the
version out and closes its batcher a few seconds later. An upload that takes longer than that
found a closed batcher and got 503 "being unloaded" on /v1 (while /v2 retried on the new
version). Now every protocol goes through the data plane's one rule: a version swapped out
before the images queue is replaced by the one serving now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from reliability_kit import TIMEOUT, Summary
from testkit import ServerFactory, png

from model_export.datasets import Split
from service.repository import RETIRE_GRACE_S

pytestmark = pytest.mark.slow


def test_a_slow_upload_across_a_reload_is_served_by_the_new_version(
    start_server: ServerFactory, fashion_test: Split, summary: Summary
) -> None:
    server = start_server()
    image = png(fashion_test.images[0])
    reloaded = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield image[: len(image) // 2]
        reloaded.wait(10)
        time.sleep(RETIRE_GRACE_S + 1.0)  # the old version's batcher is closed by now
        yield image[len(image) // 2 :]

    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        result["response"] = httpx.post(
            f"{server.url}/v1/models/lenet5-fashion/classify",
            content=slow_body(),
            headers={"Content-Type": "image/png"},
            timeout=TIMEOUT,
        )

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.5)  # the request has resolved its version and is reading its body
    load = httpx.post(
        f"{server.url}/v2/repository/models/lenet5-fashion/load", json={}, timeout=TIMEOUT
    )
    reloaded.set()
    thread.join(30)
    response = result["response"]
    held = load.status_code == 200 and response.status_code == 200
    summary.row(
        "faults/reload-during-upload",
        area="faults",
        tried=f"a /v1 upload held open {RETIRE_GRACE_S + 1:g} s across a reload of its model",
        held=held,
        load_status=load.status_code,
        status=response.status_code,
    )
    assert load.status_code == 200, load.text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["predictions"][0]["index"] == int(fashion_test.labels[0])
