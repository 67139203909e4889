"""Client and AsyncClient against a fake server behind httpx.MockTransport.

Every test that takes ``harness`` runs twice, once per client.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cnn_client import (
    AsyncClient,
    Client,
    CnnServeConnectionError,
    CnnServeError,
    CnnServeTimeoutError,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    Prediction,
    ServerError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
)

Parse = Callable[[httpx.Request], list[Any]]
ErrorResponse = Callable[..., httpx.Response]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


GREY = np.random.default_rng(3).integers(0, 256, size=(28, 28), dtype=np.uint8)
GREY_PNG = _png(GREY)


# Health and metadata -----------------------------------------------------------------


def test_live_and_ready(harness: Any, fake: Any) -> None:
    client = harness.client(fake)
    assert client.live() is True
    assert client.ready() is True
    fake.ready = False
    assert client.ready() is False
    assert [r.url.path for r in fake.requests] == ["/health/live"] + ["/health/ready"] * 2


def test_ready_is_never_retried(harness: Any, fake: Any) -> None:
    fake.ready = False
    assert harness.client(fake, retries=5).ready() is False
    assert len(fake.requests) == 1
    assert harness.sleeps == []


def test_health_raises_on_other_statuses(harness: Any, error_response: ErrorResponse) -> None:
    client = harness.client(lambda request: error_response(500, "internal", "boom"))
    with pytest.raises(ServerError, match="boom"):
        client.live()


def test_models_parses_model_info_and_keeps_unknown_fields(harness: Any, fake: Any) -> None:
    [info] = harness.client(fake).models()
    assert info.name == "lenet5-fashion"
    assert info.versions == ("1", "2")
    assert info.latest_version == "2"
    assert info.state == "ready"
    assert info.providers == ("CPUExecutionProvider",)
    assert info.labels[9] == "Ankle boot"
    assert info.input is not None
    assert (info.input.color_mode, info.input.size, info.input.shape) == (
        "L",
        (28, 28),
        (-1, 1, 28, 28),
    )
    assert (info.input.mean, info.input.std, info.input.resize) == ((0.286,), (0.353,), "stretch")
    conv1, fc3 = info.layers
    assert (conv1.name, conv1.op_type, conv1.output_shape) == ("conv1", "Conv", (6, 28, 28))
    assert conv1.receptive_field is not None
    assert (conv1.receptive_field.size, conv1.receptive_field.jump) == ((5, 5), (1, 1))
    assert fc3.receptive_field is None
    assert info.description == "LeNet-5"
    assert info.raw["training"] == {"test_accuracy": 0.9}


def test_model_by_name_and_version(harness: Any, fake: Any) -> None:
    info = harness.client(fake).model("lenet5-fashion", version=1)
    assert info.name == "lenet5-fashion"
    assert fake.requests[0].url.path == "/v1/models/lenet5-fashion"
    assert fake.requests[0].url.params["version"] == "1"


def test_unknown_model_raises_not_found_with_the_servers_error(harness: Any, fake: Any) -> None:
    with pytest.raises(NotFoundError) as caught:
        harness.client(fake).model("nope")
    error = caught.value
    assert (error.status, error.code, error.message) == (404, "model_not_found", "no such model")
    assert error.detail == {"name": "nope"}
    assert "model_not_found" in str(error)


def test_model_names_are_quoted_into_one_path_segment(harness: Any, fake: Any) -> None:
    with pytest.raises(NotFoundError):
        harness.client(fake).model("a/b c")
    assert fake.requests[0].url.raw_path == b"/v1/models/a%2Fb%20c"


def test_base_url_may_carry_a_path_prefix(harness: Any) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"models": []})

    assert harness.client(handler, base_url="http://proxy.test/cnnserve/").models() == []
    assert seen == ["/cnnserve/v1/models"]


# Classification ----------------------------------------------------------------------


def test_classify_sends_one_multipart_file_and_parses_predictions(
    harness: Any, fake: Any, parse_multipart: Parse, tmp_path: Path
) -> None:
    path = tmp_path / "boot.png"
    path.write_bytes(GREY_PNG)
    result = harness.client(fake).classify(path, model="lenet5-fashion", top_k=3)

    request = fake.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/v1/models/lenet5-fashion/classify"
    assert dict(request.url.params) == {"top_k": "3"}
    [part] = parse_multipart(request)
    assert (part.name, part.filename, part.content_type) == ("file", "boot.png", "image/png")
    assert part.content == GREY_PNG

    assert (result.model, result.model_version, result.filename) == (
        "lenet5-fashion",
        "2",
        "boot.png",
    )
    first = len(GREY_PNG) % 10
    assert result.predictions == tuple(
        Prediction(
            index=(first + i) % 10, label=fake.LABELS[(first + i) % 10], probability=0.5 ** (i + 1)
        )
        for i in range(3)
    )
    assert result.top == result.predictions[0]


def test_classify_passes_the_version(harness: Any, fake: Any) -> None:
    result = harness.client(fake).classify(GREY, model="lenet5-fashion", version="1")
    assert fake.requests[0].url.params["version"] == "1"
    assert result.model_version == "1"


def _image_inputs(tmp_path: Path) -> dict[str, Callable[[], Any]]:
    path = tmp_path / "shoe.png"
    path.write_bytes(GREY_PNG)
    return {
        "str path": lambda: str(path),
        "Path": lambda: path,
        "bytes": lambda: GREY_PNG,
        "file object": lambda: path.open("rb"),
        "PIL image": lambda: Image.fromarray(GREY),
        "numpy HW": lambda: GREY,
        "numpy HWC": lambda: GREY[:, :, np.newaxis],
    }


@pytest.mark.parametrize(
    "kind", ["str path", "Path", "bytes", "file object", "PIL image", "numpy HW", "numpy HWC"]
)
def test_every_image_kind_arrives_as_the_same_pixels(
    harness: Any, fake: Any, parse_multipart: Parse, tmp_path: Path, kind: str
) -> None:
    image = _image_inputs(tmp_path)[kind]()
    result = harness.client(fake).classify(image, model="lenet5-fashion")
    [part] = parse_multipart(fake.requests[0])
    assert part.filename == result.filename
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(part.content))), GREY)
    if hasattr(image, "close"):
        image.close()


def test_api_key_is_sent_as_a_bearer_token(harness: Any, fake: Any) -> None:
    harness.client(fake, api_key="s3cret").models()
    harness.client(fake).models()
    assert fake.requests[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in fake.requests[1].headers


def test_unauthorized(harness: Any, error_response: ErrorResponse) -> None:
    client = harness.client(lambda r: error_response(401, "unauthorized", "bad key"))
    with pytest.raises(UnauthorizedError) as caught:
        client.models()
    assert caught.value.status == 401


def _sizes(fake: Any, parse_multipart: Parse) -> list[int]:
    return [len(parse_multipart(request)) for request in fake.requests]


def _images(count: int) -> list[bytes]:
    # Distinct lengths, so that every image gets its own top class from the fake.
    return [GREY_PNG + b"\x00" * i for i in range(count)]


def test_classify_many_sends_64_images_per_request_in_order(
    harness: Any, fake: Any, parse_multipart: Parse
) -> None:
    images = _images(150)
    results = harness.client(fake).classify_many(images, model="lenet5-fashion", top_k=1)
    assert _sizes(fake, parse_multipart) == [64, 64, 22]
    assert [r.filename for r in results] == [f"image-{i}.png" for i in range(150)]
    assert [r.top.index for r in results] == [len(image) % 10 for image in images]


def test_classify_many_learns_the_servers_limit_from_a_413(
    harness: Any, fake: Any, parse_multipart: Parse
) -> None:
    fake.max_images = 10
    images = _images(25)
    results = harness.client(fake).classify_many(images, model="lenet5-fashion", top_k=1)
    assert _sizes(fake, parse_multipart) == [25, 10, 10, 5]
    assert [r.filename for r in results] == [f"image-{i}.png" for i in range(25)]
    assert [r.top.index for r in results] == [len(image) % 10 for image in images]


def test_classify_many_halves_chunks_when_the_413_names_no_limit(
    harness: Any, fake: Any, parse_multipart: Parse
) -> None:
    fake.max_images, fake.announce_limit = 5, False
    results = harness.client(fake).classify_many(_images(20), model="lenet5-fashion")
    assert _sizes(fake, parse_multipart) == [20, 10, 5, 5, 5, 5]
    assert [r.filename for r in results] == [f"image-{i}.png" for i in range(20)]


def test_classify_many_gives_up_when_one_image_is_too_many(
    harness: Any, fake: Any, parse_multipart: Parse
) -> None:
    fake.max_images = 0  # a limit of 0 is no usable limit: the client halves, down to one
    with pytest.raises(TooLargeError) as caught:
        harness.client(fake).classify_many(_images(3), model="lenet5-fashion")
    assert caught.value.code == "too_many_images"
    assert _sizes(fake, parse_multipart) == [3, 1]


def test_other_413s_are_raised_without_rechunking(
    harness: Any, error_response: ErrorResponse
) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return error_response(413, "body_too_large", "32 MiB at most", limit=33554432)

    with pytest.raises(TooLargeError) as caught:
        harness.client(handler).classify_many(_images(4), model="lenet5-fashion")
    assert (caught.value.code, caught.value.detail["limit"]) == ("body_too_large", 33554432)
    assert len(calls) == 1


def test_classify_many_of_nothing_sends_nothing(harness: Any, fake: Any) -> None:
    assert harness.client(fake).classify_many([], model="lenet5-fashion") == []
    assert fake.requests == []


# Feature maps ------------------------------------------------------------------------


def test_feature_maps_decode_base64_float32(harness: Any, fake: Any) -> None:
    maps = harness.client(fake).feature_maps(GREY, model="lenet5-fashion", layers=["fc3", "conv1"])
    request = fake.requests[0]
    assert request.url.path == "/v1/models/lenet5-fashion/feature-maps"
    assert request.url.params.get_list("layer") == ["fc3", "conv1"]
    assert request.url.params["format"] == "json"
    assert [m.name for m in maps] == ["fc3", "conv1"]
    fmap = maps[1]
    assert fmap.array.dtype == np.float32
    assert fmap.shape == (2, 3, 4)
    np.testing.assert_array_equal(fmap.array, fake.ACTIVATIONS)
    assert not fmap.array.flags.writeable
    assert fmap.op_type == "Conv"
    assert fmap.receptive_field is not None
    assert (fmap.receptive_field.size, fmap.receptive_field.jump) == ((5, 5), (2, 2))
    assert fmap.receptive_field.start == (2.0, 2.0)
    assert (fmap.stats.min, fmap.stats.max, fmap.stats.mean) == (-1.0, 4.75, 1.875)


def test_one_layer_name_is_one_layer_not_its_letters(harness: Any, fake: Any) -> None:
    maps = harness.client(fake).feature_maps(GREY, model="lenet5-fashion", layers="conv1")
    assert [m.name for m in maps] == ["conv1"]


def test_unknown_layer_is_invalid_input_listing_the_valid_ones(harness: Any, fake: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        harness.client(fake).feature_maps(GREY, model="lenet5-fashion", layers=["nope"])
    assert caught.value.code == "unknown_layer"
    assert caught.value.detail["valid"] == ["conv1", "fc3"]


def test_feature_map_png(harness: Any, fake: Any) -> None:
    png = harness.client(fake).feature_map_png(GREY, model="lenet5-fashion", layer="conv1")
    assert png == fake.PNG
    params = fake.requests[0].url.params
    assert (params.get_list("layer"), params["format"]) == (["conv1"], "png")


def test_feature_map_png_that_is_not_a_png(harness: Any) -> None:
    client = harness.client(lambda r: httpx.Response(200, json={"layers": []}))
    with pytest.raises(InvalidResponseError):
        client.feature_map_png(GREY, model="m", layer="conv1")


# Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, InvalidInputError),
        (401, UnauthorizedError),
        (403, UnauthorizedError),
        (404, NotFoundError),
        (409, CnnServeError),
        (413, TooLargeError),
        (415, InvalidInputError),
        (422, InvalidInputError),
        (500, ServerError),
        (502, ServerError),
        (503, UnavailableError),
    ],
)
def test_statuses_map_to_the_error_tree(
    harness: Any, error_response: ErrorResponse, status: int, error_type: type
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error_response(status, "some_code", "what went wrong", key="value")

    with pytest.raises(CnnServeError) as caught:
        harness.client(handler, retries=0).model("m")
    error = caught.value
    assert type(error) is error_type
    assert (error.status, error.code, error.message) == (status, "some_code", "what went wrong")
    assert error.detail == {"key": "value"}


def test_error_bodies_of_another_shape_still_map(harness: Any) -> None:
    html = httpx.Response(502, text="<html>Bad Gateway from nginx</html>")
    with pytest.raises(ServerError) as caught:
        harness.client(lambda r: html).models()
    assert (caught.value.status, caught.value.code) == (502, "bad_gateway")
    assert "nginx" in caught.value.message

    fastapi_default = httpx.Response(422, json={"detail": [{"msg": "field required"}]})
    with pytest.raises(InvalidInputError) as caught_422:
        harness.client(lambda r: fastapi_default).models()
    assert caught_422.value.code == "unprocessable_entity"


@pytest.mark.parametrize(
    "body",
    [
        {"text": "not json"},
        {"json": ["a", "list"]},
        {"json": {"modelz": []}},
        {"json": {"models": [{"versions": ["1"]}]}},
    ],
    ids=["not json", "not an object", "no models key", "model without a name"],
)
def test_unreadable_responses_raise_invalid_response(harness: Any, body: dict[str, Any]) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        harness.client(lambda r: httpx.Response(200, **body)).models()
    assert (caught.value.status, caught.value.code) == (200, "invalid_response")


def test_a_result_count_that_does_not_match_the_uploads(harness: Any) -> None:
    body = {"model": "m", "model_version": "1", "results": []}
    with pytest.raises(InvalidResponseError, match="0 results for 1 images"):
        harness.client(lambda r: httpx.Response(200, json=body)).classify(GREY, model="m")


@pytest.mark.parametrize("data", ["AAAA", "!!not base64!!"], ids=["short", "garbage"])
def test_feature_data_that_does_not_fit_its_shape(harness: Any, data: str) -> None:
    layer = {"name": "conv1", "op_type": "Conv", "shape": [1, 2, 2], "stats": {}, "data": data}
    client = harness.client(lambda r: httpx.Response(200, json={"layers": [layer]}))
    with pytest.raises(InvalidResponseError):
        client.feature_maps(GREY, model="m", layers=["conv1"])


@pytest.mark.parametrize(
    ("exception", "error_type", "code"),
    [
        (httpx.ConnectError("refused"), CnnServeConnectionError, "connection_error"),
        (httpx.RemoteProtocolError("reset"), CnnServeConnectionError, "connection_error"),
        (httpx.ReadTimeout("slow"), CnnServeTimeoutError, "timeout"),
        (httpx.ConnectTimeout("slow"), CnnServeTimeoutError, "timeout"),
        (httpx.DecodingError("gzip"), InvalidResponseError, "invalid_response"),
    ],
)
def test_httpx_errors_never_escape(
    harness: Any, exception: Exception, error_type: type, code: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    with pytest.raises(CnnServeError) as caught:
        harness.client(handler).classify(GREY, model="m")
    assert type(caught.value) is error_type
    assert (caught.value.status, caught.value.code) == (None, code)
    assert caught.value.__cause__ is exception
    assert "/v1/models/m/classify" in caught.value.message


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with Client(url, timeout=5) as client, pytest.raises(CnnServeConnectionError):
        client.live()

    async def run() -> None:
        async with AsyncClient(url, timeout=5) as client:
            await client.live()

    with pytest.raises(CnnServeConnectionError):
        asyncio.run(run())


@pytest.mark.parametrize("url", ["ftp://host", "no scheme", "http://"])
def test_bad_base_urls_are_refused_up_front(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client(url)


def test_timeout_goes_on_every_request(harness: Any, fake: Any) -> None:
    harness.client(fake, timeout=2.5).models()
    assert fake.requests[0].extensions["timeout"] == dict.fromkeys(
        ("connect", "read", "write", "pool"), 2.5
    )


# Retries -----------------------------------------------------------------------------


def test_503_is_retried_honouring_retry_after(harness: Any, fake: Any) -> None:
    fake.busy, fake.retry_after = 2, "3"
    result = harness.client(fake, retries=3).classify(GREY, model="lenet5-fashion")
    assert result.model == "lenet5-fashion"
    assert harness.sleeps == [3.0, 3.0]
    assert len(fake.requests) == 3
    assert len({request.content for request in fake.requests}) == 1  # the same body each time


def test_503_without_retry_after_backs_off_exponentially(harness: Any, fake: Any) -> None:
    fake.busy = 3
    harness.client(fake, retries=3, backoff=0.25).models()
    assert harness.sleeps == [0.25, 0.5, 1.0]


def test_retry_after_as_an_http_date(harness: Any, fake: Any) -> None:
    fake.busy = 1
    fake.retry_after = email.utils.formatdate(time.time() + 30, usegmt=True)
    harness.client(fake).models()
    [delay] = harness.sleeps
    assert 25 <= delay <= 30


def test_a_huge_retry_after_is_capped(harness: Any, fake: Any) -> None:
    fake.busy, fake.retry_after = 1, "3600"
    harness.client(fake).models()
    assert harness.sleeps == [60.0]


def test_unavailable_after_every_retry(harness: Any, fake: Any) -> None:
    fake.busy, fake.retry_after = 10, "1.5"
    with pytest.raises(UnavailableError) as caught:
        harness.client(fake, retries=2).models()
    assert (caught.value.status, caught.value.code) == (503, "overloaded")
    assert caught.value.retry_after == 1.5
    assert len(fake.requests) == 3
    assert harness.sleeps == [1.5, 1.5]


def test_no_retries_when_retries_is_zero(harness: Any, fake: Any) -> None:
    fake.busy = 1
    with pytest.raises(UnavailableError):
        harness.client(fake, retries=0).models()
    assert harness.sleeps == []


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        Client("http://x", retries=-1)


# One core, two shells ----------------------------------------------------------------


def test_both_clients_send_identical_requests(fake: Any, parse_multipart: Parse) -> None:
    def calls(client: Any) -> None:
        client.models()
        client.classify(GREY, model="lenet5-fashion", top_k=2, version=1)
        client.feature_maps(GREY, model="lenet5-fashion", layers=["conv1", "fc3"])

    transport = httpx.MockTransport(fake)
    with Client("http://cnnserve.test", api_key="k", transport=transport) as client:
        calls(client)

    async def run_async() -> None:
        async with AsyncClient("http://cnnserve.test", api_key="k", transport=transport) as aclient:
            await aclient.models()
            await aclient.classify(GREY, model="lenet5-fashion", top_k=2, version=1)
            await aclient.feature_maps(GREY, model="lenet5-fashion", layers=["conv1", "fc3"])

    asyncio.run(run_async())

    def shape(request: httpx.Request) -> tuple[Any, ...]:
        headers = {
            k: v for k, v in request.headers.items() if k not in ("content-type", "content-length")
        }
        parts = (
            [(p.name, p.filename, p.content) for p in parse_multipart(request)]
            if request.content
            else []
        )
        return (request.method, str(request.url), headers, parts)

    sync_requests, async_requests = fake.requests[:3], fake.requests[3:]
    assert [shape(r) for r in sync_requests] == [shape(r) for r in async_requests]


def test_many_concurrent_async_calls_share_one_client(fake: Any) -> None:
    fake.max_images = 4
    batches = [_images(n) for n in range(1, 12)]

    async def run() -> list[Any]:
        transport = httpx.MockTransport(fake)
        async with AsyncClient("http://cnnserve.test", transport=transport) as client:
            return await asyncio.gather(
                *(client.classify_many(batch, model="lenet5-fashion", top_k=1) for batch in batches)
            )

    for batch, results in zip(batches, asyncio.run(run()), strict=True):
        assert [r.top.index for r in results] == [len(image) % 10 for image in batch]
