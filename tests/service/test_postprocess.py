"""softmax and top-k, the last step of every classification, against plain references; the
check that no NaN or infinite score reaches a client."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.dataplane import _finite
from service.errors import ModelOutputError
from service.postprocess import softmax, top_k


def reference_top_k(row: np.ndarray, k: int) -> list[int]:
    """Largest first; equal values: the lower index first."""
    return sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]


# Few distinct values, so that ties are common; both the sort and the partition branch.
scores = st.integers(1, 6).flatmap(
    lambda rows: st.sampled_from([10, 64, 65, 1000]).flatmap(
        lambda classes: hnp.arrays(
            np.float32, (rows, classes), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(scores=scores, k=st.integers(1, 10))
def test_top_k_is_the_k_largest_largest_first(scores: np.ndarray, k: int) -> None:
    indices, values = top_k(scores, k)
    assert indices.shape == values.shape == (len(scores), k)
    for row, got, value in zip(scores, indices, values, strict=True):
        assert got.tolist() == reference_top_k(row, k)
        assert value.tolist() == row[got].tolist()


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=20),
        elements=st.floats(-1e4, 1e4, width=32),
    )
)
def test_softmax_rows_are_probabilities_in_the_order_of_the_logits(logits: np.ndarray) -> None:
    probabilities = softmax(logits)
    assert np.allclose(probabilities.sum(axis=-1), 1.0)
    assert (probabilities >= 0).all()
    order = np.argsort(logits, axis=-1, kind="stable")
    assert (np.diff(np.take_along_axis(probabilities, order, -1), axis=-1) >= 0).all()


@pytest.mark.parametrize("classes", [10, 1000])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_score_that_is_not_finite_is_a_model_output_error(classes: int, bad: float) -> None:
    """Whichever way the check runs (a Python sum for a few scores, numpy for many), a NaN or
    an infinity anywhere refuses the request, naming the rows."""
    model = SimpleNamespace(runtime=SimpleNamespace(name="m"), version="1")
    scores = np.zeros((3, classes), np.float32)
    scores[1, classes - 1] = bad
    with pytest.raises(ModelOutputError) as raised:
        _finite(model, (scores,))  # type: ignore[arg-type]
    assert raised.value.detail["rows"] == [1]


def test_finite_scores_whose_sum_overflows_pass() -> None:
    model = SimpleNamespace(runtime=SimpleNamespace(name="m"), version="1")
    scores = np.full((1, 4), np.finfo(np.float64).max)
    assert _finite(model, (scores,))[0] is scores  # type: ignore[arg-type]
