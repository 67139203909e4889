"""Explanations: occlusion on every model, CAM where the head allows, on real images."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from testkit import MODELS, REPO, metric_value, png

from model_export.datasets import Split
from service.app import create_app
from service.config import Settings
from service.explain import Grid, Heatmap, occlusion_defaults
from service.head import Head, classifier_head
from service.model_card import InputSpec

MOBILENET = "mobilenetv2-imagenet"
SAMPLES = REPO / "service" / "static" / "samples"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(providers="cpu", model_dir=MODELS, queue_capacity=8)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def explain(client: TestClient, model: str, image: bytes, query: str = "") -> Any:
    return client.post(
        f"/v1/models/{model}/explain?{query}",
        content=image,
        headers={"Content-Type": "application/octet-stream"},
    )


def test_model_info_lists_each_models_methods(client: TestClient) -> None:
    methods = {
        name: client.get(f"/v1/models/{name}").json()["explanations"]
        for name in ("lenet5-fashion", "vggnet-fashion", "resnet-fashion", MOBILENET)
    }
    assert methods == {
        "lenet5-fashion": ["occlusion"],
        "vggnet-fashion": ["occlusion"],
        "resnet-fashion": ["occlusion", "cam"],
        MOBILENET: ["occlusion", "cam"],
    }


@pytest.mark.parametrize(
    ("model", "method", "shape"),
    [
        ("lenet5-fashion", "occlusion", [12, 12]),
        ("vggnet-fashion", "occlusion", [12, 12]),
        ("resnet-fashion", "occlusion", [12, 12]),
        ("resnet-fashion", "cam", [7, 7]),
    ],
)
def test_fashion_models_explain_a_real_test_image(
    client: TestClient, fashion_test: Split, model: str, method: str, shape: list[int]
) -> None:
    image = png(fashion_test.images[0])  # an ankle boot
    response = explain(client, model, image, f"method={method}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"]["index"] == int(fashion_test.labels[0])
    assert body["target"]["label"] == "Ankle boot" and body["target"]["probability"] > 0.5
    values = np.array(body["heatmap"]["values"])
    assert list(values.shape) == body["heatmap"]["shape"] == shape
    assert values.min() >= 0 and values.max() == pytest.approx(1.0)
    assert set(body["heatmap"]["grid"]) == {"size", "jump", "start"}
    # The boot fills the lower middle of the frame; the empty top rows explain nothing.
    assert values[: shape[0] // 4].mean() < values.mean()


def test_formats_agree(client: TestClient) -> None:
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    body = explain(client, MOBILENET, photo, "method=cam").json()
    npy = explain(client, MOBILENET, photo, "method=cam&format=npy")
    assert npy.headers["content-type"] == "application/x-npy"
    grid = np.load(io.BytesIO(npy.content))
    assert grid.dtype == np.float32 and grid.ndim == 2
    np.testing.assert_allclose(grid, body["heatmap"]["values"], atol=1e-5)
    picture = explain(client, MOBILENET, photo, "method=cam&format=png")
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (224, 224)
    small = explain(client, "lenet5-fashion", (SAMPLES / "fashion-bag.png").read_bytes(),
                    "format=png")  # fmt: skip
    assert Image.open(io.BytesIO(small.content)).size == (224, 224)  # 28 px, 8 times larger


@pytest.mark.parametrize(
    ("model", "query", "code", "words"),
    [
        (MOBILENET, "method=nope", "invalid_parameter", "unknown method 'nope'"),
        (MOBILENET, "window=500", "invalid_parameter", "window must be 1 to 224"),
        (MOBILENET, "stride=0", "invalid_parameter", "stride must be at least 1"),
        (MOBILENET, "stride=x", "invalid_parameter", "whole number"),
        (MOBILENET, "window=8&stride=1", "invalid_parameter", "occluded copies; at most"),
        (MOBILENET, "target=1000", "invalid_parameter", "target must be a class index"),
        (MOBILENET, "target=a%20flying%20teapot", "invalid_parameter", "one of the model's"),
        (MOBILENET, "method=cam&window=8", "invalid_parameter", "cam takes no window"),
        ("lenet5-fashion", "method=cam", "method_not_supported", "GAP + linear head"),
        ("vggnet-fashion", "method=cam", "method_not_supported", "globally average-pooled"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(
    client: TestClient, model: str, query: str, code: str, words: str
) -> None:
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    response = explain(client, model, photo, query)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error


def test_a_repeated_explanation_comes_from_the_cache(client: TestClient) -> None:
    photo = (SAMPLES / "motorcycle.jpg").read_bytes()
    first = explain(client, MOBILENET, photo, "method=occlusion&window=56&stride=56&target=moped")
    again = explain(client, MOBILENET, photo, "method=occlusion&window=56&stride=56&target=moped")
    assert first.headers["x-explanation-cache"] == "miss"
    assert again.headers["x-explanation-cache"] == "hit" and again.json()["cached"] is True
    assert again.json()["heatmap"] == first.json()["heatmap"]
    metrics = client.get("/metrics").text
    hits = metric_value(metrics, "cnnserve_explanations_total", model=MOBILENET, cache="hit")
    assert hits is not None and hits >= 1
    occluded = metric_value(metrics, "cnnserve_occluded_images_total", model=MOBILENET)
    assert occluded is not None and occluded >= 16  # 4 x 4 windows, at least once
    assert metric_value(
        metrics, "cnnserve_explanation_duration_seconds_count", model=MOBILENET, method="occlusion"
    )


@pytest.mark.parametrize("method", ["occlusion", "cam"])
def test_two_objects_each_explained_where_it_is(
    client: TestClient, photos: dict[str, bytes], method: str
) -> None:
    """A canvas with a cat in its left half and a coffee cup in its right: the map for
    "Egyptian cat" lies mostly on the left, the one for "espresso" mostly on the right."""
    halves = [Image.open(io.BytesIO(photos[name])).convert("RGB") for name in ("chelsea", "coffee")]
    canvas = Image.new("RGB", (448, 224))
    for i, half in enumerate(halves):
        canvas.paste(half.resize((224, 224)), (224 * i, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    mass = {}
    for label in ("Egyptian cat", "espresso"):
        query = f"method={method}&target={label.replace(' ', '%20')}&format=npy"
        values = np.load(io.BytesIO(explain(client, MOBILENET, buffer.getvalue(), query).content))
        grid = explain(client, MOBILENET, buffer.getvalue(), f"method={method}&target={label}")
        heat = Heatmap(values, Grid(**grid.json()["heatmap"]["grid"])).pixels((224, 224))
        mass[label] = heat[:, :112].sum() / heat.sum()
    assert mass["Egyptian cat"] > 0.6, mass
    assert mass["espresso"] < 0.4, mass


def test_occlusion_interleaves_with_classification(client: TestClient) -> None:
    """An occlusion of 169 copies goes through the batcher in chunks: classify requests sent
    meanwhile are answered long before it ends, and a queue of 8 images never refuses it."""
    photo = (SAMPLES / "chelsea.jpg").read_bytes()
    done: dict[str, float] = {}

    def occlude() -> None:
        response = explain(client, MOBILENET, photo, "method=occlusion&target=281")
        assert response.status_code == 200, response.text
        done["occlusion"] = time.monotonic()

    started = time.monotonic()
    thread = threading.Thread(target=occlude)
    thread.start()
    time.sleep(0.3)
    answered = []
    for _ in range(3):
        response = client.post(
            f"/v1/models/{MOBILENET}/classify",
            content=photo,
            headers={"Content-Type": "image/jpeg"},
        )
        assert response.status_code == 200
        answered.append(time.monotonic())
    thread.join(120)
    assert "occlusion" in done
    assert all(t < done["occlusion"] for t in answered), (answered, done, started)


def test_heatmap_pixels_interpolate_between_cell_centres() -> None:
    heat = Heatmap(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), Grid((4, 4), (4, 4), (1, 1)))
    pixels = heat.pixels((6, 6))
    assert pixels[1, 1] == 0 and pixels[1, 5] == 1 and pixels[5, 1] == 1  # at the centres
    assert pixels[1, 3] == pytest.approx(0.5) and pixels[0, 0] == 0  # between; beyond an edge


def test_defaults_suit_the_input() -> None:
    photo = InputSpec(color_mode="RGB", size=(224, 224), mean=(0, 0, 0), std=(1, 1, 1))
    small = InputSpec(color_mode="L", size=(28, 28), mean=(0,), std=(1,))
    assert occlusion_defaults(photo) == (32, 16) and occlusion_defaults(small) == (6, 2)


def _graph_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> Any:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_heads_read_from_matmul_reducemean_and_quantised_graphs() -> None:
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)  # C x classes, as MatMul reads it
    matmul = _graph_model(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["y"]),
        ],
        [
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    head = classifier_head(matmul)
    assert isinstance(head, Head) and head.features == "x"
    np.testing.assert_array_equal(head.weights, weights.T)
    quantised = _graph_model(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["flat"]),
            helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"], axis=0),
            helper.make_node("Gemm", ["flat", "w"], ["y"], transB=1),
        ],
        [
            numpy_helper.from_array(np.array([[2] * 4, [4] * 4, [6] * 4], np.int8), "wq"),
            numpy_helper.from_array(np.array([0.5, 0.25, 1.0], np.float32), "scale"),
            numpy_helper.from_array(np.zeros(3, np.int8), "zero"),
        ],
    )
    head = classifier_head(quantised)
    assert isinstance(head, Head)
    np.testing.assert_allclose(head.weights, [[1] * 4, [1] * 4, [6] * 4])
