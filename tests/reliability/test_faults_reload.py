"""A reload while a slow upload holds the old version: the request is served.

A request resolves its model version when it arrives, before its body; a reload swaps the
version out. An upload that took longer than 5 s found the old version's batcher closed and
got 503 "being unloaded" on /v1 (while /v2 retried on the new version). Now a swapped-out
version is kept until no request holds it, and if one is closed all the same (a request held
it past its deadline and one second), the data plane's one rule for every protocol runs the
request on the version serving now.
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

pytestmark = pytest.mark.slow
HOLD_S = 6.0
ADMIN_KEY = "reload-admin-key"


def test_a_slow_upload_across_a_reload_is_served_by_the_new_version(
    start_server: ServerFactory, fashion_test: Split, summary: Summary
) -> None:
    server = start_server(admin_keys=ADMIN_KEY)
    image = png(fashion_test.images[0])
    reloaded = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield image[: len(image) // 2]
        reloaded.wait(10)
        time.sleep(HOLD_S)  # the old version had been closed 5 s after the swap
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
        f"{server.url}/v2/repository/models/lenet5-fashion/load",
        json={},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=TIMEOUT,
    )
    reloaded.set()
    thread.join(30)
    response = result["response"]
    held = load.status_code == 200 and response.status_code == 200
    summary.row(
        "faults/reload-during-upload",
        area="faults",
        tried=f"a /v1 upload held open {HOLD_S:g} s across a reload of its model",
        held=held,
        load_status=load.status_code,
        status=response.status_code,
    )
    assert load.status_code == 200, load.text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["predictions"][0]["index"] == int(fashion_test.labels[0])
