"""Access control, CORS, security headers and request logs, on real server processes.

With CNNSERVE_API_KEYS set, only the health probes and the web page's static files (which
hold no data) are open; a wrong or missing key is a 401 in the error shape of the API asked;
keys never reach a log line, a response or the settings' repr. CORS is off unless
CNNSERVE_CORS_ORIGINS names origins. Every response carries the security headers and a
request id; the access log is one JSON object per line and holds no image bytes.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image, PngImagePlugin
from reliability_kit import TIMEOUT, Summary, native_error, v2_error
from testkit import LiveServer, ServerFactory, png

from model_export.datasets import Split
from service.api import access
from service.config import Settings

KEYS = [f"rel-key-{secrets.token_hex(12)}", f"rel-key-{secrets.token_hex(12)}"]
ADMIN_KEY = f"rel-admin-{secrets.token_hex(12)}"  # the repository's (CNNSERVE_ADMIN_KEYS)
WRONG = f"rel-wrong-{secrets.token_hex(12)}"
APP_ORIGIN = "https://app.example"
EVIL_ORIGIN = "https://evil.example"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
OPEN = ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/", "/ui/app.js"]
PROTECTED = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/lenet5-fashion"),
    ("POST", "/v1/models/lenet5-fashion/classify"),
    ("POST", "/v1/models/lenet5-fashion/feature-maps?layer=conv1"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/models/no-such-model"),  # no probing for names without a key
    ("GET", "/v2"),
    ("GET", "/v2/models/lenet5-fashion"),
    ("POST", "/v2/models/lenet5-fashion/infer"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/lenet5-fashion/unload"),
]


@pytest.fixture(scope="module")
def keyed(module_server_factory: ServerFactory) -> LiveServer:
    # DEBUG: the most a server ever logs, so the most chances to leak a key.
    return module_server_factory(
        api_keys=",".join(KEYS), admin_keys=ADMIN_KEY, cors_origins=APP_ORIGIN, log_level="DEBUG"
    )


@pytest.fixture(scope="module")
def http(keyed: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.url, timeout=TIMEOUT) as client:
        yield client


def _error(response: httpx.Response, path: str) -> str:
    if path.startswith("/v2"):
        return v2_error(response)
    return str(native_error(response)["code"])


@pytest.mark.parametrize("path", OPEN)
def test_probes_and_the_web_page_are_open(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"Authorization": f"Bearer {WRONG}"},
        {"X-API-Key": WRONG},
        {"Authorization": f"Bearer {KEYS[0][:-1]}"},  # a prefix of a real key
        {"Authorization": f"Bearer {KEYS[0]}x"},  # a real key and more
        {"Authorization": f"Basic {KEYS[0]}"},  # the right key in the wrong scheme
        {"Authorization": "Bearer"},
        {"X-API-Key": ""},
    ],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "prefix", "suffix", "basic", "empty", "blank"],
)
def test_everything_else_needs_a_key(
    http: httpx.Client, method: str, path: str, credentials: dict[str, str]
) -> None:
    response = http.request(method, path, headers=credentials, content=b"{}")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    if not path.startswith("/v2"):
        assert _error(response, path) == "unauthorized"
    else:
        assert "API key" in _error(response, path)
    assert all(key not in response.text for key in [*KEYS, ADMIN_KEY, WRONG])


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
@pytest.mark.parametrize("key", KEYS, ids=["first-key", "second-key"])
def test_either_key_in_either_header_lets_a_request_in(
    http: httpx.Client, fashion_test: Split, header: str, key: str
) -> None:
    value = f"Bearer {key}" if header == "Authorization" else key
    response = http.post(
        "/v1/models/lenet5-fashion/classify",
        content=png(fashion_test.images[0]),
        headers={header: value, "Content-Type": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert http.get("/v2/models/lenet5-fashion", headers={header: value}).status_code == 200


def test_keys_are_compared_against_every_key_without_an_early_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[bytes] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    keys = Settings(api_keys=",".join(KEYS)).api_keys
    assert access.key_matches(KEYS[0], keys)  # the first key matches...
    assert len(compared) == 2  # ...and the second is compared all the same
    assert not access.key_matches(WRONG, keys) and len(compared) == 4


def test_keys_never_appear_in_logs_responses_or_settings(
    keyed: LiveServer, http: httpx.Client, fashion_test: Split, summary: Summary
) -> None:
    image = png(fashion_test.images[0])
    for credentials in (
        {"Authorization": f"Bearer {KEYS[0]}"},
        {"X-API-Key": KEYS[1]},
        {"Authorization": f"Bearer {WRONG}"},
        {"X-API-Key": WRONG},
    ):
        for method, path in PROTECTED[:4]:
            response = http.request(
                method, path, content=image, headers=credentials | {"Content-Type": "image/png"}
            )
            assert all(k not in response.text for k in [*KEYS, WRONG])
    settings = Settings(api_keys=",".join(KEYS), admin_keys=ADMIN_KEY)
    dumped = repr(settings) + str(settings) + settings.model_dump_json()
    log = keyed.log()
    leaks = [k for k in [*KEYS, ADMIN_KEY, WRONG] if k in log or k in dumped]
    summary.row(
        "access/keys-not-logged",
        area="access control",
        tried="right and wrong keys in both headers against a DEBUG-level server; grep its "
        "log, the responses and the settings' repr and JSON for the key strings",
        held=not leaks,
        log_lines=len(log.splitlines()),
        leaks=len(leaks),
    )
    assert not leaks, f"keys found in logs or settings: {len(leaks)}"


def test_cors_is_off_unless_configured(
    keyed: LiveServer, server: LiveServer, summary: Summary
) -> None:
    """``server``: the module's default one, without keys or CORS origins (conftest)."""
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    results: dict[str, Any] = {}
    # Not configured: no origin is allowed anything.
    for origin in (APP_ORIGIN, EVIL_ORIGIN):
        answer = httpx.options(
            f"{server.url}/v1/models", headers=preflight | {"Origin": origin}, timeout=TIMEOUT
        )
        plain = httpx.get(f"{server.url}/v1/models", headers={"Origin": origin}, timeout=TIMEOUT)
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in plain.headers
        results[f"off/{origin}"] = answer.status_code
    # Configured: the named origin, and only it; its preflight needs no key (browsers never
    # send credentials on one), its real requests do.
    allowed = httpx.options(
        f"{keyed.url}/v1/models", headers=preflight | {"Origin": APP_ORIGIN}, timeout=TIMEOUT
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    denied = httpx.options(
        f"{keyed.url}/v1/models", headers=preflight | {"Origin": EVIL_ORIGIN}, timeout=TIMEOUT
    )
    assert "access-control-allow-origin" not in denied.headers
    with_key = httpx.get(
        f"{keyed.url}/v1/models",
        headers={"Origin": APP_ORIGIN, "X-API-Key": KEYS[0]},
        timeout=TIMEOUT,
    )
    assert with_key.status_code == 200
    assert with_key.headers["access-control-allow-origin"] == APP_ORIGIN
    # CORS wraps the service middleware: a page on the allowed origin can read why its
    # request was refused.
    refused = httpx.get(f"{keyed.url}/v1/models", headers={"Origin": APP_ORIGIN}, timeout=TIMEOUT)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP_ORIGIN
    evil = httpx.get(
        f"{keyed.url}/v1/models",
        headers={"Origin": EVIL_ORIGIN, "X-API-Key": KEYS[0]},
        timeout=TIMEOUT,
    )
    assert "access-control-allow-origin" not in evil.headers
    summary.row(
        "access/cors",
        area="access control",
        tried="CORS preflights and requests from an allowed and a foreign origin, with "
        "CNNSERVE_CORS_ORIGINS unset and set",
        held=True,
        preflight_allowed_status=allowed.status_code,
        preflight_foreign_status=denied.status_code,
    )


def test_every_response_has_security_headers_and_a_request_id(
    http: httpx.Client, summary: Summary
) -> None:
    auth = {"X-API-Key": KEYS[0]}
    responses = [
        http.get("/health/live"),
        http.get("/"),
        http.get("/ui/app.js"),
        http.get("/v1/models", headers=auth),
        http.get("/v1/models"),  # 401
        http.get("/v1/models/nope", headers=auth),  # 404
        http.post("/v1/models/lenet5-fashion/classify", headers=auth, content=b"x"),  # 415
        http.post("/v2/models/lenet5-fashion/infer", headers=auth, content=b"{"),  # 400
        http.get("/metrics", headers=auth),
    ]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.url, name)
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert len(response.headers["x-request-id"]) == 32
    summary.row(
        "access/security-headers",
        area="access control",
        tried="security headers and a request id on 200, 401, 404, 415, 400, static and "
        "metrics responses",
        held=True,
        responses=len(responses),
    )


def _png_with_marker(marker: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker)
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 77).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_request_logs_are_json_with_request_ids_and_no_image_bytes(
    keyed: LiveServer, http: httpx.Client, summary: Summary
) -> None:
    marker = f"IMAGE-BYTES-{secrets.token_hex(8)}"
    image = _png_with_marker(marker)
    auth = {"X-API-Key": KEYS[0]}
    given = http.post(
        "/v1/models/lenet5-fashion/classify",
        files={"file": (f"{marker}.png", image, "image/png")},
        headers=auth | {"X-Request-ID": "rel-trace-7"},
    )
    assert given.status_code == 200 and given.headers["x-request-id"] == "rel-trace-7"
    raw = http.post(
        "/v1/models/lenet5-fashion/classify",
        content=image,
        headers=auth | {"Content-Type": "image/png", "X-Request-ID": "not a valid id; <x>"},
    )
    generated = raw.headers["x-request-id"]
    assert raw.status_code == 200 and len(generated) == 32 and generated != "rel-trace-7"
    v2 = http.post("/v2/models/lenet5-fashion/infer", content=b"{", headers=auth)
    wanted = {"rel-trace-7", generated, v2.headers["x-request-id"]}
    # The access line is written once the response has gone out: give it a moment.
    deadline = time.monotonic() + 5
    while True:
        lines = keyed.log().splitlines()
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        access = {e["request_id"]: e for e in entries if e.get("logger") == "cnnserve.access"}
        if wanted <= set(access) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for request_id, status in (
        ("rel-trace-7", 200),
        (generated, 200),
        (v2.headers["x-request-id"], 400),
    ):
        entry = access[request_id]
        assert entry["status"] == status and entry["method"] == "POST"
        assert {"ts", "level", "path", "duration_ms", "model"} <= set(entry)
    log = keyed.log()
    image_traces = [
        trace
        for trace in (
            image[8:40].hex(),
            base64.b64encode(image[:48]).decode(),
            image[16:48].decode("latin-1"),
        )
        if trace in log
    ]
    assert not image_traces and marker not in log.replace(f"{marker}.png", "")
    summary.row(
        "access/request-logs",
        area="access control",
        tried="JSON log lines, X-Request-ID kept or generated and returned, and no image "
        "bytes (a marker inside the PNG, its hex and base64) in the log",
        held=True,
        log_lines=len(lines),
        access_lines=len(access),
    )
