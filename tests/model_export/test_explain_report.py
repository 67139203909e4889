"""make explain-report: its measures behave as the papers define them, its maps are the
service's, and a quick run writes the document and the figures. Seconds, not the report."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper
from PIL import Image
from testkit import MODELS, png

from model_export.datasets import Split
from model_export.explain_metrics import (
    FRACTIONS,
    auc,
    deletion_curves,
    random_orders,
    reinitialised,
    saliency_order,
    shuffled,
    spearman,
)
from model_export.explain_pages import END, START
from model_export.explain_report import Local, main
from service.app import create_app
from service.config import Settings
from service.explain import Grid, Heatmap
from service.model_card import InputSpec
from service.preprocessing import to_tensor

GREY = InputSpec(color_mode="L", size=(16, 16), mean=(0.5,), std=(0.25,))
RGB = InputSpec(color_mode="RGB", size=(8, 8), mean=(0.5,) * 3, std=(0.25,) * 3)
OBJECT = (slice(2, 6), slice(3, 7))  # 16 of the 256 pixels


def _object_scores(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: the target's probability is the share of the object's pixels still
    there (not yet set to the fill value, 0)."""
    kept = (batch[:, 0][:, OBJECT[0], OBJECT[1]] != 0).mean(axis=(1, 2))
    return np.stack([kept, 1 - kept], axis=1)


@pytest.fixture
def picture() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.5, 1.5, (1, 16, 16)).astype(np.float32)


def test_an_oracle_order_beats_random_and_random_matches_random(picture: np.ndarray) -> None:
    truth = np.zeros((16, 16))
    truth[OBJECT] = 1.0
    rng = np.random.default_rng(0)
    oracle = saliency_order(truth, rng)
    worst = saliency_order(-truth, rng)
    first, second = random_orders(256, 20, rng), random_orders(256, 20, rng)
    curves = deletion_curves(_object_scores, picture, GREY, 0, [oracle, worst, *first, *second])
    areas = auc(curves)
    assert curves[:, 0] == pytest.approx(1.0) and curves[:, -1] == pytest.approx(0.0)
    assert areas[0] < 0.05  # the object is gone after the first 5 % step
    assert areas[1] > 0.9  # and last of all when removed last
    # Random orders remove the object at the rate they remove everything: area 1/2.
    assert areas[2:22].mean() == pytest.approx(0.5, abs=0.05)
    assert areas[2:22].mean() == pytest.approx(areas[22:].mean(), abs=0.05)


def test_each_step_removes_five_percent_of_the_pixels_in_every_channel() -> None:
    image = np.ones((3, 8, 8), np.float32)
    order = np.random.default_rng(0).permutation(64)

    def removed(batch: np.ndarray) -> np.ndarray:
        gone = (batch == 0).all(axis=1).mean(axis=(1, 2))  # all three channels, or none
        assert ((batch == 0).any(axis=1) == (batch == 0).all(axis=1)).all()
        return np.stack([gone, 1 - gone], axis=1)

    curve = deletion_curves(removed, image, RGB, 0, [order])[0]
    np.testing.assert_allclose(curve, np.round(FRACTIONS * 64) / 64)
    assert auc(np.array([FRACTIONS])) == pytest.approx(0.5)


def test_saliency_orders_break_ties_at_random_not_in_raster_order() -> None:
    pixels = np.zeros((16, 16))
    pixels[9, 4] = 1.0
    order = saliency_order(pixels, np.random.default_rng(0))
    assert order[0] == 9 * 16 + 4
    assert sorted(order) == list(range(256))
    assert (np.diff(order[1:]) < 0).any()  # not the rest in raster order


def test_a_shuffled_map_keeps_its_values_and_grid() -> None:
    heat = Heatmap(np.arange(9, dtype=np.float32).reshape(3, 3), Grid((4, 4), (4, 4), (1, 1)))
    mixed = shuffled(heat, np.random.default_rng(0))
    assert mixed.grid == heat.grid
    assert sorted(mixed.values.ravel()) == sorted(heat.values.ravel())
    assert not np.array_equal(mixed.values, heat.values)


def test_spearman_of_a_map_with_itself_its_reversal_and_ties() -> None:
    a = np.random.default_rng(0).random((12, 12))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a**3 + 5) == pytest.approx(1.0)  # ranks, not values
    assert np.isnan(spearman(a, np.zeros_like(a)))
    tied = np.round(a * 4)
    stats = pytest.importorskip("scipy.stats")
    expected = stats.spearmanr(tied.ravel(), a.ravel()).statistic
    assert spearman(tied, a) == pytest.approx(expected)


def test_the_reinitialised_model_keeps_its_graph_and_loses_its_weights() -> None:
    path = MODELS / "lenet5-fashion" / "1" / "model.onnx"
    original = onnx.load(str(path))
    random, redrawn = reinitialised(original, seed=0)
    again, _ = reinitialised(original, seed=0)
    layers = [n for n in original.graph.node if n.op_type in ("Conv", "Gemm")]
    assert redrawn == len(layers) == 5
    assert [n.op_type for n in random.graph.node] == [n.op_type for n in original.graph.node]
    before = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in random.graph.initializer}
    assert after.keys() == before.keys()
    for node in layers:
        weight, bias = after[node.input[1]], after[node.input[2]]
        assert not np.allclose(weight, before[node.input[1]])
        assert (bias == 0).all()
        fan_in = np.prod(weight.shape[1:])  # Conv (out, in, kh, kw); Gemm transB (out, in)
        assert weight.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.25)
    assert all(
        np.array_equal(a, numpy_helper.to_array(b))
        for a, b in zip(after.values(), again.graph.initializer, strict=True)
    )  # seeded
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    outputs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]
        for m in (original, random)
    ]
    assert not np.allclose(*outputs, atol=1e-2)


@pytest.fixture(scope="module")
def resnet_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    os.symlink(MODELS / "resnet-fashion", folder / "resnet-fashion")
    return folder


@pytest.fixture(scope="module")
def client(resnet_only: Path) -> Iterator[TestClient]:
    settings = Settings(providers="cpu", model_dir=resnet_only, explain_cache_bytes=0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize("method", ["occlusion", "cam"])
def test_the_report_explains_as_the_service_does(
    client: TestClient, fashion_test: Split, method: str
) -> None:
    """The report's in-process maps are the maps the HTTP API serves."""
    model = Local(
        MODELS / "resnet-fashion" / "1" / "model.onnx",
        MODELS / "resnet-fashion" / "model.json",
        threads=1,
    )
    try:
        image = fashion_test.images[3]
        served = client.post(
            f"/v1/models/resnet-fashion/explain?method={method}&format=npy&version=1",
            content=png(image),
            headers={"Content-Type": "image/png"},
        )
        assert served.status_code == 200, served.text
        input_ = to_tensor(Image.fromarray(image, "L"), model.spec)
        heat, target = model.explain(method, input_)
        assert model.methods == ["occlusion", "cam"]
        np.testing.assert_allclose(heat.values, np.load(io.BytesIO(served.content)), atol=1e-4)
        assert target == int(np.argmax(model.scores(input_[None])[0]))
    finally:
        model.close()


@pytest.mark.slow
def test_a_quick_run_writes_the_document_and_the_figures(tmp_path: Path) -> None:
    doc = tmp_path / "explain.md"
    doc.write_text(f"# Prose kept\n\n{START}\nold figures\n{END}\n\nMore prose.\n")
    figures = tmp_path / "img"
    main(
        [
            "--quick",
            "--fashion-images",
            "4",
            "--randomise",
            "2",
            "--models",
            "lenet5-fashion",
            "resnet-fashion",
            "--doc",
            str(doc),
            "--images-dir",
            str(figures),
            "--json",
            str(tmp_path / "figures.json"),
        ]
    )
    text = doc.read_text()
    assert text.startswith("# Prose kept") and text.endswith("More prose.\n")
    assert "old figures" not in text
    assert "| `resnet-fashion` | cam | 4 |" in text
    assert {p.name for p in figures.iterdir()} == {
        "fashion.png",
        "deletion.png",
        "randomisation.png",
    }
    assert "![deletion](img/deletion.png)" in text
    figures_json = json.loads((tmp_path / "figures.json").read_text())
    resnet = figures_json["models"]["resnet-fashion"]["methods"]
    assert set(resnet) == {"occlusion", "cam"}
    assert resnet["cam"]["images"] == 4 and resnet["cam"]["spearman_images"] == 2
    assert 0 <= resnet["occlusion"]["auc"] <= 1
