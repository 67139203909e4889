"""Cost of one request: the control plane and the connections (issue #15).

What one request, or a handful, could do to a server on 127.0.0.1 before: freeze it
(half-sent heads holding every file descriptor; a stalled client keeping a drained process
alive), bloat it (40 model reloads: 2.4 GB kept), or reconfigure it (any web page unloading
models with a cross-site POST; DNS rebinding reading the answers). Each test here crafts the
attack itself, sends it to a real ``cnnserve serve`` (raw sockets where an HTTP client would
tidy the problem away) and measures the server from outside: statuses, probe latency, RSS,
seconds to recover. Each records its figures for docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import secrets
import signal
import socket
import struct
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from reliability_kit import TIMEOUT, Summary, rss_mib, v2_error
from testkit import LiveServer, ServerFactory, free_port, metric_value, png

from model_export.datasets import Split
from service.config import Settings
from service.connections import BoundedH11Protocol

AREA = "control plane and connections"
ADMIN_KEY = f"cp-admin-{secrets.token_hex(12)}"
API_KEY = f"cp-infer-{secrets.token_hex(12)}"
UTF8_KEY = f"clé-ключ-鍵-{secrets.token_hex(6)}"  # arrives as its UTF-8 bytes
ADMIN = {"X-API-Key": ADMIN_KEY}
REQUEST_TIMEOUT_S = 3.0
HEAD_TIMEOUT_S = 2.0
FD_LIMIT = 256
RELOAD = "/v2/repository/models/mobilenetv2-imagenet/load"
CLASSIFY = "/v1/models/lenet5-fashion/classify"
TARGET = "resnet-fashion"  # of the cross-site unload
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


# -- servers and raw sockets ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(module_server_factory: ServerFactory) -> LiveServer:
    """Inference keys (one of them UTF-8) and an admin key."""
    return module_server_factory(api_keys=f"{API_KEY},{UTF8_KEY}", admin_keys=ADMIN_KEY)


@pytest.fixture(scope="module")
def admin(module_server_factory: ServerFactory) -> LiveServer:
    """An admin key (inference open) and a short request deadline: the repository's attacks.
    Before CNNSERVE_ADMIN_KEYS existed, this was a server whose repository anyone could use."""
    return module_server_factory(admin_keys=ADMIN_KEY, request_timeout_s=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def limited(module_server_factory: ServerFactory) -> LiveServer:
    """A short head timeout and, once started, a limit of 256 file descriptors."""
    server = module_server_factory(head_timeout_s=HEAD_TIMEOUT_S)
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    return server


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_until_closed(sock: socket.socket, until: float) -> tuple[bytes, bool]:
    """What the server sends until it closes (True) or ``until`` (monotonic) passes."""
    data = b""
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _responses(sock: socket.socket, count: int, until: float) -> list[tuple[int, bytes, bytes]]:
    """Up to ``count`` whole responses (status, head, body) read off ``sock``."""
    data, found = b"", []
    while len(found) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            size = int(length.group(1)) if length else 0
            if len(data) >= head_end + 4 + size:
                body = data[head_end + 4 : head_end + 4 + size]
                found.append((int(head[9:12]), head, body))
                data = data[head_end + 4 + size :]
                continue
        more = _read_some(sock, until)
        if not more:
            break
        data += more
    return found


def _read_some(sock: socket.socket, until: float) -> bytes:
    """The next bytes, or b"" when the server closed or ``until`` passed."""
    left = until - time.monotonic()
    if left <= 0:
        return b""
    sock.settimeout(left)
    try:
        return sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return b""


def _statuses(data: bytes) -> list[int]:
    return [int(m.group(1)) for m in _STATUS_LINE.finditer(data)]


def _get(path: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def _inflight(server: LiveServer) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    return metric_value(text, "cnnserve_inflight_requests")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- 3. half-sent request heads -------------------------------------------------------------


@pytest.mark.slow
def test_half_sent_heads_are_dropped_and_a_real_client_gets_in(
    limited: LiveServer, summary: Summary
) -> None:
    pid = limited.process.pid
    fds_before = _open_fds(pid)
    attackers = []
    for _ in range(300):  # more than the process may open: the rest wait in the backlog
        sock = _connect(limited.port)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        attackers.append(sock)
    time.sleep(0.5)
    fds_during = _open_fds(pid)
    # A client that retries: with no descriptor left, the server (libuv) accepts and at once
    # closes new connections, so the first tries fail.
    started = time.monotonic()
    answer, tries = b"", 0
    while not _statuses(answer) and time.monotonic() - started < 3 * HEAD_TIMEOUT_S + 10:
        tries += 1
        try:
            with _connect(limited.port) as probe:
                probe.sendall(_get("/health/ready", extra="Connection: close\r\n"))
                answer, _ = _read_until_closed(probe, time.monotonic() + 5)
        except OSError:
            answer = b""
        if not _statuses(answer):
            time.sleep(0.1)
    probe_s = time.monotonic() - started
    until = time.monotonic() + 3 * HEAD_TIMEOUT_S + 10
    outcomes = [_read_until_closed(sock, until) for sock in attackers]
    for sock in attackers:
        sock.close()
    closed = sum(done for _, done in outcomes)
    timed_out = sum(_statuses(data) == [408] for data, _ in outcomes)
    shed = sum(data == b"" for data, _ in outcomes)  # closed at accept: no descriptor
    recovered = time.monotonic()
    while _open_fds(pid) > fds_before + 2 and time.monotonic() - recovered < 10:
        time.sleep(0.1)
    recover_s = time.monotonic() - started
    held = _statuses(answer) == [200] and probe_s < HEAD_TIMEOUT_S + 3 and closed == 300
    summary.row(
        "control/half-sent-heads",
        area=AREA,
        tried=f"300 connections each sending half a request head to a server limited to "
        f"{FD_LIMIT} file descriptors (head timeout {HEAD_TIMEOUT_S:g} s), then one normal "
        "request on a new connection",
        held=held,
        fds_before=fds_before,
        fds_during_attack=fds_during,
        probe_status=_statuses(answer),
        probe_seconds=round(probe_s, 2),
        probe_tries=tries,
        attackers_closed=closed,
        attackers_answered_408=timed_out,
        attackers_closed_at_accept=shed,
        seconds_until_fds_back=round(recover_s, 2),
    )
    assert _statuses(answer) == [200], answer[:200]
    assert probe_s < HEAD_TIMEOUT_S + 3, f"a normal request waited {probe_s:.1f} s"
    assert closed == 300 and timed_out + shed == 300, (closed, timed_out, shed)
    assert timed_out >= FD_LIMIT // 2  # those the server held: 408 at the head timeout
    assert limited.process.poll() is None


def test_silent_trickling_and_keep_alive_heads_are_cut_at_the_head_timeout(
    limited: LiveServer, summary: Summary
) -> None:
    silent = _connect(limited.port)  # connects, sends nothing
    trickle = _connect(limited.port)  # a header byte every 0.4 s, for ever
    kept = _connect(limited.port)  # one request, then half of the next
    kept.sendall(_get("/health/live"))
    first = _responses(kept, 1, time.monotonic() + 10)
    connected = time.monotonic()
    time.sleep(1.0)  # idle between requests: uvicorn's keep-alive (5 s) is the limit here
    kept.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    second_head = time.monotonic()
    cut: dict[str, float] = {}
    answers: dict[str, bytes] = {}
    deadline = connected + 3 * HEAD_TIMEOUT_S + 5
    line = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: "
    sent = 0
    while len(cut) < 3 and time.monotonic() < deadline:
        if "trickle" not in cut and sent < len(line) + 100:
            try:
                trickle.sendall((line + b"a" * 100)[sent : sent + 1])
                sent += 1
            except OSError:
                pass
        for name, sock in (("silent", silent), ("trickle", trickle), ("keep-alive", kept)):
            if name in cut:
                continue
            data, closed = _read_until_closed(sock, time.monotonic() + 0.05)
            answers[name] = answers.get(name, b"") + data
            if closed:
                cut[name] = time.monotonic() - (second_head if name == "keep-alive" else connected)
        time.sleep(0.35)
    for sock in (silent, trickle, kept):
        sock.close()
    summary.row(
        "control/slow-heads",
        area=AREA,
        tried=f"a connection that sends nothing, one that trickles a header byte every 0.4 s, "
        f"and a keep-alive one that sends half of its second request (head timeout "
        f"{HEAD_TIMEOUT_S:g} s)",
        held=set(cut) == {"silent", "trickle", "keep-alive"},
        seconds_to_cut={k: round(v, 1) for k, v in sorted(cut.items())},
        statuses={k: _statuses(v) for k, v in sorted(answers.items())},
    )
    assert [status for status, _, _ in first] == [200]
    assert set(cut) == {"silent", "trickle", "keep-alive"}, cut
    assert answers["silent"] == b""  # nothing came: nothing to answer
    assert _statuses(answers["trickle"]) == [408] and _statuses(answers["keep-alive"]) == [408]
    for name, seconds in cut.items():
        assert HEAD_TIMEOUT_S - 0.5 < seconds < HEAD_TIMEOUT_S + 1.5, (name, seconds)


def test_the_h11_fallback_times_out_heads_too(summary: Summary) -> None:
    """Without httptools, uvicorn's h11 protocol serves: same head timeout (in process)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    protocol = type("H11", (BoundedH11Protocol,), {"head_timeout_s": 1.0})
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=protocol,
            lifespan="off",
            log_config=None,
            loop="asyncio",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    try:
        started = time.monotonic()
        with _connect(port) as silent, _connect(port) as half, _connect(port) as whole:
            half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
            whole.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            ok = _responses(whole, 1, started + 5)
            half_answer, half_closed = _read_until_closed(half, started + 5)
            silent_answer, silent_closed = _read_until_closed(silent, started + 5)
            seconds = time.monotonic() - started
    finally:
        server.should_exit = True
        thread.join(10)
    summary.row(
        "control/h11-head-timeout",
        area=AREA,
        tried="the h11 fallback (no httptools): a half-sent head and a silent connection, "
        "head timeout 1 s",
        held=half_closed and silent_closed and _statuses(half_answer) == [408],
        statuses=[_statuses(half_answer), [s for s, _, _ in ok]],
        seconds_to_cut=round(seconds, 1),
    )
    assert [status for status, _, _ in ok] == [200]
    assert half_closed and _statuses(half_answer) == [408]
    assert silent_closed and silent_answer == b""
    assert seconds < 3


# -- 6. pipelined heads ----------------------------------------------------------------------


def test_pipelined_large_heads_are_each_answered(
    server: LiveServer, fashion_test: Split, summary: Summary
) -> None:
    pad = "X-Pad: " + "a" * 40_000 + "\r\n"
    big = _get("/health/live", extra=pad)
    image = png(fashion_test.images[0])
    post = (
        f"POST {CLASSIFY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(image)}\r\n\r\n"
    ).encode() + image
    chunked = (
        (
            f"POST {CLASSIFY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + b"".join(
            b"%x\r\n" % len(piece) + piece + b"\r\n"
            for piece in (image[i : i + 100] for i in range(0, len(image), 100))
        )
        + b"0\r\n\r\n"
    )
    cases = {
        "two 40 KB heads": (big + big, [200, 200]),
        "a body, then a 40 KB head": (post + big, [200, 200]),
        "a chunked body, then a 40 KB head": (chunked + big, [200, 200]),
        "three 40 KB heads": (big * 3, [200, 200, 200]),
        "one 70 KB head": (_get("/health/live", extra="X-Pad: " + "a" * 70_000 + "\r\n"), [431]),
    }
    got: dict[str, list[int]] = {}
    for name, (data, expected) in cases.items():
        with _connect(server.port) as sock:
            sock.sendall(data)
            got[name] = [s for s, _, _ in _responses(sock, len(expected), time.monotonic() + 20)]
    summary.row(
        "control/pipelined-heads",
        area=AREA,
        tried="pipelined requests in one write: two and three with 40 KB heads, a body (plain "
        "and chunked) followed by a 40 KB head, and one 70 KB head (over the 64 KiB limit)",
        held=all(got[name] == expected for name, (_, expected) in cases.items()),
        statuses={name: got[name] for name in cases},
    )
    for name, (_, expected) in cases.items():
        assert got[name] == expected, (name, got[name])


# -- 1. deadlines of the control plane, and the drain ----------------------------------------


@pytest.mark.slow
def test_stalled_repository_bodies_are_cut_at_the_deadline(
    admin: LiveServer, summary: Summary
) -> None:
    head = (
        f"POST /v2/repository/models/lenet5-fashion/load HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    before = _inflight(admin)
    started = time.monotonic()
    stalled = []
    for _ in range(50):
        sock = _connect(admin.port)
        sock.sendall(head + b'{"parameters": ')  # and not another byte
        stalled.append(sock)
    time.sleep(0.5)
    during = _inflight(admin)
    until = started + REQUEST_TIMEOUT_S + 10
    outcomes = [_read_until_closed(sock, until) for sock in stalled]
    cut_s = time.monotonic() - started
    for sock in stalled:
        sock.close()
    after = _inflight(admin)
    statuses = sorted({s for data, _ in outcomes for s in _statuses(data)})
    closed = sum(done for _, done in outcomes)
    summary.row(
        "control/stalled-repository-bodies",
        area=AREA,
        tried=f"50 model loads whose JSON body stops after 15 of its 100 bytes (request "
        f"deadline {REQUEST_TIMEOUT_S:g} s)",
        held=statuses == [504] and closed == 50 and after == before,
        inflight_gauge=[before, during, after],
        statuses=statuses,
        connections_closed=closed,
        seconds_until_all_cut=round(cut_s, 1),
    )
    assert during is not None and during >= 50
    assert statuses == [504] and closed == 50, (statuses, closed)
    assert cut_s < REQUEST_TIMEOUT_S + 3
    assert after == before, (before, during, after)


def _stalled_request(port: int, path: str, content_type: str) -> socket.socket:
    sock = _connect(port)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000\r\n\r\n0123456789".encode()
    )
    return sock


def _json_body(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


@pytest.mark.slow
def test_a_short_drain_is_kept_even_with_a_stalled_client(
    start_server: ServerFactory, summary: Summary
) -> None:
    drain = 0.5
    server = start_server(drain_timeout_s=drain)
    native = _stalled_request(server.port, CLASSIFY, "image/png")
    v2 = _stalled_request(server.port, "/v2/models/lenet5-fashion/infer", "application/json")
    time.sleep(0.3)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.process.wait(10)
    except Exception:
        code = None
    exit_s = time.monotonic() - signalled
    answers = [_read_until_closed(sock, time.monotonic() + 2)[0] for sock in (native, v2)]
    for sock in (native, v2):
        sock.close()
    log = server.log()
    summary.row(
        "control/short-drain",
        area=AREA,
        tried=f"SIGTERM with CNNSERVE_DRAIN_TIMEOUT_S={drain:g} while two clients stall "
        "inside their request bodies (/v1 and /v2)",
        held=code == 0 and exit_s < drain + 1.5,
        exit_code=code,
        exit_seconds=round(exit_s, 2),
        statuses=[_statuses(a) for a in answers],
        tracebacks_in_log=log.count("Traceback"),
    )
    assert code == 0, log[-3000:]
    assert exit_s < drain + 1.5, f"exited {exit_s:.1f} s after SIGTERM"
    for answer in answers:
        assert _statuses(answer) == [503] and b"\r\nconnection: close\r\n" in answer.lower()
    assert _json_body(answers[0])["error"]["code"] == "shutting_down"
    assert isinstance(_json_body(answers[1])["error"], str)
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_request_still_running_at_the_drains_end_gets_a_json_503(
    start_server: ServerFactory, summary: Summary
) -> None:
    drain = 1.0
    server = start_server(drain_timeout_s=drain, max_images_per_request=256)
    image = png(np.full((64, 64, 3), 128, dtype=np.uint8))
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(256)]
    result: dict[str, Any] = {}

    def classify() -> None:  # 256 MobileNetV2 images: seconds of work on two cores
        response = httpx.post(
            f"{server.url}/v1/models/mobilenetv2-imagenet/classify", files=files, timeout=60
        )
        result.update(status=response.status_code, headers=response.headers, body=response.text)

    worker = threading.Thread(target=classify)
    worker.start()
    time.sleep(0.8)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    worker.join(30)
    code = server.process.wait(30)
    exit_s = time.monotonic() - signalled
    log = server.log()
    body = _parse(result.get("body", ""))
    error = body.get("error") if body else None
    summary.row(
        "control/running-at-drain-end",
        area=AREA,
        tried=f"SIGTERM during a 256-image MobileNetV2 request, CNNSERVE_DRAIN_TIMEOUT_S="
        f"{drain:g}: the request outlives the drain",
        held=result.get("status") == 503 and code == 0 and "Traceback" not in log,
        status=result.get("status"),
        code=error.get("code") if isinstance(error, dict) else None,
        body=None if body else result.get("body", "")[:40],
        connection=result["headers"].get("connection") if "headers" in result else None,
        exit_code=code,
        exit_seconds=round(exit_s, 2),
        tracebacks_in_log=log.count("Traceback"),
    )
    assert result.get("status") == 503, result
    assert isinstance(error, dict) and error["code"] == "shutting_down"
    assert result["headers"]["connection"] == "close"
    assert code == 0 and exit_s < drain + 3
    assert "Traceback" not in log and "Exception in ASGI application" not in log


# -- 2. the repository: admin keys, content types, one load at a time, memory, hosts --------


def test_a_cross_site_post_cannot_unload_a_model(
    server: LiveServer, fashion_test: Split, summary: Summary
) -> None:
    """``server``: the default one, no keys at all (conftest). The target is a model no
    other test here uses: before, the attack worked."""
    # What any page can send to 127.0.0.1:8000 with fetch(), no preflight: a text/plain POST.
    simple = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example"}
    unload = httpx.post(
        f"{server.url}/v2/repository/models/{TARGET}/unload",
        content=b"{}",
        headers=simple,
        timeout=TIMEOUT,
    )
    as_json = httpx.post(
        f"{server.url}/v2/repository/models/{TARGET}/unload", json={}, timeout=TIMEOUT
    )
    index = httpx.post(f"{server.url}/v2/repository/index", timeout=TIMEOUT)
    serving = httpx.post(
        f"{server.url}/v1/models/{TARGET}/classify",
        content=png(fashion_test.images[0]),
        headers={"Content-Type": "image/png"},
        timeout=TIMEOUT,
    )
    ready = httpx.get(f"{server.url}/v2/models/{TARGET}/ready", timeout=TIMEOUT)
    statuses = [unload.status_code, as_json.status_code, index.status_code]
    summary.row(
        "control/cross-site-unload",
        area=AREA,
        tried="with no key configured, a cross-site text/plain POST (what any web page can "
        "send without a preflight) to unload a model, the same as JSON, and the index",
        held=statuses == [403, 403, 403] and serving.status_code == ready.status_code == 200,
        statuses=statuses,
        model_still_serving=serving.status_code == 200,
    )
    assert statuses == [403, 403, 403], [r.text for r in (unload, as_json, index)]
    assert "CNNSERVE_ADMIN_KEYS" in v2_error(unload)
    assert serving.status_code == 200 and ready.status_code == 200


def test_the_repository_takes_admin_keys_and_json_only(keyed: LiveServer, summary: Summary) -> None:
    url = f"{keyed.url}/v2/repository/index"
    cases: dict[str, tuple[dict[str, str], int]] = {
        "no key": ({}, 401),
        "inference key (Bearer)": ({"Authorization": f"Bearer {API_KEY}"}, 401),
        "inference key (X-API-Key)": ({"X-API-Key": API_KEY}, 401),
        "admin key (Bearer)": ({"Authorization": f"Bearer {ADMIN_KEY}"}, 200),
        "admin key, no content type (tritonclient)": (ADMIN, 200),
        "admin key, application/json": (ADMIN | {"Content-Type": "application/json"}, 200),
        "admin key, text/plain": (ADMIN | {"Content-Type": "text/plain"}, 415),
        "admin key, form": (ADMIN | {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        "admin key, multipart": (ADMIN | {"Content-Type": "multipart/form-data; b=x"}, 415),
    }
    got = {
        name: httpx.post(url, headers=headers, content=b"{}", timeout=TIMEOUT).status_code
        for name, (headers, _) in cases.items()
    }
    inference_with_admin_key = httpx.get(
        f"{keyed.url}/v1/models", headers=ADMIN, timeout=TIMEOUT
    ).status_code
    summary.row(
        "control/repository-access",
        area=AREA,
        tried="the repository index with no key, an inference key, the admin key, and the "
        "CORS-simple content types",
        held=all(got[name] == want for name, (_, want) in cases.items()),
        statuses=[got[name] for name in cases],
    )
    for name, (_, want) in cases.items():
        assert got[name] == want, (name, got[name])
    assert inference_with_admin_key == 200


def _rss_sampler(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mib(pid))
        time.sleep(0.05)


@pytest.mark.slow
def test_forty_reloads_give_their_memory_back(admin: LiveServer, summary: Summary) -> None:
    pid = admin.process.pid
    # One reload first: what a first request or scrape allocates once is not the swap's.
    assert httpx.post(f"{admin.url}{RELOAD}", headers=ADMIN, timeout=120).status_code == 200
    time.sleep(1.0)
    before = rss_mib(pid)
    peak = [before]
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(pid, stop, peak))
    sampler.start()
    started = time.monotonic()
    statuses = [
        httpx.post(f"{admin.url}{RELOAD}", headers=ADMIN, timeout=120).status_code
        for _ in range(40)
    ]
    seconds = time.monotonic() - started
    time.sleep(1.0)  # the last swapped-out copy is released after its response
    stop.set()
    sampler.join()
    after = rss_mib(pid)
    summary.row(
        "control/forty-reloads",
        area=AREA,
        tried="40 reloads of MobileNetV2 (13 MiB of ONNX), one after another, with the admin key",
        held=set(statuses) == {200} and after - before < 64,
        rss_before_mib=round(before, 1),
        rss_after_mib=round(after, 1),
        peak_rss_mib=round(peak[0], 1),
        seconds=round(seconds, 1),
    )
    assert set(statuses) == {200}, statuses
    assert after - before < 64, f"RSS {before:.0f} -> {after:.0f} MiB after 40 reloads"
    assert peak[0] - before < 200, f"RSS peaked at {peak[0]:.0f} MiB"


@pytest.mark.slow
def test_concurrent_reloads_of_one_model_conflict(admin: LiveServer, summary: Summary) -> None:
    pid = admin.process.pid
    before = rss_mib(pid)
    peak = [before]
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(pid, stop, peak))
    sampler.start()
    go = threading.Barrier(20)
    answers: list[httpx.Response] = []

    def reload() -> None:
        go.wait()
        answers.append(httpx.post(f"{admin.url}{RELOAD}", headers=ADMIN, json={}, timeout=120))

    threads = [threading.Thread(target=reload) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    others = [  # two other models at once: loads wait for each other, both succeed
        httpx.post(f"{admin.url}/v2/repository/models/{m}/load", headers=ADMIN, timeout=120)
        for m in ("resnet-fashion", "vggnet-fashion")
    ]
    stop.set()
    sampler.join()
    statuses = sorted(r.status_code for r in answers)
    conflicts = [r for r in answers if r.status_code == 409]
    summary.row(
        "control/concurrent-reloads",
        area=AREA,
        tried="20 loads of MobileNetV2 sent at the same moment with the admin key",
        held=set(statuses) == {200, 409} and peak[0] - before < 300,
        loaded=statuses.count(200),
        conflicts=len(conflicts),
        rss_before_mib=round(before, 1),
        peak_rss_mib=round(peak[0], 1),
    )
    assert set(statuses) == {200, 409}, statuses
    for refused in conflicts:
        assert int(refused.headers["retry-after"]) >= 1
        assert "being loaded" in v2_error(refused)
    assert [r.status_code for r in others] == [200, 200]
    assert peak[0] - before < 300, f"RSS peaked {peak[0] - before:.0f} MiB above the start"


def test_hosts_other_than_the_loopback_names_are_refused(
    server: LiveServer, summary: Summary
) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends
    ``Host: evil.example``. The default server binds 127.0.0.1 (conftest)."""
    cases = {
        "evil.example": (_get("/health/ready", "evil.example"), 400),
        "evil.example:8000 on /v1": (_get("/v1/models", "evil.example:8000"), 400),
        "evil.example on /v2": (_get("/v2/health/ready", "evil.example"), 400),
        "localhost:8000": (_get("/health/ready", "localhost:8000"), 200),
        "LOCALHOST.": (_get("/health/ready", "LOCALHOST."), 200),
        "127.0.0.1:1": (_get("/health/ready", "127.0.0.1:1"), 200),
        "[::1]:8000": (_get("/health/ready", "[::1]:8000"), 200),
        "no Host (HTTP/1.0)": (b"GET /health/ready HTTP/1.0\r\n\r\n", 400),
    }
    got: dict[str, list[tuple[int, bytes, bytes]]] = {}
    for name, (request, _) in cases.items():
        with _connect(server.port) as sock:
            sock.sendall(request)
            got[name] = _responses(sock, 1, time.monotonic() + 10)
    statuses = {name: [s for s, _, _ in got[name]] for name in cases}
    summary.row(
        "control/host-allow-list",
        area=AREA,
        tried="Host headers a DNS-rebinding page sends (evil.example, with and without a "
        "port, on probes, /v1 and /v2), the loopback names, and none",
        held=all(statuses[name] == [want] for name, (_, want) in cases.items()),
        statuses=[statuses[name][0] if statuses[name] else None for name in cases],
    )
    for name, (_, want) in cases.items():
        assert statuses[name] == [want], (name, got[name])
    body = json.loads(got["evil.example"][0][2])
    assert body["error"]["code"] == "invalid_host"
    assert isinstance(json.loads(got["evil.example on /v2"][0][2])["error"], str)


def test_the_host_default_follows_the_address_served() -> None:
    assert Settings(host="0.0.0.0").as_served().host_names == {"*"}
    assert Settings(host="127.0.0.1").as_served().host_names == {
        "localhost",
        "127.0.0.1",
        "::1",
        "[::1]",
    }
    assert Settings(host="127.0.0.2").as_served().host_names >= {"127.0.0.2", "localhost"}
    served = Settings(host="::1", allowed_hosts="API.example.").as_served()
    assert served.host_names == {"api.example"}
    assert Settings().host_names == {"*"}  # an app in process (a test client's "testserver")


# -- 4. the open readiness probe ------------------------------------------------------------


def test_the_open_readiness_probe_is_minimal_without_a_key(
    keyed: LiveServer, summary: Summary
) -> None:
    url = f"{keyed.url}/health/ready"
    anonymous = httpx.get(url, timeout=TIMEOUT)
    wrong = httpx.get(url, headers={"X-API-Key": "not-a-key"}, timeout=TIMEOUT)
    keyed_answer = httpx.get(url, headers={"X-API-Key": API_KEY}, timeout=TIMEOUT)
    summary.row(
        "control/readiness-body",
        area=AREA,
        tried="GET /health/ready with keys configured: without a key, with a wrong one, with "
        "a valid one",
        held=anonymous.json() == {"status": "ready"} and "models" in keyed_answer.json(),
        bytes_without_key=len(anonymous.content),
        bytes_with_key=len(keyed_answer.content),
        statuses=[anonymous.status_code, wrong.status_code, keyed_answer.status_code],
    )
    assert anonymous.status_code == wrong.status_code == keyed_answer.status_code == 200
    assert anonymous.json() == {"status": "ready"} and wrong.json() == {"status": "ready"}
    assert {m["name"] for m in keyed_answer.json()["models"]} >= {"lenet5-fashion"}


# -- 5. key lists and key bytes --------------------------------------------------------------


@pytest.mark.parametrize("value", [" , ", ""], ids=["commas", "empty"])
@pytest.mark.parametrize("variable", ["api_keys", "admin_keys"])
def test_a_key_list_that_names_no_key_refuses_to_start(
    start_server: ServerFactory, summary: Summary, variable: str, value: str
) -> None:
    server = start_server(wait=False, **{variable: value})
    try:
        code: int | None = server.process.wait(30)
    except Exception:
        code = None
    log = server.log()
    summary.row(
        f"control/empty-key-list-{variable}-{'empty' if not value else 'commas'}",
        area=AREA,
        tried=f'start with CNNSERVE_{variable.upper()}="{value}" (set, but no key in it)',
        held=code not in (0, None),
        exit_code=code,
    )
    assert code not in (0, None), "the server started with a key list that names no key"
    assert variable in log and "names nothing" in log


def test_a_utf8_key_matches_and_start_up_says_who_may_call(
    keyed: LiveServer, summary: Summary
) -> None:
    raw = UTF8_KEY.encode()
    url = f"{keyed.url}/v1/models"
    as_header = httpx.get(url, headers={"X-API-Key": raw}, timeout=TIMEOUT)
    as_bearer = httpx.get(url, headers={"Authorization": b"Bearer " + raw}, timeout=TIMEOUT)
    as_latin1 = httpx.get(url, headers={"X-API-Key": raw.decode("latin-1").encode()}, timeout=10)
    access = [e for e in keyed.log_entries() if "inference_keys" in e]
    summary.row(
        "control/utf8-key",
        area=AREA,
        tried="a non-ASCII key sent as its UTF-8 bytes (both headers), and double-encoded",
        held=as_header.status_code == as_bearer.status_code == 200 and as_latin1.status_code == 401,
        statuses=[as_header.status_code, as_bearer.status_code, as_latin1.status_code],
    )
    assert as_header.status_code == 200 and as_bearer.status_code == 200
    assert as_latin1.status_code == 401
    assert len(access) == 1, access
    assert access[0]["inference_keys"] == 2 and access[0]["repository_api"] is True
    assert access[0]["allowed_hosts"] == sorted(Settings().as_served().host_names)
    assert all(k not in keyed.log() for k in (ADMIN_KEY, API_KEY, UTF8_KEY))


# -- 8. warnings -----------------------------------------------------------------------------


def _jpeg_with_a_broken_exif_block() -> bytes:
    """A JPEG whose EXIF entry points past its end: Pillow warns (UserWarning) when the
    service reads the orientation."""
    tiff = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHII", 0x010E, 2, 1000, 26) + struct.pack("<I", 0)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, "JPEG", exif=b"Exif\0\0" + tiff)
    return buffer.getvalue()


def test_python_warnings_become_json_log_lines(server: LiveServer, summary: Summary) -> None:
    response = httpx.post(
        f"{server.url}{CLASSIFY}",
        content=_jpeg_with_a_broken_exif_block(),
        headers={"Content-Type": "image/jpeg"},
        timeout=TIMEOUT,
    )
    deadline = time.monotonic() + 5
    while True:
        lines = server.log().splitlines()
        parsed = [_parse(line) for line in lines]
        warned = [e for e in parsed if e and e.get("logger") == "py.warnings"]
        if warned or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raw = [line for line, entry in zip(lines, parsed, strict=True) if entry is None]
    summary.row(
        "control/warnings-logged",
        area=AREA,
        tried="a JPEG whose EXIF entry points past the file (Pillow warns while the service "
        "reads the orientation): the warning in the JSON log",
        held=response.status_code == 200 and not raw and bool(warned),
        status=response.status_code,
        warning_lines=len(warned),
        non_json_lines=len(raw),
    )
    assert response.status_code == 200, response.text
    assert not raw, raw[:5]
    assert any(
        e["category"] == "UserWarning" and "Tag data larger than file" in e["message"]
        for e in warned
    ), warned


def _parse(line: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None
