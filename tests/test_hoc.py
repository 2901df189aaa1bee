"""HOC's counts and fit (estimators/hoc_core.py) on synthetic labels drawn through a known T (the answer known)."""

import numpy as np
import pytest

from noisy_convnet import noise
from noisy_convnet.estimators import hoc_core as hoc


def _clusters(seed: int, k: int = 3, n: int = 15_000, level: float = 0.3):
    """Well-separated clusters (one per true class) and noisy labels drawn through a random Q* at level."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    features = 5.0 * rng.standard_normal((k, 32))[y] + rng.standard_normal((n, 32))
    y_noisy = noise.corrupt(y, noise.random(k, level, rng), rng)
    return features, y_noisy, noise.realised(y, y_noisy, k), rng


def test_the_nearest_neighbours_exclude_the_image_itself():
    f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3]])
    first, second = hoc.two_nearest(f, block=3)  # across two blocks
    assert first.tolist() == [1, 0, 3, 1] and second.tolist() == [3, 3, 1, 0]


def test_the_counts_of_an_oracle_match_the_polynomials_of_the_true_t():
    """Neighbours of the same true class with independent label noise: the expected counts are the
    polynomials of T and the prior."""
    features, y_noisy, q_real, rng = _clusters(0)
    counts = hoc.consensus(features, y_noisy, 3, rounds=1, sample_size=len(y_noisy), rng=rng)
    import torch

    prior = torch.full((3,), 1 / 3, dtype=torch.float64)
    expected = hoc.polynomials(torch.as_tensor(q_real.T), prior)
    for c, e in zip(counts, expected, strict=True):
        assert np.abs(c - e.numpy()).max() < 0.02
    assert counts[0].sum() == pytest.approx(1.0) and counts[2].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_hoc_recovers_t_from_clusterable_features(seed):
    features, y_noisy, q_real, rng = _clusters(seed)
    counts = hoc.consensus(features, y_noisy, 3, rounds=1, sample_size=len(y_noisy), rng=rng)
    t, loss = hoc.fit_t(*counts, steps=1500, lr=0.1, seed=0)
    assert np.allclose(t.sum(axis=1), 1.0) and loss < 0.05
    assert noise.q_error(t.T, q_real) < 0.05
    start = noise.q_error(np.full((3, 3), 1 / 3), q_real)  # a guess that knows nothing is far off
    assert start > 0.5
