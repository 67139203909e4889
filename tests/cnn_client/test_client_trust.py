"""Trust fields in the SDK: out-of-distribution verdicts and calibrated probabilities.

The responses follow the contract of issue #17 (DESIGN.md: "Every classification result
carries ood: score, threshold, flagged, method"), built here (conftest's FakeServer.ood); the
live server's verdicts are tested once it sends them. The CLI's side is in
test_client_cli.py.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cnn_client import InvalidResponseError, OutOfDistribution

GREY = np.random.default_rng(7).integers(0, 256, size=(28, 28), dtype=np.uint8)

FLAGGED = {"score": 3.25, "threshold": 1.0, "flagged": True, "method": "energy+mahalanobis"}
UNFLAGGED = {"score": 0.5, "threshold": 1.0, "flagged": False, "method": "energy"}
UNFITTED = {"score": -7.5, "threshold": None, "flagged": False, "method": "energy"}


def _images(count: int) -> list[bytes]:
    buffer = io.BytesIO()
    Image.fromarray(GREY).save(buffer, format="PNG")
    return [buffer.getvalue() + b"\x00" * i for i in range(count)]


# Parsing -----------------------------------------------------------------------------


def test_each_result_carries_its_verdict(harness: Any, fake: Any) -> None:
    fake.ood = [FLAGGED, UNFLAGGED, UNFITTED, None]
    results = harness.client(fake).classify_many(_images(5), model="lenet5-fashion")
    flagged, unflagged, unfitted, null, flagged_again = (result.ood for result in results)
    assert flagged == OutOfDistribution(
        score=3.25, threshold=1.0, flagged=True, method="energy+mahalanobis"
    )
    assert unflagged == OutOfDistribution(0.5, 1.0, False, "energy")
    assert unfitted == OutOfDistribution(-7.5, None, False, "energy")
    assert null is None
    assert flagged_again == flagged


def test_a_result_without_ood_has_none(harness: Any, fake: Any) -> None:
    result = harness.client(fake).classify(GREY, model="lenet5-fashion")
    assert result.ood is None
    assert result.top.label in fake.LABELS


def test_integer_scores_are_floats(harness: Any, fake: Any) -> None:
    fake.ood = [{"score": 2, "threshold": 1, "flagged": True, "method": "energy"}]
    ood = harness.client(fake).classify(GREY, model="lenet5-fashion").ood
    assert ood is not None
    assert (ood.score, ood.threshold) == (2.0, 1.0)
    assert isinstance(ood.score, float) and isinstance(ood.threshold, float)


@pytest.mark.parametrize(
    "ood",
    [
        "flagged",
        {"threshold": 1.0, "flagged": True, "method": "energy"},
        {"score": "3", "threshold": 1.0, "flagged": True, "method": "energy"},
        {"score": True, "threshold": 1.0, "flagged": True, "method": "energy"},
        {"score": 3.0, "threshold": "none", "flagged": True, "method": "energy"},
        {"score": 3.0, "threshold": 1.0, "flagged": "yes", "method": "energy"},
        {"score": 3.0, "threshold": 1.0, "flagged": 1, "method": "energy"},
        {"score": 3.0, "threshold": 1.0, "flagged": True},
        {"score": 3.0, "threshold": 1.0, "flagged": True, "method": ""},
        {"score": 3.0, "threshold": 1.0, "flagged": True, "method": ["energy"]},
    ],
    ids=[
        "not an object",
        "no score",
        "score as text",
        "score as bool",
        "threshold as text",
        "flagged as text",
        "flagged as a number",
        "no method",
        "empty method",
        "method as a list",
    ],
)
def test_verdicts_off_the_contract_are_invalid_responses(harness: Any, fake: Any, ood: Any) -> None:
    fake.ood = [ood]
    with pytest.raises(InvalidResponseError) as caught:
        harness.client(fake).classify(GREY, model="lenet5-fashion")
    assert "ood" in caught.value.message


def test_a_non_finite_score_is_an_invalid_response(harness: Any) -> None:
    # Python's json writes NaN; a strict server never should.
    body = (
        '{"model": "m", "model_version": "1", "results": [{"filename": "a.png", '
        '"predictions": [{"index": 0, "label": "a", "probability": 1.0}], '
        '"ood": {"score": NaN, "threshold": 1.0, "flagged": false, "method": "energy"}}]}'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    with pytest.raises(InvalidResponseError):
        harness.client(handler).classify(GREY, model="m")


# Calibration -------------------------------------------------------------------------


def test_calibrated_probabilities_are_the_default_and_ask_for_nothing(
    harness: Any, fake: Any
) -> None:
    harness.client(fake).classify(GREY, model="lenet5-fashion")
    assert "calibrated" not in fake.requests[0].url.params


def test_raw_softmax_on_request(harness: Any, fake: Any) -> None:
    client = harness.client(fake)
    client.classify(GREY, model="lenet5-fashion", calibrated=False)
    client.classify_many(_images(3), model="lenet5-fashion", calibrated=False, top_k=2)
    for request in fake.requests:
        assert request.url.params["calibrated"] == "false"
    assert fake.requests[1].url.params["top_k"] == "2"


def test_raw_softmax_survives_rechunking(harness: Any, fake: Any) -> None:
    fake.max_images = 2
    client = harness.client(fake)
    results = client.classify_many(_images(5), model="lenet5-fashion", calibrated=False)
    assert len(results) == 5
    assert [r.url.params.get("calibrated") for r in fake.requests] == ["false"] * 4
