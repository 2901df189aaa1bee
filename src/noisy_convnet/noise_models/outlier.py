"""Outlier noise (the paper's Eq. 8), with flip noise on the inliers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

from .. import datasets, noise, outliers
from ..datasets import Dataset, Split
from ..errors import UserError
from .base import NoiseModel, NoisyData, _check_matrix, rng


class OutlierNoise(NoiseModel):
    """Outlier noise (paper Sec. "Outlier noise", Eq. 8): train_size inliers (default: as many as the data
    set gives at this ratio), round(outlier_ratio x N_in) outliers with a uniform label among the K inlier
    classes, and labelled_outliers more labelled K+1, which make Q* non-singular. Flip noise on the
    inliers at inlier_level (Q* of kind ``matrix``) composes with it."""

    name = "outlier"
    uses_level, adds_classes = False, True
    level_hint = " (flip noise on the inliers: noise.inlier_level)"

    def __init__(self, outlier_ratio: float, labelled_outliers: int, inlier_classes: int, outlier_source: str,
                 inlier_level: float, matrix: str):
        if (
            isinstance(outlier_ratio, bool)
            or not isinstance(outlier_ratio, (int, float))
            or not (np.isfinite(outlier_ratio) and outlier_ratio >= 0)
        ):
            raise UserError(f"noise.outlier_ratio: {outlier_ratio!r} must be a finite number >= 0 (N_out / N_in)")
        if isinstance(inlier_classes, bool) or not isinstance(inlier_classes, int):
            raise UserError(f"noise.inlier_classes: {inlier_classes!r} must be a whole number")
        if isinstance(labelled_outliers, bool) or not isinstance(labelled_outliers, int) or labelled_outliers < 0:
            raise UserError(f"noise.labelled_outliers: {labelled_outliers!r} must be a whole number >= 0")
        if not 0.0 <= inlier_level < 1.0:
            raise UserError(f"noise.inlier_level: {inlier_level} is outside [0, 1)")
        if _check_matrix(matrix) not in noise.MATRIX_KINDS and inlier_level:
            raise UserError(f"noise.inlier_level: noise.matrix is a file ('{matrix}'): its matrix sets the inliers' "
                            "noise; leave noise.inlier_level at 0")
        self.ratio, self.labelled, self.inlier_classes = (
            float(outlier_ratio),
            int(labelled_outliers),
            int(inlier_classes),
        )
        self.source, self.inlier_level, self.matrix = str(outlier_source), float(inlier_level), _check_matrix(matrix)

    def apply(self, ds: Dataset, data, level: float, seed: int) -> NoisyData:
        o = outliers.compose(ds, self.source, self.inlier_classes, data.train_size, self.ratio, self.labelled,
                             rng(seed, 3), self._external(ds, data, seed))
        k, y = o.num_classes, o.train.y.numpy().copy()
        from_file = self.matrix not in noise.MATRIX_KINDS  # a file's matrix flips the inliers at its own level
        flip = noise.matrix(self.matrix, k, self.inlier_level, rng(seed, 1)) if self.inlier_level > 0 or from_file \
            else np.eye(k)
        level = float(1.0 - np.diag(flip).mean()) if from_file else self.inlier_level
        inl = o.y_true < k
        y[inl] = noise.corrupt(o.y_true[inl], flip, rng(seed, 2))
        q_true = noise.outlier(k, outliers.alpha(o.n_out, o.labelled), flip)
        extra = {"outlier_ratio": self.ratio, "n_in": o.n_in, "n_out": o.n_out, "labelled_outliers": o.labelled,
                 "outlier_source": self.source}
        why = "Eq. 8's Q* is singular without labelled outliers; set it > 0"
        return NoisyData(o.train.relabel(y), o.y_true, o.test, k, q_true, self.name, self.matrix, level,
                         o.n_in, ("noise.labelled_outliers", why), extra)

    def _external(self, ds: Dataset, data, seed: int) -> tuple[Split, Split] | None:
        """(training, test) outlier images from another data set or a folder, in ds's shape (or, for an
        image folder data set, as files read with its transform); None for the built-in sources."""
        src = self.source
        if src in outliers.SOURCES:
            return None
        folder = to_absolute_path(src)
        if ds.pool.source is not None:  # files stay files: a folder, or nothing (compose says what is allowed)
            is_dir = Path(folder).is_dir()
            return outliers.folder_files(folder, ds.pool.source.transform, rng(seed, 4)) if is_dir else None
        if src in datasets.TORCHVISION:
            root = None if data.root is None else to_absolute_path(data.root)
            other = datasets.load(src, root, data.download, data.verify)
            pair = outliers.to_shape(other.pool.x, ds.shape), outliers.to_shape(other.test.x, ds.shape)
        elif Path(folder).is_dir():
            pair = outliers.folder_images(folder, ds.shape, rng(seed, 4))
        else:
            return None  # compose names the allowed sources
        return tuple(Split(x, torch.zeros(len(x), dtype=torch.long)) for x in pair)
