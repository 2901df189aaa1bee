"""The interface of a Q estimator (``QEstimator``, ``Fitted``) and the families several share: a K x K
estimator (refuses outlier noise), one with the oracle start (``q.start``), forward correction through an
estimated Q (two stages), and the key checks they share. The training side of the seam is
``factory.Trainers`` (``trainers.fit``, ``trainers.context``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config import START_ALLOWED, oracle_start
from ..datasets import Split
from ..errors import Diverged, UserError
from ..files import save_array
from ..layers import FixedNoiseLayer, NoiseLayer
from ..noise_models import NoisyData

if TYPE_CHECKING:  # the training side (Lightning): imported by the run, not by the check that builds the estimator
    from ..factory import Trainers, Training

# The shared first stage: the plain net (no noise layer) early-stopped on the noisy validation slice. With
# the same noisy labels, seed, network and protocol, it is trained once for none + early stopping, anchor
# and dualt (and every estimator that asks for it by this name) and reused (factory.py, stages.py).
PLAIN = "plain"


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

    def check(self, noise_model) -> None:
        """Refuse a noise model this estimator cannot handle (a UserError), before any data is loaded."""

    def fit(self, noisy: NoisyData, train: Split, val: Split, trainers: Trainers) -> Fitted:
        raise NotImplementedError

    @staticmethod
    def q_of(training: Training) -> np.ndarray | None:
        q = training.module.noise.q()
        return None if q is None else q.detach().cpu().numpy()


class _KClasses(QEstimator):
    """An estimator of a K x K Q: refuses outlier noise (K + 1 classes, the paper's own model)."""

    def check(self, noise_model) -> None:
        if noise_model.adds_classes:
            raise UserError(
                f"q: q={self.name} estimates a K x K Q and does not handle noise={noise_model.name} (K + 1 classes); "
                "use q=fixed|learned|none there"
            )


def _estimation_images(train: Split, val: Split, trainers: Trainers) -> Split:
    """The images a plain net's p(noisy | x) estimates T on: the training part, or with the protocol's
    estimate_on=all the validation slice too (Patrini et al. estimate on every noisy image)."""
    return train.join(val) if trainers.context.estimate_on == "all" else train


def _start(value) -> bool:
    """q.start: True for the oracle start (``true``: Q* instead of the estimate), False for ``estimated``."""
    start = oracle_start(value)
    if start is None:
        raise UserError(f"q.start: {value!r} is not allowed; {START_ALLOWED}")
    return start


class _Started(_KClasses):
    """An estimator that trains through an estimated T, with the oracle start as an option (q.start)."""

    oracle = False

    def started(self, start) -> None:
        self.oracle = _start(start)
        if self.oracle:  # another curve of the report than the method's own
            self.name, self.label = f"{type(self).name}_oracle", f"{type(self).label} (start: Q*)"


class _ForwardCorrection(_Started):
    """Two stages: Q_hat from early-stopped plain nets on the training part (``estimate``), then a fresh net
    trained through Q_hat, fixed, with the run's own protocol. Keeps the p(noisy | x) it estimated from as
    probs.npy in the run directory (rows: the first rows of the run's noisy_labels.npy, the training part).
    With the oracle start there is no estimate: the fresh net trains through Q*."""

    estimated = True

    def needs_validation(self) -> str | None:
        if self.oracle:
            return None
        return f"q: q={self.name} early-stops its plain net on the noisy validation slice, which needs one"

    def estimate(self, noisy: NoisyData, k: int, train: Split, val: Split, trainers: Trainers
                 ) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """(Q_hat, the p(noisy | x) it came from or None, record fields)."""
        raise NotImplementedError

    def plain(self, k: int, train: Split, val: Split, trainers: Trainers, predict: Split,
              stage: str | None = PLAIN) -> Training:
        """A plain net early-stopped on the noisy validation slice (the shared stage when trained on the
        whole training part), with p(noisy | x) on ``predict``."""
        return trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=predict, stage=stage,
                            role="plain")

    def fit(self, noisy, train, val, trainers) -> Fitted:
        k, t0 = self.outputs(noisy), time.perf_counter()
        if self.oracle:
            q_hat, probs, fields = noisy.q_true, None, {}
        else:
            q_hat, probs, fields = self.estimate(noisy, k, train, val, trainers)
        estimate_s = time.perf_counter() - t0
        if probs is not None:
            save_array(trainers.context.artifacts / "probs.npy", probs)
        if not np.isfinite(q_hat).all():
            raise Diverged(f"q={self.name}: its estimate of Q is not finite")
        forward = trainers.fit(FixedNoiseLayer(q_hat), train, val)
        fields["stage_s"] = {"estimate": estimate_s, "forward": forward.seconds}
        return Fitted(forward, q_hat, fields)


def _whole(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"q.{key}: {value!r} must be a whole number >= {low}")
    return value


def _positive(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"q.{key}: {value!r} must be a finite number > 0")
    return float(value)
