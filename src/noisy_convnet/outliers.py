"""Outlier noise (paper Sec. "Outlier noise", Eq. 8, Fig. 4): training images that belong to none of the
K classes and carry a label drawn uniformly from them, plus a few extra outliers labelled K+1 that make
Q* non-singular.

NumPy/PyTorch only. ``compose`` turns a data set into (training images, noisy labels, true labels,
test set with outliers), where class K (0-based) means "outlier". Outlier sources:
  classes -- the inliers are the first ``inlier_classes`` classes; images of the other classes are the
             outliers (look-alikes, as other natural images are for CIFAR-10). Training outliers come
             from the training pool, test outliers from the test set, so none is in both.
  photos  -- patches of the photos bundled with scikit-learn (``load_sample_images``), turned into the
             data set's shape and channels: training patches from one photo, test patches from the
             other (an easy case).
  a torchvision data set's name (e.g. cifar100 for cifar10) -- its training images are the training
             outliers, its test images the test outliers (read from data.root like the data set).
  a folder path -- every image below it; a seeded half for training, the other half for testing.
With an image folder as the data set (``data=imagefolder``, too big for memory), ``classes`` and a folder
path work: the outliers stay files, read by the same DataLoader workers and transform as the inliers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .datasets import Dataset, ImageFiles, Split, _check_images, read_image
from .errors import UserError

SOURCES = ("classes", "photos")  # built in; a torchvision data set's name or a folder path also work
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


@dataclass
class OutlierData:
    train: Split  # inliers + outliers, noisy labels (K = the outlier label)
    y_true: np.ndarray  # true labels of the training images, K for every outlier
    test: Split  # test inliers (labels < K) and test outliers (label K)
    num_classes: int  # K, the inlier classes
    n_in: int
    n_out: int
    labelled: int


def to_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 images (N, C', H', W') to the data set's (C, H, W): luminance or replicated grey for the
    channels, area resampling for the size."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    c, h, w = shape
    x = x.float()
    if x.shape[1] == 3 and c == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and c == 3:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8)


def photo_patches(n: int, shape: tuple[int, int, int], photo: int, rng: np.random.Generator) -> torch.Tensor:
    """n random square patches (48 to 160 pixels) of one bundled photo, resized to shape, uint8."""
    from sklearn.datasets import load_sample_images

    img = torch.from_numpy(load_sample_images().images[photo].copy()).permute(2, 0, 1)[None]  # (1, 3, 427, 640)
    patches = []
    for _ in range(n):
        s = int(rng.integers(48, 161))
        y0, x0 = int(rng.integers(0, img.shape[2] - s)), int(rng.integers(0, img.shape[3] - s))
        patches.append(to_shape(img[:, :, y0 : y0 + s, x0 : x0 + s], shape))
    return torch.cat(patches) if patches else torch.empty(0, *shape, dtype=torch.uint8)


def folder_images(
    path: str, shape: tuple[int, int, int], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image below ``path`` in the data set's shape, split in a seeded half for training and the
    other half for testing."""
    mode = "L" if shape[0] == 1 else "RGB"

    def read(f: Path) -> torch.Tensor:
        a = np.array(read_image(f, mode, "noise.outlier_source"))  # a writable copy: torch warns on read-only arrays
        return to_shape(torch.from_numpy(a[:, :, None] if a.ndim == 2 else a).permute(2, 0, 1)[None], shape)

    return tuple(torch.cat([read(f) for f in part]) for part in halved_image_files(path, rng))


def halved_image_files(path: str, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """The image files below ``path`` in a seeded order, cut in two: (training half, test half)."""
    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserError(f"noise.outlier_source: no images (or just one) below '{path}'; expected {IMAGE_SUFFIXES}")
    order = rng.permutation(len(files))
    half = len(files) // 2
    return [files[i] for i in order[half:]], [files[i] for i in order[:half]]


def folder_files(path: str, transform, rng: np.random.Generator) -> tuple[Split, Split]:
    """The images below ``path`` as file-backed (training, test) Splits for an image-folder data set: a
    seeded half each, read with the data set's own transform."""
    halves = halved_image_files(path, rng)
    for half in halves:  # every file opens as an image before any training (datasets._check_images)
        _check_images([(str(f), -1) for f in half], path, "noise.outlier_source", "outlier images")
    parts = [ImageFiles(files, transform) for files in halves]
    return tuple(Split(torch.arange(len(p)), torch.full((len(p),), -1, dtype=torch.long), p) for p in parts)


def _cat(a: Split, b: Split) -> tuple[torch.Tensor, object | None]:
    """Images (or indices) of a then b, and their common source: tensors concatenate; index Splits of one
    source concatenate their indices; of two sources, b's indices shift past a's source in a ConcatDataset."""
    if a.source is None and b.source is None:
        return torch.cat([a.x, b.x]), None
    if a.source is b.source:
        return torch.cat([a.x, b.x]), a.source
    if a.source is None or b.source is None:
        raise ValueError("cannot mix in-memory images with file-backed ones")
    return torch.cat([a.x, b.x + len(a.source)]), torch.utils.data.ConcatDataset([a.source, b.source])


def compose(
    ds: Dataset,
    source: str,
    inlier_classes: int,
    n_in: int | None,
    ratio: float,
    labelled: int,
    rng: np.random.Generator,
    external: tuple[Split, Split] | None = None,
) -> OutlierData:
    """Training set of n_in inliers, round(ratio * n_in) outliers with uniform labels over the K inlier
    classes, and ``labelled`` outliers labelled K; test set of the test inliers and the test outliers.
    ``external``: the (training, test) outlier images of a source other than the built-in ones. n_in None:
    as many inliers as the data set gives at this ratio (all of them, or fewer where the outliers run out)."""
    if ds.pool.source is not None and source != "classes" and external is None:
        raise UserError(
            f"noise.outlier_source: with {ds.name} (images read from files) the outliers must be 'classes' or a "
            f"folder of images, not '{source}'"
        )
    if source not in SOURCES and external is None:
        raise UserError(
            f"noise.outlier_source: unknown source '{source}'; allowed: {', '.join(SOURCES)}, a torchvision data "
            "set's name or a folder of images"
        )
    if ratio < 0:
        raise UserError(f"noise.outlier_ratio: {ratio} must be >= 0 (N_out / N_in)")
    if labelled < 0:
        raise UserError(f"noise.labelled_outliers: {labelled} must be >= 0")
    k = inlier_classes
    hi = ds.num_classes - 1 if source == "classes" else ds.num_classes  # "classes" keeps one class for outliers
    if not 2 <= k <= hi:
        raise UserError(f"noise.inlier_classes: {k} is outside [2, {hi}] for {ds.name} with source {source}")
    pool_in = np.flatnonzero(ds.pool.y.numpy() < k)
    if n_in is None:
        n_avail = int((ds.pool.y.numpy() >= k).sum()) if source == "classes" else None
        n_avail = len(external[0]) if external is not None else n_avail
        if n_avail is not None and labelled >= n_avail:
            raise UserError(f"noise.labelled_outliers: {labelled} is not below the {n_avail} outlier images there are")
        n_in = len(pool_in)
        if source != "photos":  # a finite set of outlier images: n_out + labelled of them are needed
            n_avail = int((ds.pool.y.numpy() >= k).sum()) if source == "classes" else len(external[0])
            n_in = min(n_in, int((n_avail - labelled) / ratio) if ratio > 0 else n_in)
    if not k <= n_in <= len(pool_in):
        raise UserError(f"data.train_size: {n_in} inliers is outside [{k}, {len(pool_in)}] for {k} inlier classes")
    n_out = int(round(ratio * n_in))
    test_in = np.flatnonzero(ds.test.y.numpy() < k)
    inl = ds.pool.take(rng.permutation(pool_in)[:n_in])

    n_draw = n_out + labelled
    if source == "photos":  # patches: as many as asked
        x_out = photo_patches(n_draw, ds.shape, 0, rng)
        test_out_x = photo_patches(len(test_in), ds.shape, 1, rng)
        out, test_out = (Split(x, torch.zeros(len(x), dtype=torch.long)) for x in (x_out, test_out_x))
    else:  # a finite set of outlier images, in a seeded order: the first n_draw are used
        if source == "classes":
            order_out = rng.permutation(np.flatnonzero(ds.pool.y.numpy() >= k))
            available, what = ds.pool, f"images of classes {k}..{ds.num_classes - 1} in the pool"
            test_out = ds.test.take(np.flatnonzero(ds.test.y.numpy() >= k))
        else:  # another data set's images, or a folder's, already split into (train, test)
            (available, test_out), what = external, f"training images of {source}"
            order_out = rng.permutation(len(available))
        if n_draw > len(order_out):
            raise UserError(
                f"noise.labelled_outliers: {n_out} outliers + {labelled} labelled ones exceed the {len(order_out)} "
                f"{what}; lower noise.outlier_ratio or this"
            )
        out = available.take(order_out[:n_draw])

    y_out = np.concatenate([rng.integers(0, k, n_out), np.full(labelled, k)]).astype(np.int64)
    x, train_source = _cat(inl, out)
    y_noisy = np.concatenate([inl.y.numpy(), y_out])
    y_true = np.concatenate([inl.y.numpy(), np.full(n_draw, k)])
    order = rng.permutation(len(y_noisy))  # mix, so the validation slice holds outliers too
    test_inl = ds.test.take(test_in)
    test_x, test_source = _cat(test_inl, test_out)
    test_y = torch.cat([test_inl.y, torch.full((len(test_out),), k, dtype=torch.long)])
    test = Split(test_x, test_y, test_source)
    return OutlierData(
        Split(x[torch.as_tensor(order)], torch.from_numpy(y_noisy[order]), train_source),
        y_true[order],
        test,
        k,
        n_in,
        n_out,
        labelled,
    )


def alpha(n_out: int, labelled: int) -> float:
    """Share of all outliers that carry the explicit outlier label: Eq. 8's alpha."""
    return labelled / max(n_out + labelled, 1)
