"""How noise is applied: one ``NoiseModel`` per ``conf/noise/*.yaml`` (built with ``_target_``), which turns
a loaded data set into ``NoisyData``: the training images with their noisy labels, their true labels,
the clean test set and Q*.

  none    -- clean labels, Q* = I.
  flip    -- each label redrawn from column y of Q* (uniform, pair, random or a file), at ``level``.
  labels  -- real noisy labels from a file, one per image of the training pool; Q* is their realised matrix.
  cifar10n / cifar100n -- CIFAR-N's human labels by name (noise.subset), the file fetched when not given.
  instance -- instance-dependent flips (Xia et al. 2020) at ``level``; Q* is the realised matrix.
  outlier -- Eq. 8: inliers, outliers with uniform labels and labelled outliers (K+1 classes); flip noise on
             the inliers at ``inlier_level`` (0 = none).
Each model checks its own arguments when it is built (``config.validate`` builds it before any data is
loaded) and says whether it uses the top-level ``level``: one that does not refuses a non-default level,
so a sweep over it cannot train the same model several times.

One seed feeds independent streams (``rng(seed, stream)``): 1 draws Q*, 2 the noisy labels, 3 the outlier
composition, 4 the halving of an outlier folder, 5 instance noise; the noisy labels do not change when the model does.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

from . import datasets, fetch, noise, outliers
from .datasets import Dataset, Split
from .errors import UserError

log = logging.getLogger(__name__)


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


class LabelFile(NoiseModel):
    """Real noisy labels from a file, one per image of the training pool in the pool's order (e.g.
    CIFAR-10N's human labels); Q* is their realised noise matrix."""

    name = "labels"
    uses_level = False
    level_hint = " (the level is the file's)"

    IMPLAUSIBLE_MARGIN = 0.05  # refused above (K - 1) / K minus this: nearly a random relabelling

    def __init__(self, file: str | None, column: str | None, allow_implausible: bool):
        if not file:
            raise UserError(
                "noise.file: noise=labels needs noise.file=PATH (.npy, .csv or .pt, one label per pool image)"
            )
        if not isinstance(allow_implausible, bool):
            raise UserError(f"noise.allow_implausible: {allow_implausible!r} must be true or false")
        self.file, self.column, self.allow_implausible = str(file), column, allow_implausible

    def apply(self, ds: Dataset, data, level: float, seed: int) -> NoisyData:
        return self._from_file(ds, data, seed, to_absolute_path(self.file))

    def _from_file(self, ds: Dataset, data, seed: int, path: str) -> NoisyData:
        k = ds.num_classes
        y_file = noise.labels_from_file(path, self.column, len(ds.pool), k, ds.pool.y.numpy())
        idx = datasets.subset_indices(len(ds.pool), _pool_size(data, len(ds.pool)), seed, k)
        chosen = ds.pool.take(idx)
        y_clean, y_noisy = chosen.y.numpy(), y_file[idx]
        why = "the realised noise matrix of these labels is singular; use q=learned or q=none"
        extra = {
            "noise_file": str(path),
            "noise_file_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "noise_column": self.column,
        }  # the file read, named and hashed (a fetched one has no config path)
        _every_class(y_clean, k)
        out = NoisyData(chosen.relabel(y_noisy), y_clean, ds.test, k, noise.realised(y_clean, y_noisy, k), self.name,
                        "file", 0.0, len(chosen), ("q", why), extra, indices=idx)
        out.level = out.actual_noise
        limit = (k - 1) / k - self.IMPLAUSIBLE_MARGIN  # a random relabelling moves (K - 1) / K of the labels
        if out.level > limit and not self.allow_implausible:  # most likely labels in another order than the pool's
            raise UserError(f"noise.file: {100 * out.level:.1f}% of the labels in '{self.file}' differ from the pool's "
                            f"(a random relabelling: {100 * (k - 1) / k:.0f}%); is it in the pool's order? Refused "
                            f"above {100 * limit:.0f}%; noise.allow_implausible=true takes it as it is")
        return out


class CifarN(LabelFile):
    """CIFAR-10N / CIFAR-100N's human labels by name (Wei et al., ICLR 2022), for the training pool of
    data=cifar10 / cifar100: ``noise=cifar10n noise.subset=worst``. The label file is fetched into
    data.root/cifar-n (fetch.py) or given as ``noise.file``; its clean labels must equal the pool's, in
    order. Realised noise of the whole pool: aggre 9.01%, random1-3 17.23 / 18.12 / 17.64%, worst 40.21%,
    CIFAR-100N's noisy 40.20%."""

    SETS = {  # noise=<name>: (the data set, its file, subset -> column)
        "cifar10n": ("cifar10", "CIFAR-10_human.pt", {"aggre": "aggre_label", "random1": "random_label1",
                     "random2": "random_label2", "random3": "random_label3", "worst": "worse_label"}),
        "cifar100n": ("cifar100", "CIFAR-100_human.pt", {"noisy": "noisy_label"}),
    }

    def __init__(self, name: str, subset: str, file: str | None):
        if name not in self.SETS:
            raise UserError(f"noise.name: '{name}' is not one of {', '.join(self.SETS)}")
        self.name, (self.dataset, self.file_name, columns) = name, self.SETS[name]
        if subset not in columns:
            raise UserError(f"noise.subset: '{subset}' is not a {name} label set; allowed: {', '.join(columns)}")
        super().__init__(file or f"data.root/cifar-n/{self.file_name}", columns[subset], allow_implausible=False)
        self.subset, self.given = subset, bool(file)

    def apply(self, ds: Dataset, data, level: float, seed: int) -> NoisyData:
        if ds.name != self.dataset:
            raise UserError(f"noise: noise={self.name} holds labels of {self.dataset}'s training pool; use "
                            f"data={self.dataset} (or noise=labels with a file of data={ds.name}'s pool)")
        if self.given:
            path = to_absolute_path(self.file)
        else:  # fetched when missing (the label file is small; data.download is about the images), md5-checked
            root = fetch.default_root() if data.root is None else to_absolute_path(data.root)
            path = str(fetch.ensure(self.name, root) / self.file_name)
        try:
            out = self._from_file(ds, data, seed, path)
        except UserError as e:
            if str(e).startswith("noise.column"):  # not a CIFAR-N file (a CIFAR-100N file, a digits .npy, ...)
                raise UserError(f"noise.file: '{path}' is not a {self.name} label file: noise.subset={self.subset} "
                                f"reads its '{self.column}' column, which it does not hold") from None
            raise
        out.extra["noise_subset"] = self.subset
        return out


class InstanceNoise(NoiseModel):
    """Instance-dependent noise (Xia et al. 2020, the generator most papers since use; noise.instance_flip):
    a flip rate per image drawn around ``level`` (truncated normal, sd ``rate_sd``), and a flip to the class
    that a random projection of the image's raw pixels picks. Raw 0..255 pixels as in the authors' code (so
    their numbers compare): the softmax is then nearly one-hot, each image flips almost always to one other
    class of its own. Q* is the realised average transition matrix (q_error is measured against it). Its
    own random stream (5): the labels do not move when the model does. The run keeps flip_rates.npy beside
    noisy_labels.npy and indices.npy."""

    name = "instance"

    def __init__(self, rate_sd: float):
        if isinstance(rate_sd, bool) or not isinstance(rate_sd, (int, float)) or not 0 < rate_sd < float("inf"):
            raise UserError(f"noise.rate_sd: {rate_sd!r} must be a number > 0 (the flip rates' spread)")
        self.rate_sd = float(rate_sd)

    def apply(self, ds: Dataset, data, level: float, seed: int) -> NoisyData:
        if ds.pool.source is not None:
            raise UserError(f"noise: noise=instance projects images held in memory; data={ds.name} reads image "
                            "files as it trains (use flip noise or a label file there)")
        if level <= 0:  # its rates would still average ~0.08 (a normal at 0 truncated to [0, 1])
            raise UserError("level: noise=instance at level 0 still flips about 8% of the labels; for clean labels "
                            "use noise=none")
        k = ds.num_classes
        idx = datasets.subset_indices(len(ds.pool), _pool_size(data, len(ds.pool)), seed, k)
        chosen = ds.pool.take(idx)
        y_clean, gen = chosen.y.numpy(), rng(seed, 5)
        rates = noise.instance_rates(len(idx), level, self.rate_sd, gen)
        _every_class(y_clean, k)
        y_noisy = noise.instance_flip(chosen.x.reshape(len(idx), -1).numpy(), y_clean, k, rates, gen)
        why = "the realised noise matrix of these labels is singular; use q=learned or q=none"
        return NoisyData(chosen.relabel(y_noisy), y_clean, ds.test, k, noise.realised(y_clean, y_noisy, k), self.name,
                         None, level, len(idx), ("q", why), {"rate_sd": self.rate_sd}, indices=idx,
                         files={"flip_rates.npy": rates})


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
