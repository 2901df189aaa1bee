"""Real noisy labels from a file, and CIFAR-N's human labels by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hydra.utils import to_absolute_path

from .. import datasets, fetch, noise
from ..datasets import Dataset
from ..errors import UserError
from .base import NoiseModel, NoisyData, _every_class, _pool_size


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
        except noise.NoColumn:  # not a CIFAR-N file (a CIFAR-100N file, a digits .npy, ...)
            raise UserError(f"noise.file: '{path}' is not a {self.name} label file: noise.subset={self.subset} "
                            f"reads its '{self.column}' column, which it does not hold") from None
        out.extra["noise_subset"] = self.subset
        return out
