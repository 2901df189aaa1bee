"""How Q is obtained: one ``QEstimator`` per ``conf/q/*.yaml`` (built with ``_target_``).

The interface, all an estimator of one's own needs (a subclass, and ``q._target_`` naming it):
  name                  -- the record's ``q`` (results.json, the report, W&B run names)
  label                 -- how figures name it
  estimated             -- True when Q is estimated from the data (drawn beside Q* in Fig. 2c)
  outputs(noisy)        -- how many outputs the base net has: Q*'s size (K + 1 with outlier noise) by default
  needs_validation()    -- the key that needs a validation slice, or None
  check(noise_model)    -- refuse a noise model it cannot handle (UserError), before any data is loaded
  fit(noisy, train, val, trainers) -> Fitted
                        -- trains through ``trainers.fit(layer, train, val, ...)`` (factory.py: warm starts,
                           p(noisy | x) and features on given images, shared stages) as often as it needs,
                           knows the run through ``trainers.context`` (seed, epoch budget, early stopping,
                           artifacts folder), and returns the training to test, the Q it ended with and its
                           own record fields.
The constructor takes the estimator's keys from its YAML file (their one home) and checks them: a bad value
is a ``UserError`` naming ``q.<key>``, raised when ``config.validate`` builds it, before any data is loaded.

  none    -- no noise layer: cross entropy on the noisy labels (the paper's baseline).
  fixed   -- Q = Q*, frozen (the paper's upper reference); Q* must be invertible (paper, after Eq. 7).
  learned -- Q learned with the network (paper Sec. 3) with the project's recipe (layers.py). A list in a
             selectable key means one training per value (per combination), the one with the lowest NLL on
             the noisy validation slice kept; the test set plays no part.
The field's estimators, as published (flip noise and label files; they refuse outlier noise):
  anchor    -- forward correction with anchor points (Patrini et al. 2017)
  dualt     -- Dual-T (Yao et al. 2020)
  confident -- cleanlab's confident joint (Northcutt et al. 2021), an optional extra (AGPL-3.0)
  volmin    -- VolMinNet (Li et al. 2021)
  trevision -- T-Revision (Xia et al. 2019)
  hoc       -- HOC (Zhu et al. 2021)
Those that train through an estimated T (anchor, dualt, confident, hoc, trevision) take ``start``:
``estimated`` (their method) or ``true``, the oracle start: their training stages run through Q* instead of
their estimate, which separates the estimation error from what the training does (``q=anchor q.start=true``
is forward correction through Q*, the same run as ``q=fixed``). Their record name gains "_oracle".
Each training names its role ("plain", "reweight", "revision"), so a peer's protocol (the run's
``protocol.<role>``) can give it its own epochs, optimiser and selection rule (factory.Trainers.settings).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import noise
from .datasets import Split
from .errors import Diverged, UserError
from .factory import Trainers, Training
from .files import save_array
from .layers import PARAMS, REGULARISERS, FixedNoiseLayer, LearnedNoiseLayer, NoiseLayer, VolMinNoiseLayer
from .noise_models import NoisyData

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
                                 warmup_epochs=self.warmup_epochs, **values)  # fmt: skip

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
            ] + [{**c, "diverged": True} for c in diverged]  # fmt: skip
        return Fitted(best, self.q_of(best), fields)


def _is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


# -- the field's estimators (issue: forward correction, Dual-T, confident joint, VolMinNet) --------------
# Their T is row-stochastic, T[i, j] = p(noisy = j | true = i); this project's Q is its transpose.


def anchor_indices(probs: np.ndarray, percentile: float) -> np.ndarray:
    """Patrini et al.'s anchor of each class i: the image with the highest p(noisy = i | x) once the values
    at or above the column's ``percentile`` (numpy's method="higher") are discarded, each column filtered
    on its own copy; percentile 100 discards nothing (plain argmax)."""
    out = np.empty(probs.shape[1], dtype=np.int64)
    for i in range(probs.shape[1]):
        column = probs[:, i].copy()
        if percentile < 100:
            column[column >= np.percentile(column, percentile, method="higher")] = 0.0
        out[i] = int(np.argmax(column))
    return out


def anchor_t(probs: np.ndarray, percentile: float) -> np.ndarray:
    """T_hat (rows = true class): row i is the prediction at class i's anchor, renormalised to sum to 1."""
    t = probs[anchor_indices(probs, percentile)]
    return t / t.sum(axis=1, keepdims=True)


def count_t(probs: np.ndarray, noisy_labels: np.ndarray) -> np.ndarray:
    """Dual-T's T_count[i, j] = p(noisy = j | predicted = i), counted on the training part; a class never
    predicted gets the identity row (no evidence of a flip)."""
    k = probs.shape[1]
    counts = np.zeros((k, k))
    np.add.at(counts, (probs.argmax(axis=1), noisy_labels), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    return np.where(rows > 0, counts / np.maximum(rows, 1.0), np.eye(k))


def _require_cleanlab() -> None:
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise UserError("q: q=confident calls cleanlab, which is not installed: pip install 'noisy-convnet[cleanlab]'")


def confident_q(probs: np.ndarray, noisy_labels: np.ndarray) -> np.ndarray:
    """cleanlab's confident-joint estimate with its default arguments; its noise_matrix[i, j] =
    p(noisy = i | true = j) is this project's layout already."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    _, noise_matrix, _, _ = estimate_py_and_noise_matrices_from_probabilities(noisy_labels, probs)
    return np.asarray(noise_matrix, dtype=np.float64)


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
    if value is True or value == "true":
        return True
    if value == "estimated":
        return False
    raise UserError(f"q.start: {value!r} is not allowed; estimated (the method's own T) or true (Q*: the oracle start)")


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
                 ) -> tuple[np.ndarray, np.ndarray | None, dict]:  # fmt: skip
        """(Q_hat, the p(noisy | x) it came from or None, record fields)."""
        raise NotImplementedError

    def plain(self, k: int, train: Split, val: Split, trainers: Trainers, predict: Split,
              stage: str | None = PLAIN) -> Training:  # fmt: skip
        """A plain net early-stopped on the noisy validation slice (the shared stage when trained on the
        whole training part), with p(noisy | x) on ``predict``."""
        return trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=predict, stage=stage,
                            role="plain")  # fmt: skip

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


def _percentile(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 100:
        raise UserError(f"q.anchor_percentile: {value!r} is outside [1, 100], a percentile (97: the authors'; 100: "
                        "no discarding, plain argmax)")  # fmt: skip
    return float(value)


class AnchorQ(_ForwardCorrection):
    """Forward correction with anchor points (Patrini et al. 2017): Q_hat = T_hat transposed."""

    name, label = "anchor", "anchor points"

    def __init__(self, anchor_percentile: float, start: str):
        self.percentile = _percentile(anchor_percentile)
        self.started(start)

    def estimate(self, noisy, k, train, val, trainers):
        images = _estimation_images(train, val, trainers)
        plain = self.plain(k, train, val, trainers, predict=images)
        return anchor_t(plain.probs, self.percentile).T, plain.probs, {"plain_test_error": plain.test.test_error}


class DualTQ(AnchorQ):
    """Dual-T (Yao et al. 2020): T_hat = T_anchor x T_count, both from the same early-stopped plain net."""

    name, label = "dualt", "Dual-T"

    def estimate(self, noisy, k, train, val, trainers):
        images = _estimation_images(train, val, trainers)
        plain = self.plain(k, train, val, trainers, predict=images)
        t = anchor_t(plain.probs, self.percentile) @ count_t(plain.probs, images.y.numpy())
        return t.T, plain.probs, {"plain_test_error": plain.test.test_error}


class ConfidentQ(_ForwardCorrection):
    """cleanlab's confident joint (Northcutt et al. 2021) on out-of-fold probabilities: ``folds`` plain nets,
    each trained on the other folds of the training part (stratified by noisy label, seeded) and
    early-stopped on the validation slice, predict their held-out fold."""

    name, label = "confident", "confident joint"

    def __init__(self, folds: int, start: str):
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise UserError(f"q.folds: {folds} must be a whole number >= 2")
        _require_cleanlab()
        self.folds = folds
        self.started(start)

    def estimate(self, noisy, k, train, val, trainers):
        from sklearn.model_selection import StratifiedKFold

        labels = train.y.numpy()
        rarest = int(np.bincount(labels, minlength=k).min())
        if self.folds > rarest:
            raise UserError(f"q.folds: {self.folds} folds need at least as many images of every noisy label; "
                            f"the rarest has {rarest}")  # fmt: skip
        probs = np.full((len(labels), k), np.nan)
        split = StratifiedKFold(self.folds, shuffle=True, random_state=trainers.context.seed).split(labels, labels)
        errors = []
        for rest, held in split:
            fold = self.plain(k, train.take(rest), val, trainers, predict=train.take(held), stage=None)
            probs[held] = fold.probs
            errors.append(fold.test.test_error)
        return confident_q(probs, labels), probs, {"fold_test_errors": errors}


class VolMinQ(_KClasses):
    """VolMinNet (Li et al. 2021): Q learned end to end with the minimum-volume term, in one training
    (layers.VolMinNoiseLayer); the keys are conf/q/volmin.yaml's (``optimizer``: Q's own, or null for a
    group of the network's)."""

    name, label, estimated = "volmin", "VolMinNet", True

    def __init__(self, init: float, vol_weight: float, lr: float, optimizer: str | None = None):
        from .module import LAYER_OPTIMIZERS

        if optimizer is not None and optimizer not in LAYER_OPTIMIZERS:
            raise UserError(f"q.optimizer: {optimizer!r} is not allowed; {', '.join(LAYER_OPTIMIZERS)}, or null (a "
                            "parameter group of the network's optimiser)")  # fmt: skip
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


def _whole(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"q.{key}: {value!r} must be a whole number >= {low}")
    return value


def _positive(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"q.{key}: {value!r} must be a finite number > 0")
    return float(value)


class HocQ(_ForwardCorrection):
    """HOC (Zhu et al. 2021; hoc.py): T from the first-, second- and third-order consensus of the noisy
    labels of each image and its two nearest neighbours by the cosine similarity of the shared plain net's
    penultimate features (or a feature file's), over ``rounds`` samples of ``sample_size`` images; T and
    the prior fitted by Adam (``steps``, ``lr``); then forward correction through Q_hat = T^T."""

    name, label = "hoc", "HOC"
    SAMPLE = 15_000  # the authors' sample size, or every training image when there are fewer

    def __init__(self, rounds: int, sample_size: int | None, steps: int, lr: float, features: str | None,
                 start: str):  # fmt: skip
        self.started(start)
        self.rounds, self.steps = _whole("rounds", rounds, 1), _whole("steps", steps, 1)
        self.sample_size = None if sample_size is None else _whole("sample_size", sample_size, 3)
        self.lr = _positive("lr", lr)
        self.features = None if features is None else _feature_file(features)  # read once, before any data

    def needs_validation(self) -> str | None:
        return None if self.features is not None or self.oracle else super().needs_validation()

    def estimate(self, noisy, k, train, val, trainers):
        from . import hoc

        n = len(train)
        if self.sample_size is not None and self.sample_size > n:
            raise UserError(f"q.sample_size: {self.sample_size} is more than the {n} training images; at most {n} "
                            "(null: the authors' 15,000 or all of them when fewer)")  # fmt: skip
        size = self.sample_size or min(self.SAMPLE, n)
        fields = {"sample_size": size}
        if self.features is not None:  # one row per pool image: the training part's rows, in its order
            pool = noisy.pool_size
            if noisy.indices is None or len(self.features) != pool:
                raise UserError(f"q.features: {len(self.features)} rows; one per image of the data set's pool "
                                f"({pool} images, datasets.load(name).pool's order) is needed")  # fmt: skip
            features = self.features[noisy.indices[:n]]
        else:
            plain = trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=train, outputs=("features",),
                                 stage=PLAIN, role="plain")  # fmt: skip
            features, fields["plain_test_error"] = plain.features, plain.test.test_error
        seed = trainers.context.seed
        counts = hoc.consensus(features, train.y.numpy(), k, self.rounds, size, np.random.default_rng([seed, 7]))
        t, loss = hoc.fit_t(*counts, self.steps, self.lr, seed)
        return t.T, None, {**fields, "hoc_loss": loss}


def _feature_file(path) -> np.ndarray:
    """q.features: a .npy of N x D finite numbers, one row per image of the data set's pool, in its order
    (the order of datasets.load(name).pool; the run picks its training part's rows by indices.npy)."""
    from pathlib import Path

    from hydra.utils import to_absolute_path

    if not isinstance(path, str) or not path.endswith(".npy"):
        raise UserError(f"q.features: {path!r} must be the path of a .npy file (one row of features per pool image)")
    try:
        f = np.load(Path(to_absolute_path(path)))
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"q.features: cannot read '{path}' as a .npy array ({str(e) or 'empty file'})") from None
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.number) or not np.isfinite(f).all():
        raise UserError(f"q.features: '{path}' holds an array of shape {f.shape} and type {f.dtype}; finite numbers, "
                        "one row per pool image, are needed")  # fmt: skip
    return f


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
        from .layers import ImportanceLayer, stochastic_rows

        k = self.outputs(noisy)
        plain = trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=train, stage=PLAIN, role="plain")
        t_anchor = anchor_t(plain.probs, self.percentile)
        t_start = noisy.q_true.T if self.oracle else t_anchor
        weighted = trainers.fit(ImportanceLayer(t_start, revise=False), train, val, early_stopping=True, init=plain,
                                role="reweight")  # fmt: skip
        revised = trainers.fit(ImportanceLayer(t_start, revise=True, lr=self.revision_lr), train, val, init=weighted,
                               net_lr=self.revision_lr, role="revision")  # fmt: skip
        t_raw = revised.module.noise.t().detach().cpu().numpy().astype(np.float64)
        if not np.isfinite(t_raw).all():
            raise Diverged("q=trevision: the revised T is not finite (lower q.revision_lr)")
        q = stochastic_rows(t_raw).T
        fields = {"plain_test_error": plain.test.test_error, "reweighted_test_error": weighted.test.test_error,
                  "T_anchor": t_anchor, "T_revised": t_raw,
                  "q_error_anchor": noise.q_error(t_anchor.T, noisy.q_true),
                  "q_error_revised": noise.q_error(q, noisy.q_true)}  # fmt: skip
        return Fitted(revised, q, fields)
