"""The client against the real service app, in process, through httpx.ASGITransport.

The app's lifespan (loading and warming the committed models) runs once per module, on
an event loop in a background thread that every test submits its calls to.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from testkit import MODELS, served_version

from cnn_client import (
    AsyncClient,
    InvalidInputError,
    ModelInfo,
    NotFoundError,
    TooLargeError,
    UnauthorizedError,
)

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

FASHION_MODELS = ["lenet5-fashion", "vggnet-fashion", "resnet-fashion"]
T = TypeVar("T")


class Served:
    """One app with its lifespan entered, and an AsyncClient bound to it over ASGI."""

    def __init__(self, **settings: Any) -> None:
        from service.app import create_app
        from service.config import Settings

        self.app = create_app(Settings(providers="cpu", **settings))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.run(self.lifespan.__aenter__())
        self.transport = httpx.ASGITransport(app=self.app)
        self.client = self.client_with()

    def client_with(self, **options: Any) -> AsyncClient:
        return AsyncClient("http://cnnserve.test", transport=self.transport, **options)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 240) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=self.transport, base_url="http://cnnserve.test"
            ) as http:
                return await http.request(method, path, **kwargs)

        return self.run(send())

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    served = Served(model_dir=MODELS)
    yield served
    served.close()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """lenet5-fashion alone, behind an API key, taking 3 images of 1,000 pixels at most."""
    model_dir = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS / "lenet5-fashion", model_dir / "lenet5-fashion")
    served = Served(
        model_dir=model_dir,
        api_keys=["s3cret"],
        max_images_per_request=3,
        max_image_pixels=1000,
    )
    yield served
    served.close()


@pytest.fixture(scope="module")
def infos(served: Served) -> dict[str, ModelInfo]:
    return {info.name: info for info in served.run(served.client.models())}


def _png(array: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, f"not the native error shape: {body}"
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    detail: dict[str, Any] = body["error"].get("detail") or {}
    return detail


# Health and metadata -----------------------------------------------------------------


def test_live_and_ready(served: Served) -> None:
    assert served.run(served.client.live()) is True
    assert served.run(served.client.ready()) is True


def test_models_lists_the_default_models(infos: dict[str, ModelInfo]) -> None:
    assert set(FASHION_MODELS) | {"mobilenetv2-imagenet"} <= set(infos)
    for info in infos.values():
        assert "1" in info.versions
        assert info.state == "ready"
        assert "CPUExecutionProvider" in info.providers
        assert info.layers, f"{info.name} lists no layers"


def test_fashion_model_info(infos: dict[str, ModelInfo]) -> None:
    for name in FASHION_MODELS:
        info = infos[name]
        assert info.input is not None
        assert (info.input.color_mode, info.input.size) == ("L", (28, 28))
        assert len(info.input.mean) == len(info.input.std) == 1
        assert len(info.labels) == 10
        assert (info.labels[0], info.labels[9]) == ("T-shirt/top", "Ankle boot")
        convs = [layer for layer in info.layers if layer.op_type == "Conv"]
        assert convs, f"{name} lists no Conv layer"
        first = convs[0]
        assert first.receptive_field is not None
        assert first.receptive_field.jump == (1, 1)
        assert len(first.output_shape) == 3


def test_mobilenet_model_info(infos: dict[str, ModelInfo]) -> None:
    info = infos["mobilenetv2-imagenet"]
    assert info.input is not None
    assert (info.input.color_mode, info.input.size) == ("RGB", (224, 224))
    assert len(info.input.mean) == len(info.input.std) == 3
    assert len(info.labels) == 1000
    assert info.labels[285] == "Egyptian cat"


def test_model_by_name_matches_the_list(served: Served, infos: dict[str, ModelInfo]) -> None:
    info = served.run(served.client.model("lenet5-fashion", version="1"))
    listed = infos["lenet5-fashion"]
    assert (info.name, info.versions, info.labels, info.layers) == (
        listed.name,
        listed.versions,
        listed.labels,
        listed.layers,
    )


@pytest.mark.parametrize(("name", "version"), [("no-such-model", None), ("lenet5-fashion", "99")])
def test_unknown_model_or_version_is_404_model_not_found(
    served: Served, name: str, version: str | None
) -> None:
    with pytest.raises(NotFoundError) as caught:
        served.run(served.client.model(name, version=version))
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")


# Classification ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FASHION_MODELS)
def test_fashion_models_classify_real_test_images(
    served: Served,
    infos: dict[str, ModelInfo],
    fashion: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]],
    name: str,
) -> None:
    images, labels = fashion
    results = served.run(served.client.classify_many(list(images[:100]), model=name, top_k=10))
    assert [r.filename for r in results] == [f"image-{i}.png" for i in range(100)]
    accuracy = np.mean([r.top.index == label for r, label in zip(results, labels, strict=False)])
    assert accuracy >= 0.85, f"{name}: {accuracy:.2f} on 100 Fashion-MNIST test images"
    for result in results:
        assert (result.model, result.model_version) == (name, served_version(name))
        probabilities = [p.probability for p in result.predictions]
        assert len(probabilities) == 10
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
        assert sorted(p.index for p in result.predictions) == list(range(10))
        for prediction in result.predictions:
            assert prediction.label == infos[name].labels[prediction.index]


def test_top_k_and_filenames(served: Served, tmp_path: Path, fashion: Any) -> None:
    path = tmp_path / "ankle-boot.png"
    path.write_bytes(_png(fashion[0][0]))  # test image 0 is an ankle boot
    result = served.run(served.client.classify(path, model="lenet5-fashion", top_k=3))
    assert result.filename == "ankle-boot.png"
    assert len(result.predictions) == 3
    assert (result.top.index, result.top.label) == (9, "Ankle boot")


def test_mobilenet_knows_a_cat_and_an_espresso(served: Served) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    cat = served.run(served.client.classify(skimage_data.chelsea(), model="mobilenetv2-imagenet"))
    assert {"Egyptian cat", "tabby", "tiger cat"} & {p.label for p in cat.predictions}
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.coffee()).save(buffer, format="JPEG", quality=90)
    coffee = served.run(
        served.client.classify(buffer.getvalue(), model="mobilenetv2-imagenet", top_k=5)
    )
    assert "espresso" in {p.label for p in coffee.predictions}
    assert coffee.filename == "image-0.jpg"


def test_version_is_honoured(served: Served, fashion: Any) -> None:
    result = served.run(served.client.classify(fashion[0][1], model="lenet5-fashion", version=1))
    assert result.model_version == "1"


@pytest.mark.parametrize("top_k", [0, 11])
def test_top_k_outside_the_classes_is_invalid_parameter(
    served: Served, fashion: Any, top_k: int
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        served.run(served.client.classify(fashion[0][0], model="lenet5-fashion", top_k=top_k))
    assert (caught.value.status, caught.value.code) == (400, "invalid_parameter")


NOISE_PNG = _png(np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8))


@pytest.mark.parametrize(
    "content",
    [b"this is not an image", NOISE_PNG[: len(NOISE_PNG) // 2]],
    ids=["garbage", "truncated png"],
)
def test_undecodable_images_are_invalid_image(served: Served, content: bytes) -> None:
    with pytest.raises(InvalidInputError) as caught:
        served.run(served.client.classify(content, model="lenet5-fashion"))
    assert (caught.value.status, caught.value.code) == (400, "invalid_image")


def test_more_images_than_one_request_takes(served: Served, fashion: Any) -> None:
    images, labels = fashion
    results = served.run(served.client.classify_many(list(images[:70]), model="lenet5-fashion"))
    assert [r.filename for r in results] == [f"image-{i}.png" for i in range(70)]
    assert np.mean([r.top.index == label for r, label in zip(results, labels, strict=False)]) > 0.8


@pytest.mark.parametrize("count", [4, 7])
def test_too_many_images_names_its_limit(tight: Served, fashion: Any, count: int) -> None:
    files = [("file", (f"{i}.png", _png(fashion[0][i]), "image/png")) for i in range(count)]
    response = tight.raw(
        "POST",
        "/v1/models/lenet5-fashion/classify",
        files=files,
        headers={"authorization": "Bearer s3cret"},
    )
    detail = _assert_error_shape(response, 413, "too_many_images")
    assert 3 in detail.values(), f"the limit is not in detail: {detail}"


def test_the_client_rechunks_to_the_servers_limit(tight: Served, fashion: Any) -> None:
    client = tight.client_with(api_key="s3cret")
    images = list(fashion[0][:7])
    results = tight.run(client.classify_many(images, model="lenet5-fashion", top_k=1))
    single = [
        tight.run(client.classify(image, model="lenet5-fashion", top_k=1)) for image in images
    ]
    assert [r.top for r in results] == [r.top for r in single]
    tight.run(client.aclose())


def test_a_missing_or_wrong_api_key_is_unauthorized(tight: Served, fashion: Any) -> None:
    for key in (None, "wrong"):
        client = tight.client_with(api_key=key)
        with pytest.raises(UnauthorizedError) as caught:
            tight.run(client.classify(fashion[0][0], model="lenet5-fashion"))
        assert caught.value.status == 401
        tight.run(client.aclose())


def test_an_upload_without_file_field_gets_the_native_error_shape(served: Served) -> None:
    response = served.raw(
        "POST", "/v1/models/lenet5-fashion/classify", files=[("other", ("x.png", b"x"))]
    )
    assert response.status_code in (400, 415, 422)
    assert set(response.json()) == {"error"}, response.text


def test_a_body_without_content_type_is_unsupported_media_type(served: Served) -> None:
    response = served.raw("POST", "/v1/models/lenet5-fashion/classify", content=b"\x00\x01")
    _assert_error_shape(response, 415, "unsupported_media_type")


# Feature maps ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet5-fashion", "resnet-fashion"])
def test_feature_maps_match_the_model_info(
    served: Served, infos: dict[str, ModelInfo], fashion: Any, name: str
) -> None:
    layers = [layer for layer in infos[name].layers if len(layer.output_shape) == 3][:3]
    maps = served.run(
        served.client.feature_maps(
            fashion[0][0], model=name, layers=[layer.name for layer in layers]
        )
    )
    assert [m.name for m in maps] == [layer.name for layer in layers]
    for fmap, layer in zip(maps, layers, strict=True):
        assert fmap.array.dtype == np.float32
        assert fmap.shape == layer.output_shape
        assert fmap.op_type == layer.op_type
        assert fmap.receptive_field == layer.receptive_field
        assert fmap.stats.min == pytest.approx(float(fmap.array.min()), rel=1e-4, abs=1e-5)
        assert fmap.stats.max == pytest.approx(float(fmap.array.max()), rel=1e-4, abs=1e-5)
        assert fmap.stats.mean == pytest.approx(float(fmap.array.mean()), rel=1e-3, abs=1e-4)
        assert np.isfinite(fmap.array).all() and fmap.array.std() > 0


def test_unknown_layer_lists_the_valid_names(
    served: Served, infos: dict[str, ModelInfo], fashion: Any
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        served.run(
            served.client.feature_maps(fashion[0][0], model="lenet5-fashion", layers=["nope"])
        )
    assert (caught.value.status, caught.value.code) == (400, "unknown_layer")
    listed = {str(v) for value in caught.value.detail.values() for v in _flatten(value)}
    assert {layer.name for layer in infos["lenet5-fashion"].layers} <= listed


def _flatten(value: Any) -> list[Any]:
    return [v for item in value for v in _flatten(item)] if isinstance(value, list) else [value]


def test_feature_map_png_is_a_grid_image(
    served: Served, infos: dict[str, ModelInfo], fashion: Any
) -> None:
    layer = next(layer for layer in infos["lenet5-fashion"].layers if layer.op_type == "Conv")
    png = served.run(
        served.client.feature_map_png(fashion[0][0], model="lenet5-fashion", layer=layer.name)
    )
    grid = Image.open(io.BytesIO(png))
    grid.load()
    channels, height, width = layer.output_shape
    assert grid.width >= width and grid.height >= height
    assert grid.width * grid.height >= channels * height * width


def test_feature_map_png_takes_exactly_one_layer(served: Served, fashion: Any) -> None:
    response = served.raw(
        "POST",
        "/v1/models/lenet5-fashion/feature-maps",
        params=[("layer", "a"), ("layer", "b"), ("format", "png")],
        files=[("file", ("x.png", _png(fashion[0][0]), "image/png"))],
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error"}


def test_an_image_over_the_pixel_limit_is_413_image_too_large(tight: Served) -> None:
    client = tight.client_with(api_key="s3cret")
    big = np.zeros((100, 100), dtype=np.uint8)  # 10,000 pixels; the limit is 1,000
    with pytest.raises(TooLargeError) as caught:
        tight.run(client.classify(big, model="lenet5-fashion"))
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")
    tight.run(client.aclose())
