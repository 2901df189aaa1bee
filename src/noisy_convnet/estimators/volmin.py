"""VolMinNet (Li et al. 2021): Q learned end to end with a minimum-volume term (layers.VolMinNoiseLayer)."""

from __future__ import annotations

import numpy as np

from ..config import layer_optimizer
from ..errors import UserError
from ..layers import VolMinNoiseLayer
from .base import Fitted, _KClasses


class VolMinQ(_KClasses):
    """VolMinNet (Li et al. 2021): Q learned end to end with the minimum-volume term, in one training
    (layers.VolMinNoiseLayer); the keys are conf/q/volmin.yaml's (``optimizer``: Q's own, or null for a
    group of the network's)."""

    name, label, estimated = "volmin", "VolMinNet", True

    def __init__(self, init: float, vol_weight: float, lr: float, optimizer: str | None = None):
        layer_optimizer(optimizer, "q.optimizer")
        self.optimizer = optimizer
        for key, value, allowed in (("init", init, ""), ("vol_weight", vol_weight, " >= 0"), ("lr", lr, " > 0")):
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            if not number or (key == "vol_weight" and value < 0) or (key == "lr" and value <= 0):
                raise UserError(f"q.{key}: {value!r} must be a finite number{allowed}")
        self.init, self.vol_weight, self.lr = float(init), float(vol_weight), float(lr)

    def fit(self, noisy, train, val, trainers) -> Fitted:
        layer = VolMinNoiseLayer(self.outputs(noisy), self.init, self.vol_weight, self.lr, optimizer=self.optimizer)
        t = trainers.fit(layer, train, val)
        return Fitted(t, self.q_of(t))
