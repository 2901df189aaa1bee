"""Instance-dependent noise (Xia et al. 2020)."""

from __future__ import annotations

from .. import datasets, noise
from ..datasets import Dataset
from ..errors import UserError
from .base import NoiseModel, NoisyData, _every_class, _pool_size, rng


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
