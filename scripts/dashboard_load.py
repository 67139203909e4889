"""A cnnserve and a Prometheus scraping it on 127.0.0.1, and a bounded load of real images
for them: the data ``render_dashboard.py`` draws the dashboard from.

The load: Fashion-MNIST test images, the sample photos, MNIST digits and noise as
out-of-distribution input (rising from 5 % to 60 % over the second half), feature maps,
explanations, /v2 tensors and a few bad requests, from ``WORKERS`` clients.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from model_export.datasets import load_dataset, load_fashion_mnist
from model_export.photos import photo_paths

__all__ = ["REPO", "SCRAPE_S", "WORKERS", "Inputs", "inputs", "run_load", "serve_and_scrape"]

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "monitoring" / "prometheus" / "rules"
SCRAPE_S = 2
WORKERS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _running(
    args: list[str], log: Path, ready: str, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run ``args`` until the block ends; wait until ``ready`` answers 200 first."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def serve_and_scrape(workdir: Path) -> Iterator[tuple[str, str]]:
    """A cnnserve and a Prometheus scraping it, both on 127.0.0.1: their URLs."""
    port, prom_port = _free_port(), _free_port()
    url, prom_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
    env |= {"CNNSERVE_PROVIDERS": "cpu", "CNNSERVE_MODEL_DIR": str(REPO / "models")}
    cnnserve = Path(sys.executable).parent / "cnnserve"
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(RULES / "*.yml")],
        "scrape_configs": [
            {"job_name": "cnnserve", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    prometheus = [
        "prometheus",
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--log.level=warn",
    ]
    server = [str(cnnserve), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with (
        _running(server, workdir / "cnnserve.log", f"{url}/health/ready", env),
        _running(prometheus, workdir / "prometheus.log", f"{prom_url}/-/ready"),
    ):
        yield url, prom_url


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Inputs:
    clothes: list[bytes]  # Fashion-MNIST test images
    strangers: list[bytes]  # MNIST digits and noise: out of distribution for the Fashion models
    photos: list[bytes]
    tensors: list[list[float]]  # lenet5-fashion's input, normalised (for /v2)


def inputs(count: int = 400) -> Inputs:
    fashion = load_fashion_mnist().test
    rng = np.random.default_rng(0)
    picked = rng.choice(len(fashion), count, replace=False)
    digits = load_dataset("mnist-5k").test.images[:100]
    noise = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    card = json.loads((REPO / "models" / "lenet5-fashion" / "model.json").read_text())
    mean, std = card["input"]["mean"][0], card["input"]["std"][0]
    return Inputs(
        clothes=[_png(fashion.images[i]) for i in picked],
        strangers=[_png(image) for image in (*digits, *noise)],
        photos=[path.read_bytes() for path in photo_paths().values()],
        tensors=[
            ((fashion.images[i] / 255.0 - mean) / std).astype(np.float32).ravel().tolist()
            for i in picked[:50]
        ],
    )


def _files(rng: random.Random, pool: list[bytes], count: int) -> dict[str, Any]:
    return {"files": [("file", (f"{i}.png", rng.choice(pool), "image/png")) for i in range(count)]}


def _raw(image: bytes) -> dict[str, Any]:
    return {"content": image, "headers": {"Content-Type": "application/octet-stream"}}


def _v2(tensor: list[float]) -> dict[str, Any]:
    request = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": tensor}
    return {"json": {"inputs": [request]}}


Kind = tuple[int, str, Callable[[random.Random, list[bytes]], dict[str, Any]]]


def _kinds(data: Inputs) -> list[Kind]:
    """(weight, path, the request's arguments from a random source and an image pool)."""
    return [
        (27, "/v1/models/lenet5-fashion/classify", lambda rng, pool: _files(rng, pool, 4)),
        (13, "/v1/models/resnet-fashion/classify", lambda rng, pool: _files(rng, pool, 4)),
        # 48 images at once: full batches (and, for a moment, a queue).
        (8, "/v1/models/vggnet-fashion/classify", lambda rng, pool: _files(rng, pool, 48)),
        (
            4,
            "/v1/models/mobilenetv2-imagenet/classify",
            lambda rng, _: _raw(rng.choice(data.photos)),
        ),
        (
            6,
            "/v1/models/resnet-fashion/feature-maps?layer=conv1",
            lambda rng, pool: _raw(rng.choice(pool)),
        ),
        # 150 images: the repeats are cache hits.
        (
            5,
            "/v1/models/lenet5-fashion/explain?method=occlusion",
            lambda rng, _: _raw(rng.choice(data.clothes[:150])),
        ),
        (
            4,
            "/v1/models/resnet-fashion/explain?method=cam",
            lambda rng, pool: _raw(rng.choice(pool)),
        ),
        (10, "/v2/models/lenet5-fashion/infer", lambda rng, _: _v2(rng.choice(data.tensors))),
        (2, "/v1/models/no-such-model/classify", lambda rng, pool: _raw(rng.choice(pool))),  # 404
        (1, "/v1/models/lenet5-fashion/classify", lambda rng, _: _raw(b"not an image")),  # 400
        # A client that gives up before the answer: 499.
        (
            1,
            "/v1/models/vggnet-fashion/classify",
            lambda rng, pool: _files(rng, pool, 64) | {"timeout": 0.02},
        ),
    ]


def run_load(url: str, seconds: float, data: Inputs) -> dict[str, int]:
    """``WORKERS`` clients, each sending one request after the other for ``seconds``; what
    clients send drifts out of distribution over the second half. Returns counts."""
    started = time.monotonic()
    sent = [0] * WORKERS
    kinds = _kinds(data)
    weights = [weight for weight, _, _ in kinds]

    def client(worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=url, timeout=60) as http:
            while (elapsed := time.monotonic() - started) < seconds:
                # 5 % strangers (a few odd images), rising to 60 % from halfway through.
                drift = 0.05 + 0.55 * min(1.0, max(0.0, elapsed / seconds - 0.5) * 4)
                pool = data.strangers if rng.random() < drift else data.clothes
                _, path, arguments = rng.choices(kinds, weights)[0]
                with contextlib.suppress(httpx.TimeoutException):
                    http.post(path, **arguments(rng, pool))
                sent[worker] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests": sum(sent), "seconds": round(time.monotonic() - started)}
