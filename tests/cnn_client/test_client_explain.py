"""Explanations in the SDK: requests built and responses parsed, against a fake server.

Every test that takes ``harness`` runs twice, once per client. The live server's own
explanations are in test_client_live_explain.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from client_fakes import explanation_body

from cnn_client import (
    Explanation,
    HeatmapGrid,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    Prediction,
)

Parse = Callable[[httpx.Request], list[Any]]

GREY = np.random.default_rng(5).integers(0, 256, size=(28, 28), dtype=np.uint8)


def _answer(body: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=body)


# Requests ----------------------------------------------------------------------------


def test_explain_posts_one_image_with_only_the_parameters_given(
    harness: Any, fake: Any, parse_multipart: Parse
) -> None:
    harness.client(fake).explain(GREY, model="lenet5-fashion")
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/models/lenet5-fashion/explain")
    assert dict(request.url.params) == {"method": "occlusion", "format": "json"}
    [part] = parse_multipart(request)
    assert (part.name, part.content_type) == ("file", "image/png")


def test_explain_sends_method_target_window_stride_and_version(harness: Any, fake: Any) -> None:
    harness.client(fake).explain(
        GREY, model="lenet5-fashion", method="occlusion", target=3, window=7, stride=3, version=1
    )
    assert dict(fake.requests[0].url.params) == {
        "method": "occlusion",
        "target": "3",
        "window": "7",
        "stride": "3",
        "format": "json",
        "version": "1",
    }


@pytest.mark.parametrize("label", ["Ankle boot", "T-shirt/top", "a&b=c #1"])
def test_a_label_target_is_encoded_into_one_query_value(
    harness: Any, fake: Any, label: str
) -> None:
    harness.client(fake).explain(GREY, model="lenet5-fashion", target=label)
    url = fake.requests[0].url
    assert url.params["target"] == label
    assert " " not in url.query.decode() and "#" not in url.query.decode()
    assert set(url.params) == {"method", "target", "format"}


@pytest.mark.parametrize("target", [True, 2.5, ["Bag"]])
def test_a_target_that_is_neither_index_nor_label_is_refused_before_sending(
    harness: Any, fake: Any, target: Any
) -> None:
    with pytest.raises(TypeError, match="target"):
        harness.client(fake).explain(GREY, model="lenet5-fashion", target=target)
    assert fake.requests == []


def test_cam_on_a_model_without_the_head_is_method_not_supported(harness: Any, fake: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        harness.client(fake).explain(GREY, model="lenet5-fashion", method="cam")
    error = caught.value
    assert (error.status, error.code) == (400, "method_not_supported")
    assert error.detail == {"method": "cam", "supported": ["occlusion"]}
    assert fake.requests[0].url.params["method"] == "cam"


def test_an_unknown_model_is_not_found(harness: Any, fake: Any) -> None:
    with pytest.raises(NotFoundError):
        harness.client(fake).explain(GREY, model="nope")


def test_explain_is_retried_on_503_like_every_call(harness: Any, fake: Any) -> None:
    fake.busy, fake.retry_after = 1, "2"
    explanation = harness.client(fake).explain(GREY, model="lenet5-fashion")
    assert explanation.target.label == "Ankle boot"
    assert harness.sleeps == [2.0]
    assert fake.requests[0].content == fake.requests[1].content


def test_explanation_png(harness: Any, fake: Any) -> None:
    png = harness.client(fake).explanation_png(GREY, model="lenet5-fashion", target="Bag", window=5)
    assert png == fake.PNG
    assert dict(fake.requests[0].url.params) == {
        "method": "occlusion",
        "target": "Bag",
        "window": "5",
        "format": "png",
    }


def test_explanation_png_that_is_not_a_png(harness: Any) -> None:
    with pytest.raises(InvalidResponseError, match="explain"):
        harness.client(_answer(explanation_body())).explanation_png(GREY, model="m")


def test_explanation_png_errors_are_mapped(harness: Any, fake: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        harness.client(fake).explanation_png(GREY, model="lenet5-fashion", method="cam")
    assert caught.value.code == "method_not_supported"


# Parsing -----------------------------------------------------------------------------


def test_explain_parses_the_contract(harness: Any, fake: Any) -> None:
    explanation = harness.client(fake).explain(GREY, model="lenet5-fashion")
    assert isinstance(explanation, Explanation)
    assert (explanation.model, explanation.model_version, explanation.method) == (
        "lenet5-fashion",
        "2",
        "occlusion",
    )
    assert explanation.parameters == {"window": 6, "stride": 2}
    assert explanation.target == Prediction(index=9, label="Ankle boot", probability=0.875)
    assert explanation.heatmap.dtype == np.float32
    assert explanation.shape == (3, 4) == explanation.heatmap.shape
    np.testing.assert_array_equal(explanation.heatmap, np.array(fake.HEATMAP, np.float32))
    assert not explanation.heatmap.flags.writeable
    assert explanation.grid == HeatmapGrid(size=(6.0, 6.0), jump=(2.0, 2.0), start=(2.5, 2.5))
    assert (explanation.cached, explanation.elapsed_ms) == (False, 12.5)


def test_cam_explanations_have_no_parameters(harness: Any) -> None:
    body = explanation_body(method="cam", parameters={}, cached=True)
    explanation = harness.client(_answer(body)).explain(GREY, model="m", method="cam")
    assert (explanation.method, explanation.parameters, explanation.cached) == ("cam", {}, True)


def _with_heatmap(**changes: Any) -> dict[str, Any]:
    body = explanation_body()
    body["heatmap"] = body["heatmap"] | changes
    return body


@pytest.mark.parametrize(
    "body",
    [
        _with_heatmap(shape=[4, 3]),
        _with_heatmap(values=[[0.5, 0.5, 0.5, 0.5]] * 2 + [[0.5, 0.5, 0.5]]),
        _with_heatmap(values=[[0.5, "high", 0.5, 0.5]] * 3),
        _with_heatmap(values=[[0.5, True, 0.5, 0.5]] * 3),
        _with_heatmap(grid={"size": [6, 6], "jump": [0, 2], "start": [2.5, 2.5]}),
        _with_heatmap(grid={"size": [6, 6], "jump": [2, 2]}),
        explanation_body(target={"index": 9, "label": "Ankle boot"}),
        explanation_body(heatmap=None),
        explanation_body(cached="no"),
        explanation_body(elapsed_ms=None),
        {key: value for key, value in explanation_body().items() if key != "method"},
    ],
    ids=[
        "shape does not match the values",
        "ragged rows",
        "a value that is not a number",
        "a value that is a bool",
        "zero jump",
        "grid without start",
        "target without probability",
        "no heatmap",
        "cached not a bool",
        "no elapsed_ms",
        "no method",
    ],
)
def test_explanations_off_the_contract_are_invalid_responses(
    harness: Any, body: dict[str, Any]
) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        harness.client(_answer(body)).explain(GREY, model="m")
    assert (caught.value.status, caught.value.code) == (200, "invalid_response")


def test_model_info_lists_the_explanation_methods(harness: Any, fake: Any) -> None:
    assert harness.client(fake).model("lenet5-fashion").explanations == ("occlusion",)
    older = {key: value for key, value in fake.INFO.items() if key != "explanations"}
    assert harness.client(_answer(older)).model("lenet5-fashion").explanations == ()


# Spreading the heatmap over the input --------------------------------------------------


def _explanation(values: Any, grid: HeatmapGrid) -> Explanation:
    return Explanation(
        model="m",
        model_version="1",
        method="occlusion",
        parameters={},
        target=Prediction(0, "a", 1.0),
        heatmap=np.asarray(values, np.float32),
        grid=grid,
        cached=False,
        elapsed_ms=1.0,
    )


def test_pixel_map_is_bilinear_between_centres_and_flat_beyond_them() -> None:
    # Centres at pixels 1 and 3 on both axes of a 5 x 5 input.
    explanation = _explanation([[0.0, 1.0], [0.5, 0.25]], HeatmapGrid((3, 3), (2, 2), (1, 1)))
    pixels = explanation.pixel_map((5, 5))
    assert pixels.dtype == np.float32 and pixels.shape == (5, 5)
    for row, col in np.ndindex(2, 2):
        y, x = explanation.grid.centre(row, col)
        assert pixels[int(y), int(x)] == explanation.heatmap[row, col]
    np.testing.assert_allclose(pixels[1], [0.0, 0.0, 0.5, 1.0, 1.0])  # row of the first centres
    np.testing.assert_allclose(pixels[:, 1], [0.0, 0.0, 0.25, 0.5, 0.5])
    assert pixels[2, 2] == pytest.approx((0.0 + 1.0 + 0.5 + 0.25) / 4)
    assert pixels[0, 0] == pixels[1, 1] and pixels[4, 4] == pixels[3, 3]


def test_pixel_map_of_one_cell_is_that_cell_everywhere() -> None:
    explanation = _explanation([[0.75]], HeatmapGrid((28, 28), (1, 1), (13.5, 13.5)))
    np.testing.assert_array_equal(explanation.pixel_map((28, 20)), np.full((28, 20), 0.75))


def test_pixel_map_takes_a_positive_size() -> None:
    explanation = _explanation([[0.75]], HeatmapGrid((28, 28), (1, 1), (13.5, 13.5)))
    with pytest.raises(ValueError, match="size"):
        explanation.pixel_map((0, 28))


GRIDS = [
    ((13, 13), HeatmapGrid((32, 32), (16, 16), (15.5, 15.5)), (224, 224)),  # occlusion, photos
    ((7, 7), HeatmapGrid((491, 491), (32, 32), (0, 0)), (224, 224)),  # MobileNetV2's CAM
    ((12, 12), HeatmapGrid((6, 6), (2, 2), (2.5, 2.5)), (28, 28)),  # occlusion, Fashion-MNIST
    ((3, 5), HeatmapGrid((9, 5), (7.5, 3), (-2, 4.25)), (30, 17)),  # odd on purpose
    ((1, 4), HeatmapGrid((8, 8), (4, 4), (3.5, 3.5)), (8, 20)),
]


@pytest.mark.parametrize(("shape", "grid", "size"), GRIDS)
def test_pixel_map_agrees_with_the_servers_overlay(
    shape: tuple[int, int], grid: HeatmapGrid, size: tuple[int, int]
) -> None:
    service_explain = pytest.importorskip("service.explain")
    values = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    server = service_explain.Heatmap(
        values, service_explain.Grid(grid.size, grid.jump, grid.start)
    ).pixels(size)
    client = _explanation(values, grid).pixel_map(size)
    assert client.shape == server.shape == size
    np.testing.assert_allclose(client, server, rtol=0, atol=1e-6)
