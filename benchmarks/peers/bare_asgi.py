"""Not a peer: the ceiling of a Python HTTP server on one core, for scale.

A bare ASGI function under uvicorn (uvloop, httptools): no framework, no middleware, no
validation, no error handling. It splits the multipart body by hand, decodes with cnnserve's
``preprocess``, runs ONNX Runtime inline and answers the top class with orjson. Whatever a
real server adds costs on top of this.

With ``BARE_OFFLOAD=1`` in its environment it does the one thing a hardened server cannot
leave out (issue 15): the image work (decode, preprocess, inference) runs in a worker thread,
not on the event loop, one hop there and back per request. The difference between the two is
the price of that rule alone.

    python -m benchmarks.peers.bare_asgi MODEL_DIR/NAME --port 8003
"""

from __future__ import annotations

import argparse
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn

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
    pool = ThreadPoolExecutor(1) if os.environ.get("BARE_OFFLOAD") == "1" else None

    def classify(image: bytes) -> bytes:
        tensor = preprocess(image, card.input, max_pixels=40_000_000)[None]
        best = int(np.argmax(session.run(None, {"input": tensor})[0][0]))
        return orjson.dumps({"predictions": [{"index": best, "label": card.labels[best]}]})

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

    return app


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
