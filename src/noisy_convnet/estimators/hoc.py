"""HOC (Zhu et al. 2021) as an estimator: the consensus of nearest neighbours' noisy labels (its numpy
core: hoc_core.py), then forward correction."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..layers import NoiseLayer
from .base import PLAIN, _ForwardCorrection, _positive, _whole


class HocQ(_ForwardCorrection):
    """HOC (Zhu et al. 2021; hoc_core.py): T from the first-, second- and third-order consensus of the noisy
    labels of each image and its two nearest neighbours by the cosine similarity of the shared plain net's
    penultimate features (or a feature file's), over ``rounds`` samples of ``sample_size`` images; T and
    the prior fitted by Adam (``steps``, ``lr``); then forward correction through Q_hat = T^T."""

    name, label = "hoc", "HOC"
    SAMPLE = 15_000  # the authors' sample size, or every training image when there are fewer

    def __init__(self, rounds: int, sample_size: int | None, steps: int, lr: float, features: str | None,
                 start: str):
        self.started(start)
        self.rounds, self.steps = _whole("rounds", rounds, 1), _whole("steps", steps, 1)
        self.sample_size = None if sample_size is None else _whole("sample_size", sample_size, 3)
        self.lr = _positive("lr", lr)
        self.features = None if features is None else _feature_file(features)  # read once, before any data

    def needs_validation(self) -> str | None:
        return None if self.features is not None or self.oracle else super().needs_validation()

    def estimate(self, noisy, k, train, val, trainers):
        from . import hoc_core as hoc

        n = len(train)
        if self.sample_size is not None and self.sample_size > n:
            raise UserError(f"q.sample_size: {self.sample_size} is more than the {n} training images; at most {n} "
                            "(null: the authors' 15,000 or all of them when fewer)")
        size = self.sample_size or min(self.SAMPLE, n)
        fields = {"sample_size": size}
        if self.features is not None:  # one row per pool image: the training part's rows, in its order
            pool = noisy.pool_size
            if noisy.indices is None or len(self.features) != pool:
                raise UserError(f"q.features: {len(self.features)} rows; one per image of the data set's pool "
                                f"({pool} images, datasets.load(name).pool's order) is needed")
            features = self.features[noisy.indices[:n]]
        else:
            plain = trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=train, outputs=("features",),
                                 stage=PLAIN, role="plain")
            features, fields["plain_test_error"] = plain.features, plain.test.test_error
        seed = trainers.context.seed
        counts = hoc.consensus(features, train.y.numpy(), k, self.rounds, size, np.random.default_rng([seed, 7]))
        t, loss = hoc.fit_t(*counts, self.steps, self.lr, seed)
        return t.T, None, {**fields, "hoc_loss": loss}


def _feature_file(path) -> np.ndarray:
    """q.features: a .npy of N x D finite numbers, one row per image of the data set's pool, in its order
    (the order of datasets.load(name).pool; the run picks its training part's rows by indices.npy)."""
    from pathlib import Path

    from hydra.utils import to_absolute_path

    if not isinstance(path, str) or not path.endswith(".npy"):
        raise UserError(f"q.features: {path!r} must be the path of a .npy file (one row of features per pool image)")
    try:
        f = np.load(Path(to_absolute_path(path)))
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"q.features: cannot read '{path}' as a .npy array ({str(e) or 'empty file'})") from None
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.number) or not np.isfinite(f).all():
        raise UserError(f"q.features: '{path}' holds an array of shape {f.shape} and type {f.dtype}; finite numbers, "
                        "one row per pool image, are needed")
    return f
