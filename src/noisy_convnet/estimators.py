"""How Q is obtained: one ``QEstimator`` per ``conf/q/*.yaml`` (built with ``_target_``).

The interface, all an estimator of one's own needs (a subclass, and ``q._target_`` naming it):
  name                  -- the record's ``q`` (results.json, the report, W&B run names)
  label                 -- how figures name it
  estimated             -- True when Q is estimated from the data (drawn beside Q* in Fig. 2c)
  outputs(noisy)        -- how many outputs the base net has: Q*'s size (K + 1 with outlier noise) by default
  needs_validation()    -- the key that needs a validation slice, or None
  fit(noisy, train, val, trainers) -> Fitted
                        -- trains through ``trainers.fit(layer, train, val)`` as often as it needs and
                           returns the training to test, the Q it ended with and its own record fields.
The constructor takes the estimator's keys from its YAML file (their one home) and checks them: a bad value
is a ``UserError`` naming ``q.<key>``, raised when ``config.validate`` builds it, before any data is loaded.

  none    -- no noise layer: cross entropy on the noisy labels (the paper's baseline).
  fixed   -- Q = Q*, frozen (the paper's upper reference); Q* must be invertible (paper, after Eq. 7).
  learned -- Q learned with the network (paper Sec. 3) with the project's recipe (layers.py). A list in a
             selectable key means one training per value (per combination), the one with the lowest NLL on
             the noisy validation slice kept; the test set plays no part.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import noise
from .datasets import Split
from .errors import UserError
from .layers import PARAMS, REGULARISERS, FixedNoiseLayer, LearnedNoiseLayer, NoiseLayer
from .noise_models import NoisyData
from .runtime import Trainers, Training


@dataclass
class Fitted:
    training: Training  # the trained base net that is tested, with the noise layer it trained through
    q: np.ndarray | None  # the Q used at the end (None: no noise layer)
    fields: dict = field(default_factory=dict)  # the estimator's own record fields


class QEstimator:
    name = "estimator"
    label = ""
    estimated = False

    def outputs(self, noisy: NoisyData) -> int:
        return noisy.q_true.shape[0]

    def needs_validation(self) -> str | None:
        return None

    def fit(self, noisy: NoisyData, train: Split, val: Split, trainers: Trainers) -> Fitted:
        raise NotImplementedError

    @staticmethod
    def q_of(training: Training) -> np.ndarray | None:
        q = training.module.noise.q()
        return None if q is None else q.detach().cpu().numpy()


class NoQ(QEstimator):
    name, label = "none", "no noise layer"

    def outputs(self, noisy: NoisyData) -> int:
        return noisy.num_classes  # a K-output net has no class for labelled outliers

    def fit(self, noisy, train, val, trainers) -> Fitted:
        return Fitted(trainers.fit(NoiseLayer(self.outputs(noisy)), train, val), None)


class FixedQ(QEstimator):
    name, label = "fixed", "fixed Q*"

    def fit(self, noisy, train, val, trainers) -> Fitted:
        if noise.is_singular(noisy.q_true):
            key, why = noisy.singular
            cond = np.linalg.cond(noisy.q_true)
            raise UserError(f"{key}: q=fixed needs a non-singular Q* (cond {cond:.1e}); {why}")
        t = trainers.fit(FixedNoiseLayer(noisy.q_true), train, val)
        return Fitted(t, self.q_of(t))


def _numbers(key: str, value, ok, allowed: str) -> list[float]:
    """q.<key>: a number that passes ``ok``, or a non-empty list of them (candidates to choose from)."""
    values = list(value) if _is_list(value) else [value]
    is_number = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
    if not values or not all(is_number) or not all(ok(v) for v in values):
        raise UserError(f"q.{key}: {value} must be a number {allowed}, or a list of them")
    return [float(v) for v in values]


class LearnedQ(QEstimator):
    """The paper's learned Q (layers.LearnedNoiseLayer); the keys are conf/q/learned.yaml's."""

    name, label, estimated = "learned", "learned Q", True
    SELECTABLE = ("reg_weight", "init_flip", "lr", "balance_weight")  # keys that may list candidates

    def __init__(self, param: str, init_flip, lr, regulariser: str, reg_weight, balance_weight, warmup_epochs: int):
        if param not in PARAMS:
            raise UserError(f"q.param: unknown '{param}'; allowed: {', '.join(PARAMS)}")
        if regulariser not in REGULARISERS:
            raise UserError(f"q.regulariser: unknown '{regulariser}'; allowed: {', '.join(REGULARISERS)}")
        if warmup_epochs < 0:
            raise UserError(f"q.warmup_epochs: {warmup_epochs} must be >= 0")
        self.param, self.regulariser, self.warmup_epochs = param, regulariser, int(warmup_epochs)
        self.lists = {
            "reg_weight": _numbers("reg_weight", reg_weight, lambda w: w >= 0, ">= 0"),
            "init_flip": _numbers("init_flip", init_flip, lambda f: 0 <= f < 1, "in [0, 1)"),
            "balance_weight": _numbers("balance_weight", balance_weight, lambda w: w >= 0, ">= 0"),
            "lr": [None] if lr is None else _numbers("lr", lr, lambda r: r > 0, "> 0 (or null for the network's)"),
        }
        given = {"reg_weight": reg_weight, "init_flip": init_flip, "balance_weight": balance_weight, "lr": lr}
        self.listed = {key: self.lists[key] for key in self.SELECTABLE if _is_list(given[key])}

    def needs_validation(self) -> str | None:
        for key, values in self.listed.items():
            if len(values) > 1:
                return f"q.{key}: choosing among {len(values)} values needs a validation slice"
        return None

    def candidates(self) -> list[dict]:
        """One dict of listed values per combination; [{}] when nothing is listed."""
        return [dict(zip(self.listed, values, strict=True)) for values in itertools.product(*self.listed.values())]

    def layer(self, k: int, choice: dict) -> LearnedNoiseLayer:
        values = {key: v[0] for key, v in self.lists.items()} | choice
        return LearnedNoiseLayer(k, param=self.param, regulariser=self.regulariser,
                                 warmup_epochs=self.warmup_epochs, **values)  # fmt: skip

    def fit(self, noisy, train, val, trainers) -> Fitted:
        k = self.outputs(noisy)
        runs = [(choice, trainers.fit(self.layer(k, choice), train, val)) for choice in self.candidates()]
        choice, best = min(runs, key=lambda r: r[1].val_nll) if len(runs) > 1 else runs[0]
        fields = {"reg_weight": best.module.noise.reg_weight, "q_choice": choice or None}
        if len(runs) > 1:  # what the selection saw (the test errors are for the record, not used to choose)
            fields["selection"] = [
                {**c, "val_nll": t.val_nll, "test_error": t.test["test_error"],
                 "q_error": noise.q_error(self.q_of(t), noisy.q_true)}
                for c, t in runs
            ]  # fmt: skip
        return Fitted(best, self.q_of(best), fields)


def _is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)
