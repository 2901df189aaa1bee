"""T-Revision (Xia et al. 2019): the anchor T, importance reweighting, then the revision of T."""

from __future__ import annotations

import numpy as np

from .. import noise
from ..errors import Diverged
from ..layers import NoiseLayer
from .anchor import _percentile, anchor_t
from .base import PLAIN, Fitted, _positive, _Started


class TRevisionQ(_Started):
    """T-Revision (Xia et al. 2019) in three trainings: (1) the anchor T from the shared early-stopped plain
    net (the authors' best-validation epoch); (2) importance reweighting through that T, continuing the
    plain net, early-stopped on the noisy validation slice (their best-validation epoch); (3) revision:
    continuing (2), the slack dT learned with the network, both at ``revision_lr`` (the authors' one Adam
    learning rate for the two), with the run's protocol, and tested. Q is T + dT with negative entries
    clipped and rows normalised (it is unconstrained while it trains); the record keeps T before and after
    revision and both q_errors. Departs from the authors' code where it is wrong (layers.ImportanceLayer).
    The oracle start (start=true) reweights and revises from Q*'s T instead of the anchor T (the plain net
    still trains: the reweighting continues it)."""

    name, label, estimated = "trevision", "T-Revision", True

    def __init__(self, anchor_percentile: float, revision_lr: float, start: str):
        self.percentile, self.revision_lr = _percentile(anchor_percentile), _positive("revision_lr", revision_lr)
        self.started(start)

    def needs_validation(self) -> str | None:
        return "q: q=trevision early-stops its plain net and its reweighting on the noisy validation slice"

    def fit(self, noisy, train, val, trainers) -> Fitted:
        from ..layers import ImportanceLayer, stochastic_rows

        k = self.outputs(noisy)
        plain = trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=train, stage=PLAIN, role="plain")
        t_anchor = anchor_t(plain.probs, self.percentile)
        t_start = noisy.q_true.T if self.oracle else t_anchor
        weighted = trainers.fit(ImportanceLayer(t_start, revise=False), train, val, early_stopping=True, init=plain,
                                role="reweight")
        revised = trainers.fit(ImportanceLayer(t_start, revise=True, lr=self.revision_lr), train, val, init=weighted,
                               net_lr=self.revision_lr, role="revision")
        t_raw = revised.module.noise.t().detach().cpu().numpy().astype(np.float64)
        if not np.isfinite(t_raw).all():
            raise Diverged("q=trevision: the revised T is not finite (lower q.revision_lr)")
        q = stochastic_rows(t_raw).T
        fields = {"plain_test_error": plain.test.test_error, "reweighted_test_error": weighted.test.test_error,
                  "T_anchor": t_anchor, "T_revised": t_raw,
                  "q_error_anchor": noise.q_error(t_anchor.T, noisy.q_true),
                  "q_error_revised": noise.q_error(q, noisy.q_true)}
        return Fitted(revised, q, fields)
