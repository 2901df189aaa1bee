"""The interface of a noise model (``NoiseModel.apply -> NoisyData``), the seeded streams every model draws
from, and the checks the models share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import noise
from ..datasets import Dataset, Split
from ..errors import UserError


def rng(seed: int, stream: int) -> np.random.Generator:
    """Independent generators from one seed: the noisy labels do not change when the model does."""
    return np.random.default_rng([seed, stream])


@dataclass
class NoisyData:
    train: Split  # the training images (validation slice included) with their noisy labels
    y_true: np.ndarray  # their true labels (K for an outlier)
    test: Split  # clean test set (label K marks a test outlier)
    num_classes: int  # K: the classes the test scores
    q_true: np.ndarray  # Q*: K x K, or (K+1) x (K+1) with outliers (Eq. 8)
    noise: str  # the record's fields: the noise model's name,
    matrix: str | None  # the kind or file of Q*,
    level: float  # the noise level it was made with (the realised one for a label file),
    train_size: int  # and the training images drawn (the inliers, with outliers)
    singular: tuple[str, str]  # (key, what to change) when Q* is singular: for an estimator that inverts it
    extra: dict = field(default_factory=dict)  # the model's own record fields
    indices: np.ndarray | None = None  # each training image's index in the data set's pool (None: not from it)
    files: dict = field(default_factory=dict)  # arrays the run keeps beside its record (name.npy -> array)
    pool_size: int | None = None  # the data set's pool (set by the run): what indices point into

    @property
    def actual_noise(self) -> float:
        """The share of training labels that differ from the true ones."""
        return float((self.train.y.numpy() != self.y_true).mean())

    def for_outputs(self, n: int) -> NoisyData:
        """Without the images whose noisy label a net with n outputs cannot have: the labelled outliers
        (label K) when a K-output net is trained on outlier noise."""
        keep = self.train.y.numpy() < n
        if keep.all():
            return self
        idx = None if self.indices is None else self.indices[keep]
        return replace(self, train=self.train.take(np.flatnonzero(keep)), y_true=self.y_true[keep], indices=idx)


class NoiseModel:
    """The interface: ``apply(ds, data, level, seed) -> NoisyData``. ``data`` is the typed ``data`` config
    (train_size, and where to read other data sets from)."""

    name = "noise"
    uses_level = True  # False: refuses a non-default top-level level
    adds_classes = False  # True: Q* has a class more than the data set (the outliers' K+1)
    level_hint = ""  # said when a non-default level is refused

    def apply(self, ds: Dataset, data, level: float, seed: int) -> NoisyData:
        raise NotImplementedError


def _check_matrix(matrix: str, key: str = "noise.matrix") -> str:
    matrix = str(matrix)
    if matrix not in noise.MATRIX_KINDS and Path(matrix).suffix not in (".npy", ".csv"):
        raise UserError(f"{key}: '{matrix}' is not one of {', '.join(noise.MATRIX_KINDS)} nor a .npy/.csv path")
    return matrix


def _every_class(y_clean: np.ndarray, k: int) -> None:
    """A realised noise matrix (Q* of label files and instance noise) needs an image of every class."""
    missing = np.setdiff1d(np.arange(k), y_clean)
    if len(missing):
        raise UserError(f"data.train_size: {len(y_clean)} images hold no image of class {missing[0]} (of {k}), so "
                        "the labels' realised noise matrix has no column for it; raise it")


def _pool_size(data, n_pool: int) -> int:
    return n_pool if data.train_size is None else int(data.train_size)
