"""Draw one traced request end to end: docs/img/trace.png (docs/observability.md).

Starts `cnnserve serve` on 127.0.0.1 with the console span exporter (OTEL_TRACES_EXPORTER=
console: spans as JSON on the server's stdout), sends a few concurrent classify requests of
Fashion-MNIST test images to lenet5-fashion so that batches merge requests, stops the server
(which flushes every span), and draws the request with the most images as a waterfall: the
request span, its body read, the wait for a decode thread, decode and preprocess per image,
queue wait and post-processing, and the batch inference it rode in (a trace of its own,
linked to every request it served).

    python scripts/render_trace.py [--out docs/img/trace.png]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from model_export.datasets import load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent
CLASSIFY = "/v1/models/lenet5-fashion/classify"
REQUEST = "POST /v1/models/{name}/classify"
COLOURS = {
    REQUEST: "#4c72b0",
    "read body": "#8172b2",
    "pool wait": "#dddddd",
    "decode": "#55a868",
    "preprocess": "#64b5cd",
    "queue wait": "#ccb974",
    "batch inference": "#c44e52",
    "postprocess": "#937860",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _png(array: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _spans(text: str) -> list[dict[str, Any]]:
    """The console exporter's output: JSON objects one after another."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while True:
        at = text.find("{", at)
        if at < 0:
            return spans
        span, at = decoder.raw_decode(text, at)
        spans.append(span)


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def capture(requests: int, images: int) -> list[dict[str, Any]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNNSERVE_", "OTEL_"))}
    env |= {
        "CNNSERVE_PROVIDERS": "cpu",
        "CNNSERVE_MODEL_DIR": str(REPO / "models"),
        "CNNSERVE_LOG_LEVEL": "WARNING",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "cnnserve",
    }
    cnnserve = Path(sys.executable).parent / "cnnserve"
    with tempfile.TemporaryFile() as out:
        server = subprocess.Popen(
            [str(cnnserve), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            test = load_fashion_mnist().test
            bodies = [
                [("file", (f"{r}-{i}.png", _png(test.images[r * images + i]), "image/png"))
                 for i in range(images)]
                for r in range(requests)
            ]  # fmt: skip
            with httpx.Client(base_url=url) as client:
                client.post(CLASSIFY, files=bodies[0])  # warm
                with concurrent.futures.ThreadPoolExecutor(requests) as pool:
                    for response in pool.map(lambda b: client.post(CLASSIFY, files=b), bodies):
                        response.raise_for_status()
        finally:
            server.terminate()
            server.wait(60)
        out.seek(0)
        return _spans(out.read().decode())


def draw(spans: list[dict[str, Any]], path: Path) -> None:
    requests = [s for s in spans if s["name"] == REQUEST]
    request = max(requests, key=lambda s: s["attributes"].get("cnnserve.images", 0))
    trace, me = request["context"]["trace_id"], request["context"]["span_id"]
    mine = [s for s in spans if s["context"]["trace_id"] == trace and s is not request]
    batch = next(
        s for s in spans
        if s["name"] == "batch inference"
        and any(link["context"]["span_id"] == me for link in s.get("links", []))
    )  # fmt: skip
    start = _seconds(request["start_time"])
    order = {name: i for i, name in enumerate(COLOURS)}
    mine.sort(key=lambda s: (_seconds(s["start_time"]), order.get(s["name"], 9)))
    rows = [request, *mine, batch]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.4))
    for y, span in enumerate(rows):
        begin = (_seconds(span["start_time"]) - start) * 1000
        width = max((_seconds(span["end_time"]) - _seconds(span["start_time"])) * 1000, 0.02)
        ax.barh(y, width, left=begin, color=COLOURS.get(span["name"], "grey"), height=0.7)
        label = span["name"]
        attributes = span["attributes"]
        if "cnnserve.image" in attributes:
            label += f" (image {attributes['cnnserve.image']})"
        if span is batch:
            served = attributes.get("cnnserve.requests", "?")
            label += f": its own trace, {attributes['cnnserve.images']} images, {served} request(s)"
        if span is request:
            status = attributes["http.response.status_code"]
            label += f": {attributes['cnnserve.images']} images, answered {status}"
        ax.text(begin + width, y, f"  {label}  {width:.2f} ms", va="center", fontsize=8)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the request started")
    end = max((_seconds(s["end_time"]) - start) * 1000 for s in rows)
    ax.set_xlim(min(0, (_seconds(batch["start_time"]) - start) * 1000), end * 1.9)
    ax.set_title(f"One classify request, traced (trace {trace[2:10]}…), lenet5-fashion on CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path} ({len(rows)} spans)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "trace.png")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    draw(capture(args.requests, args.images), args.out)


if __name__ == "__main__":
    main()
