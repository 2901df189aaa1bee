"""Label-flip noise (the paper's Sec. 2) and clean labels."""

from __future__ import annotations

import numpy as np

from .. import datasets, noise
from ..datasets import Dataset
from .base import NoiseModel, NoisyData, _check_matrix, _pool_size, rng


class FlipNoise(NoiseModel):
    """Label-flip noise (paper Sec. 2): the first train_size images of a seeded permutation of the pool,
    each label redrawn from column y of Q*."""

    name = "flip"

    def __init__(self, matrix: str):
        self.matrix = _check_matrix(matrix)
        if self.matrix not in noise.MATRIX_KINDS:  # a file's matrix sets the noise: the level is its own
            self.uses_level, self.level_hint = False, " (noise.matrix is a file: its matrix sets the noise level)"

    def q_star(self, k: int, level: float, seed: int) -> np.ndarray:
        return noise.matrix(self.matrix, k, level, rng(seed, 1))

    def apply(self, ds: Dataset, data, level: float, seed: int) -> NoisyData:
        k = ds.num_classes
        idx = datasets.subset_indices(len(ds.pool), _pool_size(data, len(ds.pool)), seed, k)
        chosen = ds.pool.take(idx)
        q_true = self.q_star(k, level, seed)
        y_noisy = noise.corrupt(chosen.y.numpy(), q_true, rng(seed, 2))
        why = f"{self.matrix} noise at level {level} gives a singular Q* (choose another level or matrix, or q=learned)"
        if self.matrix not in noise.MATRIX_KINDS:  # the file's level: the mass off the diagonal, classes alike
            level = float(1.0 - np.diag(q_true).mean())
        return NoisyData(chosen.relabel(y_noisy), chosen.y.numpy(), ds.test, k, q_true, self.name,
                         None if self.name == "none" else self.matrix, 0.0 if self.name == "none" else level,
                         len(chosen), ("q", why), indices=idx)


class NoNoise(FlipNoise):
    """Clean labels: Q* is the identity."""

    name = "none"
    uses_level = False

    def __init__(self):
        self.matrix = "identity"

    def q_star(self, k: int, level: float, seed: int) -> np.ndarray:
        return np.eye(k)
