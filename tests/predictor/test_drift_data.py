"""Progress-point sampling for drift training rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.drift_data import drift_features, naive_remaining, progress_points


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(1, 5000), min_size=1, max_size=50),
    st.integers(0, 3),
    st.integers(0, 2**31),
)
def test_points_are_strictly_inside_each_trace(
    lengths: list[int], n_random: int, seed: int
) -> None:
    L = np.array(lengths)
    r, t = progress_points(L, np.random.default_rng(seed), (32, 128, 512), n_random)
    assert r.shape == t.shape
    assert ((t >= 1) & (t < L[r])).all()
    for p in (32, 128, 512):  # every fixed point below the length is present exactly once
        assert np.sum(t[r == 0] == p) >= (1 if L[0] > p else 0)
    assert np.sum(r == 0) == sum(L[0] > p for p in (32, 128, 512)) + (n_random if L[0] >= 2 else 0)


def test_features_and_naive_baseline() -> None:
    F = np.zeros((2, 3), np.float32)
    X = drift_features(F, np.array([[100, 200], [10, 20]]), np.array([50, 30]))
    assert X.shape == (2, 13)
    np.testing.assert_allclose(
        naive_remaining([[100, 200], [10, 20]], [50, 30]), [[50, 150], [1, 1]]
    )
    with pytest.raises(ValueError, match="same number of rows"):
        drift_features(F, np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        drift_features(F, np.ones((2, 2)), np.array([-1, 0]))
