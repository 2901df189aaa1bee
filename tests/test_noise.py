"""Q* builders and label corruption (noise.py): structure, the rate they yield, reproducibility."""

import numpy as np
import pytest

from noisy_convnet import noise
from noisy_convnet.errors import UserError

K = 10


def rng(s=0):
    return np.random.default_rng(s)


@pytest.mark.parametrize("kind", noise.MATRIX_KINDS)
@pytest.mark.parametrize("level", [0.0, 0.3, 0.5, 0.8])
def test_matrices_are_column_stochastic_with_diagonal_one_minus_level(kind, level):
    q = noise.matrix(kind, K, level, rng())
    assert q.shape == (K, K)
    assert (q >= 0).all()
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(q), 1.0 - level, atol=1e-12)


def test_uniform_spreads_level_evenly():
    q = noise.uniform(K, 0.45)
    off = q[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, 0.45 / (K - 1))


def test_pair_flips_to_next_class_only():
    q = noise.pair(K, 0.3)
    for i in range(K):
        assert q[(i + 1) % K, i] == pytest.approx(0.3)
        assert np.count_nonzero(q[:, i]) == 2


def test_random_is_seeded_and_not_uniform():
    a, b = noise.random(K, 0.5, rng(1)), noise.random(K, 0.5, rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, noise.random(K, 0.5, rng(2)))
    assert a[~np.eye(K, dtype=bool)].std() > 0.01  # mass spread unevenly, unlike uniform


@pytest.mark.parametrize("kind", noise.MATRIX_KINDS)
def test_realised_flip_rate_and_matrix_match_q_for_large_n(kind):
    q = noise.matrix(kind, K, 0.4, rng())
    y = np.repeat(np.arange(K), 20_000)
    y_noisy = noise.corrupt(y, q, rng(3))
    assert (y_noisy != y).mean() == pytest.approx(0.4, abs=0.01)
    assert noise.q_error(noise.realised(y, y_noisy, K), q) < 0.05


def test_same_seed_same_noisy_labels_other_seed_other_labels():
    q = noise.uniform(K, 0.5)
    y = np.arange(1000) % K
    a, b, c = (noise.corrupt(y, q, rng(s)) for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_level_zero_changes_nothing():
    y = np.arange(500) % K
    np.testing.assert_array_equal(noise.corrupt(y, noise.uniform(K, 0.0), rng()), y)


def test_singularity():
    assert noise.is_singular(noise.uniform(K, (K - 1) / K))
    assert noise.is_singular(noise.pair(K, 0.5))  # (1-l) I + l P has eigenvalue 0 for even K at 0.5
    assert not noise.is_singular(noise.uniform(K, 0.5))
    assert not noise.is_singular(noise.random(K, 0.5, rng()))


def test_q_error_is_mean_column_l1():
    a, b = np.eye(3), np.array([[0.5, 0, 0], [0.5, 1, 0], [0, 0, 1]])
    assert noise.q_error(a, b) == pytest.approx(1.0 / 3)


def test_matrix_file_round_trip(tmp_path):
    q = noise.random(K, 0.3, rng())
    np.save(tmp_path / "q.npy", q)
    np.savetxt(tmp_path / "q.csv", q, delimiter=",")
    np.testing.assert_allclose(noise.matrix(str(tmp_path / "q.npy"), K, 0.0, rng()), q)
    np.testing.assert_allclose(noise.matrix(str(tmp_path / "q.csv"), K, 0.0, rng()), q, atol=1e-12)


@pytest.mark.parametrize(
    "content, message",
    [
        (np.eye(3), "shape"),
        (np.full((K, K), 0.2), "sum to 1"),
        (-np.eye(K) + 2 * np.eye(K)[::-1], ">= 0"),
    ],
)
def test_malformed_matrix_file_is_a_user_error(tmp_path, content, message):
    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(UserError, match=message):
        noise.from_file(tmp_path / "bad.npy", K)


def test_missing_or_unreadable_matrix_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        noise.from_file(tmp_path / "nope.npy", K)
    (tmp_path / "text.csv").write_text("a,b\nc,d\n")
    with pytest.raises(UserError, match="cannot read"):
        noise.from_file(tmp_path / "text.csv", K)
    (tmp_path / "empty.npy").write_bytes(b"")  # an empty or truncated file: the one line, not an EOFError
    with pytest.raises(UserError, match="^noise.matrix: cannot read .*empty.npy"):
        noise.from_file(tmp_path / "empty.npy", K)


def test_outlier_matrix_eq8():
    q = noise.outlier(K, 0.1)
    assert q.shape == (K + 1, K + 1)
    np.testing.assert_allclose(q.sum(axis=0), 1.0)
    np.testing.assert_allclose(q[:K, K], 0.9 / K)
    assert noise.is_singular(noise.outlier(K, 0.0))
    assert not noise.is_singular(q)


def test_instance_noise_flips_each_image_at_its_own_rate():
    """Rates centred on the level with sd near 0.1; an image flips with exactly its rate, never to its own
    class; the same seed gives the same labels."""
    rng = np.random.default_rng(0)
    n, k = 20_000, 10
    x, y = rng.integers(0, 256, (n, 64)), rng.integers(0, k, n)
    rates = noise.instance_rates(n, 0.4, 0.1, np.random.default_rng(1))
    assert abs(rates.mean() - 0.4) < 0.005 and abs(rates.std() - 0.1) < 0.005 and (rates >= 0).all()
    flipped = noise.instance_flip(x, y, k, rates, np.random.default_rng(2)) != y
    assert abs(flipped.mean() - rates.mean()) < 0.015
    order = np.argsort(rates)
    low, high = flipped[order[: n // 4]].mean(), flipped[order[-n // 4 :]].mean()
    assert high - low > 0.2  # E: 0.53 vs 0.27 for the top and bottom quarters
    again = noise.instance_flip(x, y, k, rates, np.random.default_rng(2))
    assert np.array_equal(again, noise.instance_flip(x, y, k, rates, np.random.default_rng(2)))


def test_instance_noise_depends_on_the_image():
    """Raw pixels make the projection's softmax nearly one-hot: images of one class flip to many classes,
    each image almost always to one of its own."""
    rng = np.random.default_rng(0)
    n, k = 2_000, 10
    x, y = rng.integers(0, 256, (n, 64)), np.zeros(n, dtype=np.int64)
    p = noise.instance_transition(x, y, k, np.full(n, 0.5), rng)
    assert np.allclose(p.sum(axis=1), 1.0) and np.allclose(p[:, 0], 0.5)  # the rate leaves the own class
    target = p[:, 1:].argmax(axis=1)
    assert len(np.unique(target)) >= 3  # class 0 flips to several classes, image by image (the pixels' common
    # mean dominates x W[y], so a few targets take most flips: on MNIST-5k at 0.4, class 0's go 112 of 147 to 2)
    assert (p[:, 1:].max(axis=1) > 0.45).mean() > 0.9  # and each image to one class


@pytest.mark.parametrize("level", [0.2, 0.4])
def test_instance_noise_on_mnist5k_realises_its_level(level):
    from types import SimpleNamespace

    from noisy_convnet import datasets
    from noisy_convnet.noise_models import InstanceNoise

    ds = datasets.load("mnist5k")
    noisy = InstanceNoise(0.1).apply(ds, SimpleNamespace(train_size=None), level, seed=0)
    assert abs(noisy.actual_noise - level) < 0.02
    assert np.allclose(noisy.q_true.sum(axis=0), 1.0) and noisy.files["flip_rates.npy"].shape == (len(noisy.train),)
    assert np.array_equal(ds.pool.y.numpy()[noisy.indices], noisy.y_true)  # indices point into the pool
    again = InstanceNoise(0.1).apply(ds, SimpleNamespace(train_size=None), level, seed=0)
    assert np.array_equal(again.train.y.numpy(), noisy.train.y.numpy())
