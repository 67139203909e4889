"""Calibration and OOD fitting: the maths on constructed cases, a small real fit on the
committed LeNet-5, `cnnserve calibrate` for imported models, the committed statistics, and
the issue's acceptance test (digits flagged by resnet-fashion, Fashion-MNIST mostly not)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testkit import MODELS, png

from model_export.calibrate import (
    VAL_FLAG_RATE,
    CalibrationError,
    calibrate_dataset,
    fit_temperature,
)
from model_export.calibrate_images import calibrate_images, read_labels
from model_export.datasets import load_fashion_mnist
from model_export.features import Candidate, FeatureExtractor, images_to_tensor
from model_export.ood_fit import ClassGaussians, fit_class_gaussians, thresholds_at_rate
from model_export.ood_metrics import auroc, fpr_at_95_tpr
from model_export.ood_sets import ood_sets
from model_export.repository import record_version_facts
from service import calibration, ood, ood_file
from service.model_card import load_card

CNNSERVE = Path(sys.executable).parent / "cnnserve"
FASHION = ("lenet5-fashion", "vggnet-fashion", "resnet-fashion")
rng = np.random.default_rng(0)


def test_the_fitted_temperature_is_where_the_nll_is_lowest() -> None:
    # Over-confident logits: the labels follow softmax(z), the network says softmax(3 z).
    z = rng.normal(0, 1.5, (5000, 10))
    labels = np.array([rng.choice(10, p=p) for p in calibration.softmax(z)])
    logits = 3.0 * z
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    best = calibration.negative_log_likelihood(logits, labels, t)
    assert best < calibration.negative_log_likelihood(logits, labels, 1.0)
    for other in (t * 0.98, t * 1.02):
        assert best < calibration.negative_log_likelihood(logits, labels, other)
    # The scaled probabilities are calibrated: ECE falls to sampling noise.
    before = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    after = calibration.expected_calibration_error(calibration.softmax(logits, t), labels)
    assert after < 0.02 < before


def test_fitted_gaussians_recover_the_means_and_the_shared_covariance() -> None:
    truth = np.array([[2.0, 0.5], [0.5, 1.0]])
    means = np.array([[0.0, 0.0], [10.0, -5.0], [-3.0, 8.0]])
    labels = np.repeat(np.arange(3), 20_000)
    x = 1000.0 + means[labels] + rng.multivariate_normal([0, 0], truth, len(labels))
    fitted_means, covariance = fit_class_gaussians(x, labels, 3, ridge=0.0)
    assert np.allclose(fitted_means, 1000.0 + means, atol=0.05)
    assert np.allclose(covariance, truth, atol=0.05)
    # Batch by batch gives the same numbers as all at once.
    streamed = ClassGaussians(3, 2)
    order = rng.permutation(len(x))
    for chunk in np.array_split(order, 7):
        streamed.add(x[chunk], labels[chunk])
    again_means, again_covariance = streamed.result(ridge=0.0)
    assert np.allclose(again_means, fitted_means) and np.allclose(again_covariance, covariance)
    dead = np.c_[x, np.zeros(len(x))]  # a unit that never fires: the ridge keeps it invertible
    _, with_ridge = fit_class_gaussians(dead, labels, 3)
    assert np.linalg.eigvalsh(with_ridge).min() > 0
    with pytest.raises(ValueError, match="classes"):
        fit_class_gaussians(x, labels, 4)


def test_thresholds_flag_at_most_the_target_share_of_validation() -> None:
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    alone, q, rate = thresholds_at_rate({"a": a}, 0.05)
    assert rate == pytest.approx(0.05, abs=0.001) and alone["a"] == pytest.approx(
        np.quantile(a, 0.95), abs=0.01
    )
    _, q, rate = thresholds_at_rate({"a": a, "b": b}, 0.05)
    assert 0.045 <= rate <= 0.05 and 0.97 < q < 0.98  # independent: each near 97.5 %
    _, q, rate = thresholds_at_rate({"a": a, "b": a}, 0.05)
    assert q == pytest.approx(0.95, abs=0.002)  # the same score twice adds no alarms


def test_auroc_and_fpr95_on_constructed_scores() -> None:
    inside, outside = rng.normal(size=400), rng.normal(size=300)
    pairs = (outside[:, None] > inside[None]).mean() + 0.5 * (outside[:, None] == inside).mean()
    assert auroc(inside, outside) == pytest.approx(pairs)
    assert auroc(inside, inside + 100) == 1.0 and auroc(inside + 100, inside) == 0.0
    assert auroc(np.zeros(10), np.zeros(5)) == 0.5  # ties count half
    assert fpr_at_95_tpr(inside, inside + 100) == 0.0
    assert fpr_at_95_tpr(np.arange(100.0), np.arange(100.0)) == pytest.approx(0.95, abs=0.01)


def test_labels_file_takes_indices_or_label_names(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text("# name<TAB>class\n\na.png\t3\nb.png\tAnkle boot\n")
    labels = load_card(MODELS / "lenet5-fashion" / "model.json").labels
    assert read_labels(path, labels) == {"a.png": 3, "b.png": 9}
    for bad, message in (("a.png 3\n", "file name<TAB>class"), ("a.png\tboot\n", "'boot'")):
        path.write_text(bad)
        with pytest.raises(CalibrationError, match=message):
            read_labels(path, labels)
    path.write_text("a.png\t10\n")
    with pytest.raises(CalibrationError, match="below 10"):
        read_labels(path, labels)


def test_facts_are_merged_into_the_versions_key(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    card = {"name": "m", "versions": {"1": {"precision": "fp32"}, "2": {"precision": "int8"}}}
    (root / "model.json").write_text(json.dumps(card))
    record_version_facts(root, "1", {"calibration": {"temperature": 1.5}})
    record_version_facts(root, "1", {"ood": {"methods": ["energy"]}})
    saved = json.loads((root / "model.json").read_text())
    assert saved["versions"] == {
        "1": {
            "precision": "fp32",
            "calibration": {"temperature": 1.5},
            "ood": {"methods": ["energy"]},
        },
        "2": {"precision": "int8"},
    }
    assert saved["name"] == "m"


@pytest.fixture
def lenet_repo(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(MODELS / "lenet5-fashion", target / "lenet5-fashion")
    (target / "lenet5-fashion" / "1" / "ood.npz").unlink(missing_ok=True)
    return target


@pytest.mark.slow
def test_a_small_real_fit_writes_statistics_the_service_can_load(lenet_repo: Path) -> None:
    facts = calibrate_dataset(
        "lenet5-fashion", dataset="fashion-mnist", model_dir=lenet_repo, limit=600
    )
    calibration, ood = facts["calibration"], facts["ood"]
    assert 0.5 < calibration["temperature"] < 5.0
    assert calibration["nll"]["val"]["after"] <= calibration["nll"]["val"]["before"]
    assert calibration["images"] == {"val": 600, "test": 600}
    path = lenet_repo / "lenet5-fashion" / "1" / "ood.npz"
    detector = ood_file.load_detector(path)
    assert [m.name for m in detector.methods] == ood["methods"][:2] and "energy" in ood["methods"]
    assert {m.name: m.threshold for m in detector.methods} == ood["thresholds"]
    assert ood["val_flag_rate"] <= VAL_FLAG_RATE and path.stat().st_size < 1 << 20
    assert ood["selection"]["why"] and ood["selection"]["chosen"]["flag_rates"]
    # What the service will do with it: augment the graph, score a batch, decide.
    extractor = FeatureExtractor(
        lenet_repo / "lenet5-fashion" / "1" / "model.onnx",
        _candidates(detector),
    )
    test = load_fashion_mnist().test
    spec = load_card(lenet_repo / "lenet5-fashion" / "model.json").input
    _, logits, tensors = next(extractor.batches(images_to_tensor(test.images[:64], spec)))
    verdict = detector.assess(logits, tensors)
    assert verdict.flagged.mean() < 0.25
    card = json.loads((lenet_repo / "lenet5-fashion" / "model.json").read_text())
    assert card["versions"]["1"] == facts and card["name"] == "lenet5-fashion"


def _candidates(detector: ood.OodDetector) -> list[Candidate]:
    return [Candidate(x.name, x.output, x.grid, x.dimensions) for x in detector.layers]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CNNSERVE), *args], capture_output=True, text=True, timeout=300)


def test_calibrate_from_labelled_images_for_an_imported_model(
    lenet_repo: Path, tmp_path: Path
) -> None:
    test = load_fashion_mnist().test
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i in range(80):
        (folder / f"{i:03d}.png").write_bytes(png(test.images[i]))
        lines.append(f"{i:03d}.png\t{test.labels[i]}")
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    result = _cli(
        "calibrate",
        "lenet5-fashion",
        "--images",
        str(folder),
        "--labels",
        str(tmp_path / "labels.tsv"),
        "--model-dir",
        str(lenet_repo),
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["calibration"]["images"] == {"images": 80}
    assert facts["ood"]["methods"] == ["energy"] and facts["ood"]["thresholds"]["energy"] < 0
    detector = ood_file.load_detector(lenet_repo / "lenet5-fashion" / "1" / "ood.npz")
    assert detector.name == "energy" and detector.outputs == ()
    # Without labels: a threshold, no temperature.
    unlabelled = calibrate_images("lenet5-fashion", images=folder, model_dir=lenet_repo)
    assert "calibration" not in unlabelled and unlabelled["ood"]["val_flag_rate"] <= VAL_FLAG_RATE


def test_an_imported_model_without_images_keeps_energy_without_threshold(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "mobilenetv2-imagenet", repo / "mobilenetv2-imagenet")
    result = _cli("calibrate", "mobilenetv2-imagenet", "--model-dir", str(repo))
    assert result.returncode == 0, result.stderr
    card = json.loads((repo / "mobilenetv2-imagenet" / "model.json").read_text())
    ood = card["versions"]["1"]["ood"]
    assert ood["thresholds"] == {"energy": None} and "no threshold" in ood["why"]
    assert not (repo / "mobilenetv2-imagenet" / "1" / "ood.npz").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("calibrate", "lenet5-fashion", "--dataset", "fashion-mnist", "--images", "."),
            "not both",
        ),
        (("calibrate", "lenet5-fashion", "--labels", "x.tsv"), "--labels goes with --images"),
        (("calibrate", "no-such-model", "--dataset", "fashion-mnist"), "model.json is missing"),
        (("calibrate", "lenet5-fashion", "--dataset", "cifar"), "unknown dataset"),
        (("calibrate", "lenet5-fashion", "--version", "7"), "has no version 7"),
        (("calibrate", "lenet5-fashion", "--images", "/nonexistent"), "not a folder of images"),
    ],
)
def test_calibrate_errors_are_one_line(
    args: tuple[str, ...], message: str, lenet_repo: Path
) -> None:
    result = _cli(*args, "--model-dir", str(lenet_repo))
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", FASHION)
def test_committed_models_carry_a_temperature_and_ood_statistics(name: str) -> None:
    card = json.loads((MODELS / name / "model.json").read_text())
    facts = card["versions"]["1"]
    calibration, ood = facts["calibration"], facts["ood"]
    assert calibration["temperature"] > 0 and calibration["ece_bins"] == 15
    assert calibration["ece"]["test"]["after"] <= 0.015  # the target
    assert calibration["ece"]["test"]["after"] < calibration["ece"]["test"]["before"]
    path = MODELS / name / "1" / ood["file"]
    assert path.stat().st_size < 1 << 20
    detector = ood_file.load_detector(path)
    assert [m.name for m in detector.methods] == ood["methods"] == ["energy", "mahalanobis"]
    assert {m.name: m.threshold for m in detector.methods} == ood["thresholds"]
    assert [(x.name, x.grid) for x in detector.layers] == [
        (layer["name"], layer["grid"]) for layer in ood["layers"]
    ]
    assert ood["val_flag_rate"] <= ood["target_val_flag_rate"]


@pytest.mark.slow
def test_digits_sent_to_resnet_fashion_are_flagged_and_fashion_mostly_not() -> None:
    """The issue's acceptance test, on the images the layers were not chosen with."""
    root = MODELS / "resnet-fashion"
    spec = load_card(root / "model.json").input
    detector = ood_file.load_detector(root / "1" / "ood.npz")
    extractor = FeatureExtractor(root / "1" / "model.onnx", _candidates(detector))
    data = load_fashion_mnist()
    digits = ood_sets(data, spec, "benchmark")["digits"]

    def flagged(images: np.ndarray) -> float:
        rates = [detector.assess(logits, t).flagged for _, logits, t in extractor.batches(images)]
        return float(np.concatenate(rates).mean())

    assert len(digits) == 4000
    assert flagged(digits) >= 0.90
    assert flagged(images_to_tensor(data.test.images, spec)) <= 0.06
