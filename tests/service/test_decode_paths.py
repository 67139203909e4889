"""Where images are decoded, and that every path gives the same answers and errors.

With one decode thread (one core per process) photos are decoded on the model's batcher
thread right before their batch; with more, in the pool. A bad image among good ones must
be named the same way on both paths, and the service must go on serving.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from testkit import MODELS

from service import decoder
from service.app import create_app
from service.config import Settings
from service.decoding import decode_rows

MODEL = "mobilenetv2-imagenet"


@pytest.fixture(params=[1, 2], ids=["decode_threads=1", "decode_threads=2"])
def served(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, list[str], int]]:
    """A client, and the names of the threads that decoded each image since the last call."""
    threads: list[str] = []

    def recording(opened: list[Any], *args: Any, **kwargs: Any) -> None:
        threads.extend(threading.current_thread().name for image in opened if image is not None)
        decode_rows(opened, *args, **kwargs)

    monkeypatch.setattr(decoder, "decode_rows", recording)
    settings = Settings(providers="cpu", model_dir=MODELS, decode_threads=request.param)
    with TestClient(create_app(settings)) as client:
        yield client, threads, request.param


def classify(client: TestClient, images: list[tuple[str, bytes]]) -> Any:
    files = [("file", (name, data, "application/octet-stream")) for name, data in images]
    return client.post(f"/v1/models/{MODEL}/classify?top_k=1", files=files)


def test_photos_are_decoded_where_the_threads_say(
    served: tuple[TestClient, list[str], int], photos: dict[str, bytes]
) -> None:
    client, threads, decode_threads = served
    response = classify(
        client, [("chelsea.png", photos["chelsea"]), ("coffee.png", photos["coffee"])]
    )
    assert response.status_code == 200, response.text
    top1 = [r["predictions"][0]["label"] for r in response.json()["results"]]
    assert top1[0] in {"Egyptian cat", "tabby", "tiger cat"} and top1[1] == "espresso"
    expected = f"batcher-{MODEL}" if decode_threads == 1 else "decode"
    assert len(threads) == 2 and all(name.startswith(expected) for name in threads), threads


def test_a_bad_image_among_good_ones_is_named_and_the_service_goes_on(
    served: tuple[TestClient, list[str], int], photos: dict[str, bytes]
) -> None:
    client, threads, decode_threads = served
    chelsea = photos["chelsea"]
    truncated = chelsea[: len(chelsea) // 2]  # the header reads; the pixels do not
    response = classify(
        client,
        [("chelsea.png", chelsea), ("coffee.png", photos["coffee"]), ("cut.png", truncated)],
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_image"
    assert error["detail"]["index"] == 2 and error["detail"]["filename"] == "cut.png"
    assert "image 2 (cut.png)" in error["message"]
    if decode_threads == 1:
        assert threads and all(name.startswith(f"batcher-{MODEL}") for name in threads)

    again = classify(client, [("chelsea.png", chelsea)])
    assert again.status_code == 200
    ready = client.get("/health/ready").json()
    assert ready["status"] == "ready"
