"""The client and the `cnnserve` CLI against a real server started on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from cnn_client import AsyncClient, Client, NotFoundError

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CNNSERVE = Path(sys.executable).parent / "cnnserve"
Fashion = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory, fashion: Fashion) -> list[Path]:
    """Twelve Fashion-MNIST test images as PNG files, named after their true class."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(12):
        path = folder / f"test-{i}-class-{fashion[1][i]}.png"
        Image.fromarray(fashion[0][i]).save(path)
        paths.append(path)
    return paths


def _accuracy(results: list[Any], labels: npt.NDArray[np.uint8]) -> float:
    return float(np.mean([r.top.index == label for r, label in zip(results, labels, strict=True)]))


# Python ------------------------------------------------------------------------------


def test_sync_client(server_url: str, fashion: Fashion) -> None:
    images, labels = fashion
    with Client(server_url) as client:
        assert client.live() and client.ready()
        names = {info.name for info in client.models()}
        assert {"lenet5-fashion", "vggnet-fashion", "resnet-fashion"} <= names
        results = client.classify_many(list(images[:150]), model="lenet5-fashion", top_k=3)
        assert _accuracy(results, labels[:150]) >= 0.85
        conv = next(
            layer for layer in client.model("lenet5-fashion").layers if layer.op_type == "Conv"
        )
        [fmap] = client.feature_maps(images[0], model="lenet5-fashion", layers=[conv.name])
        assert fmap.shape == conv.output_shape
        with pytest.raises(NotFoundError):
            client.classify(images[0], model="no-such-model")


def test_many_concurrent_async_calls(server_url: str, fashion: Fashion) -> None:
    images, labels = fashion
    count = 96

    async def run() -> list[Any]:
        async with AsyncClient(server_url) as client:
            calls = [client.classify(images[i], model="resnet-fashion") for i in range(count)]
            return await asyncio.gather(*calls)

    concurrent = asyncio.run(run())
    with Client(server_url) as client:
        sequential = client.classify_many(list(images[:count]), model="resnet-fashion")
    # Dynamic batching must not change answers: the same top class, the same probability.
    for one, batched in zip(concurrent, sequential, strict=True):
        assert one.top.index == batched.top.index
        assert one.top.probability == pytest.approx(batched.top.probability, abs=1e-4)
    assert _accuracy(concurrent, labels[:count]) >= 0.85


# The command line, as a user runs it -------------------------------------------------


def _cnnserve(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CNNSERVE), *map(str, args)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_health_and_models(server_url: str) -> None:
    health = _cnnserve("health", env={"CNNSERVE_URL": server_url})
    assert (health.returncode, health.stdout.strip()) == (0, f"{server_url}: live yes, ready yes")
    models = _cnnserve("models", "--url", server_url, "--json")
    assert models.returncode == 0, models.stderr
    assert "mobilenetv2-imagenet" in {m["name"] for m in json.loads(models.stdout)["models"]}


def test_cli_classify_json(server_url: str, image_files: list[Path]) -> None:
    run = _cnnserve(
        "classify", *image_files, "--model", "lenet5-fashion", "--url", server_url, "--json"
    )
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert [r["filename"] for r in document["results"]] == [p.name for p in image_files]
    right = [
        r["predictions"][0]["index"] == int(r["filename"].split("-")[-1].removesuffix(".png"))
        for r in document["results"]
    ]
    assert sum(right) >= 10


def test_cli_classify_table_of_a_photo(server_url: str, tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(photo, quality=90)
    run = _cnnserve("classify", photo, "-m", "mobilenetv2-imagenet", "-k", "3", "--url", server_url)
    assert run.returncode == 0, run.stderr
    assert "chelsea.jpg" in run.stdout
    assert any(cat in run.stdout for cat in ("Egyptian cat", "tabby", "tiger cat"))


def test_cli_feature_map_grid(server_url: str, image_files: list[Path], tmp_path: Path) -> None:
    with Client(server_url) as client:
        layer = next(x for x in client.model("lenet5-fashion").layers if x.op_type == "Conv")
    out = tmp_path / "grid.png"
    run = _cnnserve(
        "feature-maps", image_files[0], "--model", "lenet5-fashion", "--layer", layer.name,
        "--out", out, "--url", server_url,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    grid = Image.open(io.BytesIO(out.read_bytes()))
    grid.load()
    assert grid.width >= layer.output_shape[2]


def test_cli_errors_are_one_line(server_url: str, image_files: list[Path]) -> None:
    run = _cnnserve("classify", image_files[0], "--model", "nope", "--url", server_url)
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1
    assert "model_not_found" in run.stderr
    usage = _cnnserve("classify", image_files[0], "--url", server_url)
    assert usage.returncode == 2
    assert usage.stderr.startswith("error: ") and len(usage.stderr.strip().splitlines()) == 1
