"""The committed models meet their accuracy bars, recomputed by ONNX Runtime from the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export.report import fashion_accuracy

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "bar"), [("lenet5-fashion", 0.90), ("vggnet-fashion", 0.93), ("resnet-fashion", 0.935)]
)
def test_fashion_model_accuracy_on_the_full_test_set(name: str, bar: float) -> None:
    card = json.loads((MODELS / name / "model.json").read_text())
    accuracy = fashion_accuracy(
        MODELS / name / "1" / "model.onnx", card["input"]["mean"][0], card["input"]["std"][0]
    )
    assert accuracy >= bar
    # model.json's figure came from PyTorch; ONNX Runtime must agree with it.
    assert accuracy == pytest.approx(card["metrics"]["test_accuracy"], abs=0.002)


@pytest.mark.parametrize(
    "name", ["lenet5-fashion", "vggnet-fashion", "resnet-fashion", "mobilenetv2-imagenet"]
)
def test_every_model_has_its_card_labels_and_triton_config(name: str) -> None:
    root = MODELS / name
    card = json.loads((root / "model.json").read_text())
    assert card["name"] == name and (root / "1" / "model.onnx").is_file()
    assert (root / "labels.txt").read_text().splitlines() == card["labels"]
    assert f'name: "{name}"' in (root / "config.pbtxt").read_text()
    verification = card["produced_by"]["verification"]
    assert verification["max_abs_diff"] <= verification["atol"] + 1e-3
