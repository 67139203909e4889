"""The one-pass multipart parser (service/api/uploads.py) and the classify route.

The parser is checked against what real clients send (httpx's encoder, with any names,
filenames and bytes), against hostile bodies (it may only raise the two domain errors);
the classify route's parameters are checked as FastAPI checks the other routes'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart.multipart import parse_options_header
from testkit import MODELS, png

from service.api.uploads import FIELD, Upload, _boundary, _disposition, parse_multipart
from service.app import create_app
from service.config import Settings
from service.errors import InvalidParameterError, TooManyImagesError

LIMIT = 8

# Bytes that look like a boundary or a part break are the interesting ones inside a part.
part_bytes = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n"])),
    max_size=8,
).map(b"".join)
filenames = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='"\\'),
    min_size=1,
    max_size=20,
)
field_names = st.sampled_from(["model", "top_k", "comment", "files", "File"])


def encode(
    files: list[tuple[str, bytes]], data: dict[str, str] | None = None, field: str = FIELD
) -> tuple[bytes, str]:
    """A body and Content-Type exactly as httpx (the SDK's transport) sends them."""
    request = httpx.Request(
        "POST",
        "http://test/",
        files=[(field, (name, content, "image/png")) for name, content in files],
        data=data,
    )
    return request.read(), request.headers["content-type"]


@settings(max_examples=150, deadline=None)
@given(
    files=st.lists(st.tuples(filenames, part_bytes), min_size=1, max_size=LIMIT),
    data=st.dictionaries(field_names, st.text(max_size=10), max_size=3),
)
def test_what_a_client_sends_comes_back_in_order(
    files: list[tuple[str, bytes]], data: dict[str, str]
) -> None:
    body, content_type = encode(files, data)
    assert parse_multipart(body, content_type, max_images=LIMIT) == [
        Upload(name, content) for name, content in files
    ]


@settings(max_examples=300, deadline=None)
@given(
    files=st.lists(st.tuples(filenames, part_bytes), min_size=1, max_size=3),
    cut=st.integers(min_value=0),
    noise=st.binary(max_size=16),
)
def test_a_broken_body_is_a_domain_error_or_parts(
    files: list[tuple[str, bytes]], cut: int, noise: bytes
) -> None:
    body, content_type = encode(files)
    at = cut % (len(body) + 1)
    broken = body[:at] + noise + body[at + len(noise) :]
    try:
        uploads = parse_multipart(broken, content_type, max_images=LIMIT)
    except (InvalidParameterError, TooManyImagesError):
        return
    assert 1 <= len(uploads) <= LIMIT


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_domain_error_or_parts(body: bytes) -> None:
    with contextlib.suppress(InvalidParameterError, TooManyImagesError):
        parse_multipart(body, "multipart/form-data; boundary=x", max_images=LIMIT)


# Header values as clients write them, and as they may: quoted or not, with the characters
# that need care inside quotes (; = and space), backslashes, RFC 2231's name*=.
header_text = st.text(st.sampled_from('ab.png;= \\"x-_'), max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    name=header_text,
    filename=st.one_of(st.none(), header_text),
    quoted=st.booleans(),
    space=st.sampled_from(["", " "]),
    star=st.booleans(),
)
def test_the_plain_header_reader_agrees_with_the_general_parser(
    name: str, filename: str | None, quoted: bool, space: str, star: bool
) -> None:
    """``_disposition`` and ``_boundary`` read the common forms without python-multipart's
    parser and hand the rest to it: both must always give what that parser gives."""

    def value(text: str) -> str:
        return f'"{text}"' if quoted else text

    disposition = f"form-data;{space}name={value(name)}"
    if filename is not None:
        disposition += f";{space}filename{'*' if star else ''}={value(filename)}"
    raw = disposition.encode()
    options = parse_options_header(raw)[1]
    assert _disposition(raw) == (options.get(b"name"), options.get(b"filename"))
    content_type = f"multipart/form-data;{space}boundary={value(name)}"
    assert _boundary(content_type) == parse_options_header(content_type)[1].get(b"boundary")


def test_the_boundary_may_be_quoted() -> None:
    body = b'--a b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\nDATA'
    body += b"\r\n--a b--\r\n"
    assert parse_multipart(body, 'multipart/form-data; boundary="a b"', max_images=1) == [
        Upload("x.png", b"DATA")
    ]


def test_more_images_than_the_limit() -> None:
    body, content_type = encode([("a.png", b"1")] * (LIMIT + 1))
    with pytest.raises(TooManyImagesError):
        parse_multipart(body, content_type, max_images=LIMIT)


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"--x\r\n\r\n", "multipart/form-data", "no boundary"),
        (b"", "multipart/form-data; boundary=" + "b" * 71, "longer than 70"),
        (b"just bytes", "multipart/form-data; boundary=x", "no part"),
        (
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
            "multipart/form-data; boundary=x",
            "unterminated part",
        ),
        (
            b"--x\r\nContent-Disposition: form-data" + b"; a=b" * 4000 + b"\r\n\r\n\r\n--x--",
            "multipart/form-data; boundary=x",
            "part headers",
        ),
        (b"--xjunk\r\n\r\n\r\n--x--", "multipart/form-data; boundary=x", "line break"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, content_type: str, problem: str) -> None:
    with pytest.raises(InvalidParameterError, match=problem):
        parse_multipart(body, content_type, max_images=LIMIT)


def test_a_text_value_is_not_an_image() -> None:
    body, content_type = encode([("a.png", b"1")], {FIELD: "not a file"}, field="other")
    with pytest.raises(InvalidParameterError, match="file upload"):
        parse_multipart(body, content_type, max_images=LIMIT)


def test_no_image_names_the_fields_that_came() -> None:
    body, content_type = encode([("a.png", b"1")], {"top_k": "3"}, field="image")
    with pytest.raises(InvalidParameterError) as raised:
        parse_multipart(body, content_type, max_images=LIMIT)
    assert raised.value.detail == {"field": FIELD, "received": ["image", "top_k"]}


# -- the classify route ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(providers="cpu", model_dir=MODELS))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("query", "status", "answer"),
    [
        ("", 200, 5),
        ("top_k=3", 200, 3),
        ("top_k=%203", 200, 3),
        ("top_k=+2", 200, 2),
        ("top_k=abc", 400, "top_k"),
        ("top_k=1e9", 400, "top_k"),
        ("top_k=", 400, "top_k"),
        ("top_k=0", 400, "top_k"),
        ("top_k=11", 400, "top_k"),
        ("top_k=-1", 400, "top_k"),
        ("version=1", 200, 5),
        ("version=7", 404, "model_not_found"),
        ("version=x1", 400, "version"),
        ("version=1&top_k=x", 400, "top_k"),
        ("top_k=2&top_k=4", 200, 4),
    ],
)
def test_the_classify_route_checks_its_parameters(
    client: TestClient, query: str, status: int, answer: int | str
) -> None:
    """200 with ``answer`` predictions, or the error naming ``answer`` (the parameter, or the
    code): classify is a raw ASGI endpoint, and checks what FastAPI checks elsewhere."""
    image = png(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    response = client.post(
        f"/v1/models/lenet5-fashion/classify?{query}",
        files={FIELD: ("a.png", image, "image/png")},
    )
    assert response.status_code == status, response.text
    if status == 200:
        assert len(response.json()["results"][0]["predictions"]) == answer
        return
    error = response.json()["error"]
    if status == 404:
        assert error["code"] == answer
        return
    assert error["code"] == "invalid_parameter"
    named = error["detail"].get("parameter") or error["detail"]["errors"][0]["parameter"]
    assert named == answer


def test_bad_parameters_read_the_same_on_the_classify_route_and_fastapis_routes(
    client: TestClient,
) -> None:
    """The same bad ?version= on classify (checked by hand) and on feature-maps (checked by
    FastAPI): the same error, words included."""
    image = png(np.zeros((28, 28), np.uint8))
    answers = [
        client.post(
            f"/v1/models/lenet5-fashion/{endpoint}?version=x1",
            files={FIELD: ("a.png", image, "image/png")},
        )
        for endpoint in ("classify", "feature-maps")
    ]
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].json() == answers[1].json()


def test_the_classify_route_is_counted_under_its_template(client: TestClient) -> None:
    client.post("/v1/models/nope/classify", content=b"x", headers={"Content-Type": "image/png"})
    metrics = client.get("/metrics").text
    assert 'endpoint="/v1/models/{name}/classify"' in metrics
    assert "/v1/models/nope/classify" not in metrics
    # A bad query is refused before anything else: still the route's, not "unmatched".
    refused = client.post(
        "/v1/models/lenet5-fashion/classify?top_k=x",
        content=b"x",
        headers={"Content-Type": "image/png"},
    )
    assert refused.status_code == 400
    metrics = client.get("/metrics").text
    assert (
        'cnnserve_requests_total{endpoint="/v1/models/{name}/classify",'
        'model="lenet5-fashion",status="400"}'
    ) in metrics
    assert 'endpoint="unmatched"' not in metrics


def test_an_unexpected_error_is_a_json_500_with_the_request_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the direct classify route as on FastAPI's routes: the error table's 500, the
    request id in its body and headers, the security headers; never a traceback."""
    app = create_app(Settings(providers="cpu", model_dir=MODELS))

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        monkeypatch.setattr(app.state.cnnserve.dataplane, "classify", broken)
        monkeypatch.setattr(app.state.cnnserve.dataplane, "feature_maps", broken)
        image = png(np.zeros((28, 28), np.uint8))
        for endpoint in ("classify", "feature-maps?layer=conv1"):
            answer = test_client.post(
                f"/v1/models/lenet5-fashion/{endpoint}",
                files={FIELD: ("a.png", image, "image/png")},
                headers={"X-Request-ID": f"req-{endpoint[:8]}"},
            )
            assert answer.status_code == 500, answer.text
            error = answer.json()["error"]
            assert error["code"] == "internal_error"
            assert error["detail"] == {"request_id": f"req-{endpoint[:8]}"}
            assert answer.headers["x-request-id"] == f"req-{endpoint[:8]}"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "a bug" not in answer.text
        metrics = test_client.get("/metrics").text
        assert (
            'endpoint="/v1/models/{name}/classify",model="lenet5-fashion",status="500"' in metrics
        )
