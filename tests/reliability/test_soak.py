"""A bounded soak: concurrent clients on every endpoint and model, real images, one server.

Zero errors, and the server's RSS at the end within 10% of its RSS after the warm-up. The
warm-up first sends every model a full batch (ONNX Runtime's arenas grow once, to the
largest batch a session has run), then counts the first fifth of the run. CI runs it for
30 s; ``make soak`` for 10 minutes (CNNSERVE_SOAK_S=600). Figures: requests, errors,
p50/p99 latency, RSS start/end, written to test-artifacts/reliability/soak-<seconds>s.json
and to the summary.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image
from reliability_kit import ARTIFACTS, Call, Summary, percentile, rss_mib
from testkit import LiveServer, ServerFactory, png

from model_export.datasets import Split

pytestmark = pytest.mark.slow

DURATION_S = float(os.environ.get("CNNSERVE_SOAK_S", "30"))
CONCURRENCY = int(os.environ.get("CNNSERVE_SOAK_CONCURRENCY", "32"))
WARM_UP_FRACTION = 0.2
RSS_GROWTH_LIMIT = 0.10


def _multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request(
        "POST", "http://x", files=[("file", (name, data, kind)) for name, data, kind in files]
    )
    return request.read(), {"Content-Type": request.headers["Content-Type"]}


def _jpeg(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _v2(images: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    batch = np.ascontiguousarray((images.astype(np.float32)[:, None] / 255.0 - 0.2863) / 0.3532)
    tensor = {"name": "input", "shape": list(batch.shape), "datatype": "FP32"}
    if not binary:
        body = {"inputs": [tensor | {"data": batch.ravel()}]}
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), {}
    raw = batch.tobytes()
    header = orjson.dumps(
        {
            "inputs": [tensor | {"parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    )
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def mixed_calls(fashion: Split, photos: dict[str, bytes]) -> list[Call]:
    """The soak's request mix: weights by repetition. Every call must answer 200."""
    fashion_png = [png(fashion.images[i]) for i in range(16)]
    batch, batch_headers = _multipart(
        [(f"{i}.png", d, "image/png") for i, d in enumerate(fashion_png[:8])]
    )
    pair, pair_headers = _multipart(
        [
            ("cat.jpg", _jpeg(photos["chelsea"]), "image/jpeg"),
            ("cup.jpg", _jpeg(photos["coffee"]), "image/jpeg"),
        ]
    )
    v2_json, v2_json_headers = _v2(fashion.images[:4], binary=False)
    v2_bin, v2_bin_headers = _v2(fashion.images[4:12], binary=True)
    raw = {"Content-Type": "image/png"}
    calls = [
        Call("lenet classify", "POST", "/v1/models/lenet5-fashion/classify", fashion_png[0], raw),
        Call(
            "vgg classify",
            "POST",
            "/v1/models/vggnet-fashion/classify?top_k=3",
            fashion_png[1],
            raw,
        ),
        Call(
            "resnet classify x8", "POST", "/v1/models/resnet-fashion/classify", batch, batch_headers
        ),
        Call(
            "lenet classify x8", "POST", "/v1/models/lenet5-fashion/classify", batch, batch_headers
        ),
        Call(
            "mobilenet classify x2",
            "POST",
            "/v1/models/mobilenetv2-imagenet/classify?top_k=1",
            pair,
            pair_headers,
        ),
        Call(
            "lenet maps json",
            "POST",
            "/v1/models/lenet5-fashion/feature-maps?layer=conv1&layer=pool2",
            fashion_png[2],
            raw,
        ),
        Call(
            "resnet maps png",
            "POST",
            "/v1/models/resnet-fashion/feature-maps?layer=block1.add&format=png",
            fashion_png[3],
            raw,
        ),
        Call(
            "vgg maps npy",
            "POST",
            "/v1/models/vggnet-fashion/feature-maps?layer=block2.pool&format=npy",
            fashion_png[4],
            raw,
        ),
        Call("v2 json lenet", "POST", "/v2/models/lenet5-fashion/infer", v2_json, v2_json_headers),
        Call("v2 binary resnet", "POST", "/v2/models/resnet-fashion/infer", v2_bin, v2_bin_headers),
        Call("models", "GET", "/v1/models/mobilenetv2-imagenet"),
        Call("ready", "GET", "/health/ready"),
        Call("metrics", "GET", "/metrics"),
    ]
    return calls


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)
    started: float = field(default_factory=time.monotonic)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())


async def _client(
    client: httpx.AsyncClient, calls: list[Call], offset: int, until: float, tally: Tally
) -> None:
    turn = offset
    while time.monotonic() < until:
        call = calls[turn % len(calls)]
        turn += 1
        started = time.monotonic()
        try:
            response = await client.request(
                call.method, call.path, content=call.content, headers=call.headers
            )
            await response.aread()
        except httpx.TransportError as exc:
            at = round(started - tally.started, 1)
            tally.errors[f"{call.name}: {type(exc).__name__} {exc} (at {at} s)"] += 1
            continue
        if response.status_code != 200:
            tally.errors[f"{call.name}: {response.status_code} {response.text[:120]}"] += 1
            continue
        tally.latencies.setdefault(call.name, []).append(time.monotonic() - started)


async def _sample_rss(pid: int, started: float, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        tally.rss.append((time.monotonic() - started, rss_mib(pid)))
        await asyncio.sleep(1.0)


async def soak(server: LiveServer, calls: list[Call], seconds: float, concurrency: int) -> Tally:
    tally = Tally()
    started = tally.started
    until = started + seconds
    # Idle connections are dropped by the client before uvicorn's 5 s keep-alive timeout
    # could close them under a request in flight (the race every HTTP/1.1 client has).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(
            _sample_rss(server.process.pid, started, until, tally),
            *(_client(client, calls, i, until, tally) for i in range(concurrency)),
        )
    return tally


def warm_up(server: LiveServer, fashion: Split, photos: dict[str, bytes], batch: int) -> None:
    """Run every model once at the batcher's largest batch."""
    grey = [(f"{i}.png", png(fashion.images[i]), "image/png") for i in range(batch)]
    colour = [(f"{i}.jpg", _jpeg(photos["chelsea"]), "image/jpeg") for i in range(batch)]
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(120.0)) as client:
        for model, files in (
            ("lenet5-fashion", grey),
            ("vggnet-fashion", grey),
            ("resnet-fashion", grey),
            ("mobilenetv2-imagenet", colour),
        ):
            body, headers = _multipart(files)
            response = client.post(f"/v1/models/{model}/classify", content=body, headers=headers)
            assert response.status_code == 200, response.text


def test_soak_mixed_load_has_no_errors_and_flat_memory(
    start_server: ServerFactory, fashion_test: Split, photos: dict[str, bytes], summary: Summary
) -> None:
    server = start_server()
    warm_up(server, fashion_test, photos, batch=32)  # CNNSERVE_MAX_BATCH_SIZE's default
    calls = mixed_calls(fashion_test, photos)
    tally = asyncio.run(soak(server, calls, DURATION_S, CONCURRENCY))
    warm = WARM_UP_FRACTION * DURATION_S
    after_warm_up = [mib for t, mib in tally.rss if t >= warm]
    rss_start, rss_end = after_warm_up[0], tally.rss[-1][1]
    growth = (rss_end - rss_start) / rss_start
    every = [s for values in tally.latencies.values() for s in values]
    errors = sum(tally.errors.values())
    figures = {
        "duration_s": DURATION_S,
        "concurrency": CONCURRENCY,
        "requests": tally.requests,
        "errors": errors,
        "throughput_rps": round(tally.requests / DURATION_S, 1),
        "p50_ms": round(percentile(every, 50) * 1000, 1),
        "p99_ms": round(percentile(every, 99) * 1000, 1),
        "rss_after_warm_up_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_max_mib": round(max(mib for _, mib in tally.rss), 1),
        "rss_growth_pct": round(growth * 100, 2),
    }
    per_call = {
        name: {
            "requests": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
        }
        for name, values in sorted(tally.latencies.items())
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"soak-{DURATION_S:g}s.json").write_text(
        json.dumps(
            {
                "figures": figures,
                "per_call": per_call,
                "errors": dict(tally.errors),
                "rss": tally.rss,
            },
            indent=2,
        )
    )
    summary.row(
        f"load/soak-{DURATION_S:g}s",
        area="load",
        tried=f"soak: {DURATION_S:g} s, {CONCURRENCY} concurrent clients, {len(calls)} kinds of "
        "request over /v1 and /v2 and every model, real images",
        held=errors == 0 and growth < RSS_GROWTH_LIMIT,
        **figures,
    )
    print(json.dumps(figures, indent=2))  # what `make soak` shows
    assert errors == 0, dict(tally.errors.most_common(10))
    assert tally.requests > DURATION_S, f"only {tally.requests} requests"
    assert growth < RSS_GROWTH_LIMIT, (
        f"RSS grew {growth:.1%} ({rss_start:.0f} -> {rss_end:.0f} MiB): {tally.rss}"
    )
    assert server.log().count("Traceback") == 0
