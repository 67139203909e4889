"""service.ood: calibration and out-of-distribution maths on constructed cases, the
statistics file and its loader, and the cost of scoring a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import calibration, ood, ood_file
from service.postprocess import softmax as service_softmax

rng = np.random.default_rng(0)


def test_softmax_at_temperature_one_is_the_plain_softmax() -> None:
    logits = rng.normal(0, 5, (64, 10)).astype(np.float32)
    assert np.array_equal(calibration.softmax(logits, 1.0), service_softmax(logits))
    assert calibration.softmax(logits).dtype == np.float64


def test_softmax_with_temperature_divides_the_logits_and_stays_stable() -> None:
    logits = rng.normal(0, 5, (16, 10))
    assert np.allclose(calibration.softmax(logits, 2.5), service_softmax(logits / 2.5), atol=1e-15)
    huge = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4 + 1.0, -1e4]])
    p = calibration.softmax(huge, 0.5)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == 1.0 and p[1, 1] > p[1, 0]
    # A higher temperature lowers the top probability, never the ranking.
    assert (calibration.softmax(logits, 3.0).max(1) < calibration.softmax(logits).max(1)).all()
    assert np.array_equal(calibration.softmax(logits, 3.0).argmax(1), logits.argmax(1))


def test_ece_of_a_perfectly_calibrated_synthetic_set_is_near_zero() -> None:
    # Draw a confidence, then a correct answer with exactly that probability.
    n, classes = 200_000, 10
    confidence = rng.uniform(0.1, 1.0, n)
    correct = rng.uniform(size=n) < confidence
    labels = rng.integers(0, classes, n)
    predicted = np.where(correct, labels, (labels + rng.integers(1, classes, n)) % classes)
    probabilities = np.full((n, classes), 0.0)
    probabilities[np.arange(n), predicted] = confidence
    assert calibration.expected_calibration_error(probabilities, labels) < 0.005
    # Claiming 0.99 while right only as often as the draw says is far off.
    probabilities[np.arange(n), predicted] = 0.99
    assert calibration.expected_calibration_error(probabilities, labels) > 0.3


def test_ece_uses_fifteen_right_closed_equal_width_bins() -> None:
    # Two predictions at exactly 1/15 (bin 0), one at 1.0 (bin 14), all wrong.
    probabilities = np.zeros((3, 20))
    probabilities[0, 0] = probabilities[1, 0] = 1 / 15
    probabilities[2, 0] = 1.0
    diagram = calibration.reliability(probabilities, np.array([1, 1, 1]))
    assert len(diagram.counts) == calibration.ECE_BINS == 15
    assert diagram.counts[0] == 2 and diagram.counts[14] == 1 and diagram.counts.sum() == 3
    assert np.isnan(diagram.accuracy[5])  # empty bins do not count
    assert diagram.ece == pytest.approx((2 * (1 / 15) + 1.0) / 3)


def test_energy_is_minus_t_logsumexp_and_higher_for_flat_logits() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = -np.log(np.exp(logits).sum(axis=1))
    assert np.allclose(ood.energy(logits), expected)
    assert np.allclose(ood.energy(logits, 2.0), -2.0 * np.log(np.exp(logits / 2).sum(axis=1)))
    assert ood.energy(logits)[1] > ood.energy(logits)[0]
    assert np.isfinite(ood.energy(np.array([[1e5, -1e5]]))).all()


def _gaussian_layer(
    dims: int = 8, classes: int = 3, name: str = "fc", output: str = "fc_in"
) -> ood.MahalanobisLayer:
    a = rng.normal(size=(dims, dims))
    covariance = a @ a.T + dims * np.eye(dims)
    means = rng.normal(0, 5, (classes, dims))
    return ood.MahalanobisLayer.from_covariance(name, output, means, covariance)


def test_mahalanobis_of_a_class_mean_is_zero_and_grows_with_distance() -> None:
    layer = _gaussian_layer()
    # Features are whitened in float32: "zero" is zero to float32 precision.
    assert np.allclose(layer.score(layer.means), 0.0, atol=1e-4)
    precision = np.linalg.inv(layer.covariance)
    # One class: the squared distance grows as the square of the step along any line.
    single = ood.MahalanobisLayer("fc", "fc_in", layer.means[:1], layer.cholesky)
    direction = rng.normal(size=8)
    steps = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    scores = single.score(layer.means[0] + steps[:, None] * direction)
    assert np.allclose(scores, steps**2 * (direction @ precision @ direction), rtol=1e-5, atol=1e-4)
    assert (np.diff(scores) > 0).all()
    # Several classes: the distance to the nearest mean, as the textbook writes it.
    x = rng.normal(0, 5, (20, 8))
    textbook = np.min(
        [np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in layer.means], axis=0
    )
    assert np.allclose(layer.score(x), textbook, rtol=1e-5)
    assert (layer.score(x) <= single.score(x) * (1 + 1e-6)).all()


def test_a_feature_map_is_average_pooled_before_scoring() -> None:
    layer = _gaussian_layer()
    maps = rng.normal(size=(5, 8, 3, 3)).astype(np.float32)
    assert np.allclose(layer.score(maps), layer.score(maps.mean(axis=(2, 3))))
    with pytest.raises(ValueError, match="8"):
        layer.score(np.zeros((2, 7)))


def _detector() -> ood.OodDetector:
    # Two channels on a 2x2 grid: 8 features.
    means = rng.normal(size=(3, 8)).astype(np.float32)
    conv = ood.MahalanobisLayer(
        "conv", "conv_out", means, np.eye(8, dtype=np.float32), grid=2, center=4.0, scale=2.0
    )
    fc = _gaussian_layer().with_standardisation(8.0, 4.0)
    return ood.OodDetector(
        (
            ood.OodMethod("energy", threshold=-5.0, center=-9.0),
            ood.OodMethod("mahalanobis", threshold=3.0, center=0.5, layers=(conv, fc)),
        ),
        energy_temperature=1.0,
    )


def test_flagged_when_any_method_is_past_its_own_threshold() -> None:
    detector = _detector()
    conv, fc = detector.layers
    logits = np.array([[12.0, 0, 0], [1.0, 0, 0], [12.0, 0, 0], [1.0, 0, 0]])
    # A 2x2 map on a 2x2 grid pools to itself, channel first.
    at_mean = conv.means[0].reshape(2, 2, 2)
    features = {
        "conv_out": np.stack([at_mean] * 2 + [at_mean + 30] * 2),
        "fc_in": np.repeat(fc.means[:1], 4, axis=0),
    }
    result = detector.assess(logits, features)
    assert result.flagged.tolist() == [False, True, True, True]
    assert result.fired == [[], ["energy"], ["mahalanobis"], ["energy", "mahalanobis"]]
    assert detector.outputs == ("conv_out", "fc_in")
    # The combined score crosses 1 exactly where a method crosses its threshold.
    assert ((result.score > 1.0) == result.flagged).all()
    e, m = result.method_scores["energy"], result.method_scores["mahalanobis"]
    assert np.allclose(result.score, np.maximum((e + 9.0) / 4.0, (m - 0.5) / 2.5))
    # Several layers: the sum of their standardised distances.
    expected = (conv.score(features["conv_out"]) - 4.0) / 2.0 + (
        fc.score(features["fc_in"]) - 8.0
    ) / 4.0
    assert np.allclose(result.method_scores["mahalanobis"], expected)
    verdict = result.verdict(3)
    assert verdict == {
        "score": pytest.approx(float(result.score[3])),
        "threshold": 1.0,
        "flagged": True,
        "method": "energy+mahalanobis",
        "fired": ["energy", "mahalanobis"],
    }
    with pytest.raises(KeyError, match="fc_in"):
        detector.assess(logits, {"conv_out": features["conv_out"]})


def test_without_statistics_only_energy_is_scored_and_nothing_is_flagged() -> None:
    detector = ood.OodDetector.energy_only()
    logits = rng.normal(size=(4, 10))
    result = detector.assess(logits)
    assert result.threshold is None and not result.flagged.any()
    assert np.allclose(result.score, ood.energy(logits))
    assert result.verdict(0)["method"] == "energy" and detector.outputs == ()


def test_the_statistics_file_round_trips(tmp_path: Path) -> None:
    detector = _detector()
    path = tmp_path / "ood.npz"
    ood_file.save_detector(path, detector)
    loaded = ood_file.load_detector(path)
    assert loaded.name == detector.name and loaded.outputs == detector.outputs
    logits = rng.normal(0, 3, (32, 3))
    features = {"conv_out": rng.normal(size=(32, 2, 5, 5)), "fc_in": rng.normal(0, 5, (32, 8))}
    a, b = detector.assess(logits, features), loaded.assess(logits, features)
    # The statistics were float32 already (from_covariance): nothing changes on the way.
    assert np.allclose(a.score, b.score, rtol=1e-12, atol=0)
    assert a.fired == b.fired and [x.grid for x in loaded.layers] == [2, 1]
    with np.load(path, allow_pickle=False) as data:
        assert data["cholesky_1"].dtype == np.float32 and data["cholesky_1"].shape == (36,)
        assert data["methods"].dtype.kind == "U"


def _write(path: Path, **changes: object) -> Path:
    good = tmp = path.parent / "good.npz"
    ood_file.save_detector(tmp, _detector())
    with np.load(good, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = np.asarray(value)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"thresholds": None}, "'thresholds' is missing"),
        ({"format": np.array(2)}, "format 2"),
        ({"thresholds": np.array([1.0, np.nan])}, "not finite"),
        ({"thresholds": np.array([1.0, 2.0, 3.0])}, r"shape \(3,\)"),
        ({"methods": np.array(["energy", "odin"])}, "methods"),
        ({"means_1": np.zeros((3, 8), np.int32)}, "dtype int32"),
        ({"means_1": np.zeros((4, 8), np.float32)}, r"'means_1' has shape \(4, 8\)"),
        ({"means_0": np.full((3, 8), np.inf, np.float32)}, "not finite"),
        ({"cholesky_0": -np.ones(36, np.float32)}, "diagonal entry that is not positive"),
        ({"cholesky_0": np.ones(35, np.float32)}, r"'cholesky_0' has shape \(35,\)"),
        ({"cholesky_1": None}, "'cholesky_1' is missing"),
        ({"layer_grid": np.array([0, 1])}, "layer_grid"),
        ({"layer_scale": np.array([1.0, 0.0])}, "layer_scale"),
        ({"layer_method": np.array([0, 0])}, "method energy has 2 layers"),
        ({"centers": np.array([-9.0, 5.0])}, "above its method's validation median"),
    ],
)
def test_the_loader_refuses_bad_files(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    path = _write(tmp_path / "bad.npz", **changes)
    with pytest.raises(ood_file.OodStatsError, match=message) as error:
        ood_file.load_detector(path)
    assert "bad.npz" in str(error.value)


def test_the_loader_refuses_what_is_not_an_npz(tmp_path: Path) -> None:
    for content in (b"", b"not a zip file", b"PK\x03\x04truncated"):
        path = tmp_path / "ood.npz"
        path.write_bytes(content)
        with pytest.raises(ood_file.OodStatsError, match=r"ood\.npz"):
            ood_file.load_detector(path)
    with pytest.raises(ood_file.OodStatsError, match=r"missing\.npz"):
        ood_file.load_detector(tmp_path / "missing.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, methods=np.array([object()], dtype=object))
    with pytest.raises(ood_file.OodStatsError, match=r"pickled\.npz"):
        ood_file.load_detector(pickled)
