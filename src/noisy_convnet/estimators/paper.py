"""The paper's three Q modes (Sukhbaatar et al., Sec. 3): no noise layer, Q* fixed, Q learned with the
network (layers.LearnedNoiseLayer)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .. import noise
from ..errors import Diverged, UserError
from ..layers import PARAMS, REGULARISERS, FixedNoiseLayer, LearnedNoiseLayer, NoiseLayer
from ..noise_models import NoisyData
from .base import PLAIN, Fitted, QEstimator


class NoQ(QEstimator):
    name, label = "none", "no noise layer"

    def outputs(self, noisy: NoisyData) -> int:
        return noisy.num_classes  # a K-output net has no class for labelled outliers

    def fit(self, noisy, train, val, trainers) -> Fitted:
        if trainers.context.early_stopping:  # the shared plain net, as the estimators' first stage trains it
            return Fitted(trainers.fit(NoiseLayer(self.outputs(noisy)), train, val, stage=PLAIN, role="plain"), None)
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
    if not values or not all(is_number) or not all(np.isfinite(v) and ok(v) for v in values):
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
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise UserError(f"q.warmup_epochs: {warmup_epochs!r} must be a whole number >= 0")
        self.param, self.regulariser, self.warmup_epochs = param, regulariser, int(warmup_epochs)
        self.lists = {
            "reg_weight": _numbers("reg_weight", reg_weight, lambda w: w >= 0, ">= 0"),
            # 0 would start Q at the identity, where log q = -inf off the diagonal and Q can never move
            "init_flip": _numbers("init_flip", init_flip, lambda f: 0 < f < 1, "in (0, 1)"),
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
                                 warmup_epochs=self.warmup_epochs, **values)

    def fit(self, noisy, train, val, trainers) -> Fitted:
        k, epochs = self.outputs(noisy), trainers.context.max_epochs
        if self.warmup_epochs >= epochs:
            raise UserError(f"q.warmup_epochs: {self.warmup_epochs} would keep Q frozen for all {epochs} epochs")
        runs, diverged = [], []
        for choice in self.candidates():
            try:
                runs.append((choice, trainers.fit(self.layer(k, choice), train, val)))
            except Diverged:
                if len(self.candidates()) == 1:
                    raise
                diverged.append(choice)  # recorded in the selection, never chosen
        if not runs:
            raise Diverged(f"every one of the {len(diverged)} learned-Q candidates diverged")
        choice, best = min(runs, key=lambda r: r[1].val_nll) if len(runs) > 1 else runs[0]
        fields = {"reg_weight": best.module.noise.reg_weight, "q_choice": choice or None}
        if (
            len(runs) + len(diverged) > 1
        ):  # what the selection saw (the test errors are for the record, not used to choose)
            fields["selection"] = [
                {**c, "val_nll": t.val_nll, "test_error": t.test.test_error,
                 "q_error": noise.q_error(self.q_of(t), noisy.q_true)}
                for c, t in runs
            ] + [{**c, "diverged": True} for c in diverged]
        return Fitted(best, self.q_of(best), fields)


def _is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)
