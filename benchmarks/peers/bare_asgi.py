"""Not a peer: the ceiling of a Python HTTP server on one core, for scale.

A bare ASGI function under uvicorn (uvloop, httptools): no framework, no middleware, no
validation, no error handling. It splits the multipart body by hand, decodes with cnnserve's
``preprocess``, runs ONNX Runtime inline and answers the top class with orjson. Whatever a
real server adds costs on top of this.

With ``BARE_OFFLOAD=1`` in its environment it does the one thing a hardened server cannot
leave out (issue 15): the image work (decode, preprocess, inference) runs in a worker thread,
not on the event loop, one hop there and back per request. The difference between the two is
the price of that rule alone. ``BARE_OFFLOAD=batch`` pays the hop once per batch instead:
what arrives while a batch runs goes as the next one, as a batching server's would.

With ``BARE_FEATURES=1`` (which implies ``BARE_OFFLOAD=1`` unless that is set) it adds, in
the fewest lines Python allows, every feature issue 19 asks cnnserve to keep on the request
path: a request id (the caller's, else a counter) returned in a header; the Host and API-key
checks; the body limit (Content-Length up front, counted while reading); a deadline over the
request (``asyncio.timeout``); the disconnect watch's timer; the request metrics (in-flight
gauge, counter, latency histogram: prometheus_client, as cnnserve uses); the access-log call
(at INFO, below the benchmarks' WARNING level, as for cnnserve); the security headers. No
trust scores, no validation beyond that: a floor under any server with those features, not a
server.

    python -m benchmarks.peers.bare_asgi MODEL_DIR/NAME --port 8003
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.model_card import load_card
from service.preprocessing import preprocess

Scope = dict[str, Any]


def build(model_dir: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    card = load_card(model_dir / "model.json")
    features = os.environ.get("BARE_FEATURES") == "1"
    offload = os.environ.get("BARE_OFFLOAD", "1" if features else "")
    pool = ThreadPoolExecutor(1) if offload else None

    def classify_all(images: list[bytes]) -> list[bytes]:
        batch = np.stack([preprocess(image, card.input, max_pixels=40_000_000) for image in images])
        best = np.argmax(session.run(None, {"input": batch})[0], axis=1).tolist()
        return [
            orjson.dumps({"predictions": [{"index": i, "label": card.labels[i]}]}) for i in best
        ]

    def classify(image: bytes) -> bytes:
        return classify_all([image])[0]

    batches = _Batches(pool, classify_all) if pool is not None and offload == "batch" else None

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/health":
            answer = b'{"status":"ok"}'
        else:
            image = body[body.index(b"\r\n\r\n") + 4 : body.rindex(b"\r\n--")]
            if pool is None:
                answer = classify(image)
            elif batches is not None:
                answer = await batches.run(image)
            else:
                answer = await asyncio.get_running_loop().run_in_executor(pool, classify, image)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return with_features(app) if features else app


class _Batches:
    """``BARE_OFFLOAD=batch``: what waits while a batch runs in the thread goes as the next
    batch, and one call back to the loop answers a whole batch: the hop paid per batch, not
    per request, as a batching server can."""

    def __init__(self, pool: ThreadPoolExecutor, work: Any) -> None:
        self._pool, self._work = pool, work
        self._waiting: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._busy = False

    async def run(self, image: bytes) -> bytes:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((image, future))
        if not self._busy:
            self._start(asyncio.get_running_loop())
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting, self._busy = self._waiting, [], True
        self._pool.submit(self._thread, loop, batch)

    def _thread(self, loop: asyncio.AbstractEventLoop, batch: list[Any]) -> None:
        answers = self._work([image for image, _ in batch])
        loop.call_soon_threadsafe(self._answer, loop, batch, answers)

    def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[Any], answers: Any) -> None:
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
        self._busy = False
        if self._waiting:
            self._start(loop)


def with_features(app: Any) -> Any:
    """``app`` behind the cheapest form of cnnserve's per-request features (see above)."""
    registry = CollectorRegistry()
    inflight = Gauge("inflight", "in flight", registry=registry)
    requests = Counter("requests", "requests", ["endpoint", "model", "status"], registry=registry)
    latency = Histogram("latency_seconds", "latency", ["endpoint"], registry=registry)
    log = logging.getLogger("bare.access")
    ids = itertools.count(1)
    hosts = {b"127.0.0.1", b"localhost"}
    keys: set[bytes] = set()  # none configured, as in the benchmarks' cnnserve
    limit = 32 * 1024 * 1024
    security = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]

    async def refuse(send: Any, status: int) -> None:
        await send({"type": "http.response.start", "status": status, "headers": security})
        await send({"type": "http.response.body", "body": b'{"error":"refused"}'})

    async def featured(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        fields = dict(scope["headers"])
        request_id = fields.get(b"x-request-id") or b"%032x" % next(ids)
        status = 500
        inflight.inc()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(0.05, lambda: None)  # the disconnect watch's start
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ValueError("body too large")
            return message

        async def answered(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message["headers"], (b"x-request-id", request_id), *security]
                message = {**message, "headers": headers}
            await send(message)

        try:
            host = fields.get(b"host", b"").rsplit(b":", 1)[0]
            length = fields.get(b"content-length", b"0")
            if host not in hosts or (keys and fields.get(b"x-api-key") not in keys):
                await refuse(answered, 401)
            elif not length.isdigit() or int(length) > limit:
                await refuse(answered, 413)
            else:
                async with asyncio.timeout(30.0):
                    await app(scope, counted, answered)
        finally:
            timer.cancel()
            inflight.dec()
            seconds = time.perf_counter() - started
            requests.labels("/predict", "model", str(status)).inc()
            latency.labels("/predict").observe(seconds)
            log.info("request", extra={"request_id": request_id, "status": status})

    return featured


def main() -> None:
    parser = argparse.ArgumentParser(description="a bare ASGI function, for scale")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--workers", type=int, default=1, help="ignored: one process")
    args = parser.parse_args()
    uvicorn.run(
        build(args.model_dir.resolve()),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
