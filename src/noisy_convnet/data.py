"""The LightningDataModule: small data sets live on the training device as uint8 tensors and batches are
index slices of them (no DataLoader workers, no host-to-device copy per batch). Augmentation (random
translations of up to ``shift`` pixels, zero-filled) runs on the batch tensor, on the GPU when there is one.

Shuffling draws from a CPU generator seeded by (seed, epoch), the Trainer's epoch when there is one (image
folders too, through their batch sampler), so the batch order, and with the rest of the seeding the whole run, is
the same on every rerun, and a training resumed at epoch 5 sees the batches an uninterrupted one sees there.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from .datasets import Split


def translate(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of a (B, C, H, W) batch by its own random (dy, dx) in [-shift, shift], padding
    with zeros. One gather for the whole batch: cheap on CPU and GPU alike."""
    if shift <= 0:
        return x
    b, _, h, w = x.shape
    off = torch.randint(0, 2 * shift + 1, (2, b), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    rows = (torch.arange(h, device=x.device)[None, :] + off[0][:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w, device=x.device)[None, :] + off[1][:, None])[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's shuffle (and shifts): a function of (seed, epoch) alone, so that a training
    resumed at epoch 5 draws what an uninterrupted one draws there."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def batch_stops(n: int, batch_size: int, training: bool) -> list[int]:
    """Where each of an epoch's batches of n images ends. A training epoch's last batch of one image joins the
    one before it (with batches of more than one): batch norm cannot train on one image whose maps are 1x1
    (resnet18's last block on 8x8 digits), and one image is no gradient step; every image is still seen
    once an epoch. Evaluation batches are cut at batch_size."""
    stops = [*range(batch_size, n, batch_size), n] if n else []
    if training and batch_size > 1 and len(stops) > 1 and stops[-1] - stops[-2] == 1:
        del stops[-2]
    return stops


class EpochShuffle(torch.utils.data.Sampler):
    """A DataLoader's shuffled order drawn from epoch_generator; Lightning calls ``set_epoch`` before each
    training epoch (on a resume too), on a DataLoader's sampler or its batch sampler's."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist())


class EpochBatches(torch.utils.data.Sampler):
    """A training DataLoader's batches of indices: EpochShuffle's order (``sampler``, where Lightning sets the
    epoch) cut at batch_stops."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.sampler, self.batch_size = EpochShuffle(n, seed), batch_size

    def __len__(self) -> int:
        return len(batch_stops(self.sampler.n, self.batch_size, training=True))

    def __iter__(self):
        order, start = list(self.sampler), 0
        for stop in batch_stops(self.sampler.n, self.batch_size, training=True):
            yield order[start:stop]
            start = stop


class TensorBatches:
    """An iterable of (images, labels) batches over tensors already on the device; images come out
    as normalised float32."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        shuffle: bool = False,
        shift: int = 0,
        seed: int = 0,
        channels_last: bool = False,
        epoch_of=None,
    ):
        self.split, self.batch_size, self.shuffle, self.shift = split, batch_size, shuffle, shift
        self.mean, self.std, self.channels_last = mean, std, channels_last
        self.seed, self.epoch, self.epoch_of = seed, 0, epoch_of  # epoch_of: the Trainer's epoch, if any

    def __len__(self) -> int:
        return len(batch_stops(len(self.split), self.batch_size, self.shuffle))

    def __iter__(self):
        n = len(self.split)
        epoch = self.epoch if self.epoch_of is None else self.epoch_of()
        g = epoch_generator(self.seed, epoch)
        self.epoch += 1
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.split.x.device)
        start = 0
        for stop in batch_stops(n, self.batch_size, self.shuffle):
            idx, start = order[start:stop], stop
            x = (self.split.x[idx].float() / 255.0 - self.mean) / self.std
            if self.shift:
                x = translate(x, self.shift, g)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.split.y[idx]


class TensorDataModule(pl.LightningDataModule):
    """Train (noisy labels), val (noisy labels, may be empty) and test (clean labels) splits."""

    def __init__(
        self,
        train: Split,
        val: Split,
        test: Split,
        batch_size: int,
        shift: int,
        seed: int,
        channels_last: bool = False,
        predict: Split | None = None,
    ):  # batch_size and shift: their one home is the schema (config.DataConf)
        super().__init__()
        self.splits = {"train": train, "val": val, "test": test}
        if predict is not None:  # images to predict on (an estimator's p(noisy | x)), in their order
            self.splits["predict"] = predict
        self.batch_size, self.shift, self.seed, self.channels_last = batch_size, shift, seed, channels_last
        # Per-channel statistics of the training images, in [0, 1] units.
        x = train.x.float() / 255.0
        self.mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
        self._loaders: dict[str, TensorBatches] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._loaders:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        mean, std = self.mean.to(device), self.std.to(device)
        for name, s in self.splits.items():
            on_device = Split(s.x.to(device), s.y.to(device))
            train = name == "train"
            epoch_of = (lambda: self.trainer.current_epoch) if train and self.trainer is not None else None
            self._loaders[name] = TensorBatches(
                on_device, self.batch_size, mean, std, shuffle=train, shift=self.shift if train else 0,
                seed=self.seed, channels_last=self.channels_last, epoch_of=epoch_of,
            )

    def train_dataloader(self):
        return self._loaders["train"]

    def val_dataloader(self):
        return self._loaders["val"] if len(self.splits["val"]) else []

    def test_dataloader(self):
        return self._loaders["test"]

    def predict_dataloader(self):
        return self._loaders["predict"]


class _Relabelled(torch.utils.data.Dataset):
    """The images of a folder-backed Split with the Split's (noisy) labels."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        image, _ = self.split.source[int(self.split.x[i])]
        return image, self.split.y[i]


class FolderDataModule(pl.LightningDataModule):
    """Image folders too big for memory: DataLoader workers decode and resize (uint8), normalisation
    with ImageNet's statistics happens on the device after the transfer."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(
        self,
        train: Split,
        val: Split,
        test: Split,
        batch_size: int,
        num_workers: int,
        seed: int,
        channels_last: bool = False,
        predict: Split | None = None,
    ):  # one home: config.DataConf
        super().__init__()
        self.splits = {"train": train, "val": val, "test": test}
        if predict is not None:
            self.splits["predict"] = predict
        self.batch_size, self.num_workers, self.seed, self.channels_last = batch_size, num_workers, seed, channels_last
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, std) on the training device

    def _loader(self, name: str, shuffle: bool):
        split = self.splits[name]
        batches = {"batch_sampler": EpochBatches(len(split), self.batch_size, self.seed)} if shuffle else {
            "batch_size": self.batch_size}
        return torch.utils.data.DataLoader(
            _Relabelled(split), **batches, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False) if len(self.splits["val"]) else []

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("predict", False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        if self._norm is None or self._norm[0].device != x.device:
            self._norm = tuple(torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (self.MEAN, self.STD))
        mean, std = self._norm
        x = (x.float() / 255.0 - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y
