"""The training factory: the one seam through which a Q estimator trains, with nothing of Hydra in it.

An estimator sees ``Trainers.fit`` and ``Trainers.context`` and nothing else:

  fit(layer, train, val, *, early_stopping=None, init=None, init_noise=False, net_lr=None, predict=None,
      outputs=("probs",), stage=None, role=None) -> Training
      layer           the noise layer the base net trains through (its class count sizes the net)
      early_stopping  None: the run's protocol; True/False: this training's own
      role            what this training is to its estimator ("plain", "reweight", "revision"): the run's
                      protocol.<role> may give it epochs, an optimiser and a selection rule of its own (a
                      peer's protocol); without one, or with none given there, the run's
      init            a Training to warm-start from: its base net's weights (and, with init_noise, its noise
                      layer's) instead of the seeded fresh ones
      net_lr          the base net's learning rate for this training (None: the optimiser's), e.g. a
                      fine-tuning stage's small one; the run's schedule still shapes it
      predict         images to compute ``outputs`` on after the training, in their order:
                      "probs" p(noisy | x) (N x K), "features" the base net's penultimate layer (N x D)
      stage           a name: a training with the same inputs (stages.py) is trained once per sweep (or run)
                      and reused by every estimator that asks for it by that name
  context: Context(seed, max_epochs, early_stopping, artifacts): what an estimator may know of the run
Every training's settings (network, optimiser, schedule, epochs, selection rule) are kept in ``protocol``,
in order, for the record.

The factory takes the run's protocol typed (``protocol.Spec``), checks an estimator's call, keys a shared
stage and asks ``stages.StageStore`` for it; the Lightning side (train, resume, test, outputs) is
``fitting.Fitter``'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import Split
from .errors import UserError
from .fitting import Ask, Fitter, Start, TestResult, Training, state_of
from .identity import cell_config
from .layers import NoiseLayer
from .protocol import Settings, Spec
from .record import StageUse, provenance
from .stages import NAME, StageStore, digest, layer_inputs, split_inputs, stage_key

__all__ = ["Context", "Trainers", "Training", "TestResult"]
log = logging.getLogger(__name__)

OUTPUTS = ("probs", "features")
STAGE_NAME = re.compile(NAME)  # a stage's folder is <name>-<key>: no path in a name


@dataclass(frozen=True)
class Context:
    """What an estimator may know of the run."""

    seed: int  # the run's seed (the noisy labels and every training's start)
    max_epochs: int  # the epoch budget of one training
    early_stopping: bool  # the run's protocol: the tested net is the best noisy-validation epoch's
    artifacts: Path  # the run's folder: an estimator's own files (probabilities, matrices) go here
    estimate_on: str = "train"  # the images T is estimated on: the training part, or "all" (+ validation slice)


class Trainers:
    """The seam an estimator trains through: ``fit`` (a training, or a shared stage trained once and reused)
    and ``context``. ``watch(n)`` gives the n-th training's loggers; the stages live in ``stages_dir``
    (the run folder's ``stages/`` by default)."""

    def __init__(self, spec: Spec, shape: tuple[int, int, int], test: Split, q_true: np.ndarray, num_classes: int,
                 run_dir: Path, watch: Callable[[int], list] | None = None, stages_dir: Path | None = None):
        self.spec, self.shape, self.test_split, self.num_classes = spec, shape, test, num_classes
        self.run_dir = Path(run_dir)
        self.context = Context(spec.seed, spec.max_epochs, spec.early_stopping, self.run_dir, spec.estimate_on)
        self.stages = StageStore(stages_dir if stages_dir is not None else self.run_dir / "stages")
        self.fitter = Fitter(spec, shape, test, q_true, num_classes, self.run_dir, watch)
        self.used: list[StageUse] = []  # the shared stages this run used, in order
        self.protocol: list[dict] = []  # every training's settings (Settings.describe), in order
        self._fits = 0  # trainings of the run's own (not stages): their checkpoint folders' numbers

    @property
    def count(self) -> int:
        """Nets trained for this run (a reused stage is not)."""
        return self.fitter.count

    def fit(self, layer: NoiseLayer, train: Split, val: Split, *, early_stopping: bool | None = None,
            init: Training | None = None, init_noise: bool = False, net_lr: float | None = None,
            predict: Split | None = None, outputs: tuple[str, ...] = ("probs",), stage: str | None = None,
            role: str | None = None) -> Training:
        """Train a base net (with as many outputs as the layer has classes) through ``layer`` on ``train``,
        watching ``val``; test it (the best epoch's weights with early stopping) and, given ``predict``,
        compute ``outputs`` on its images. Raises Diverged when the loss or Q is not finite at the end."""
        layer_state = self._check_call(layer, outputs, init, init_noise, stage)
        settings = self.settings(role, early_stopping)
        ask = Ask(predict, tuple(outputs) if predict is not None else ())
        start = Start(init, init_noise, net_lr)
        self.protocol.append({**settings.describe(self.spec.model),
                              **({"q_optimizer": layer.optimizer} if layer.optimizer else {}),
                              **({"init": "continued"} if init is not None else {})})
        if stage is None or self.spec.fast_dev_run:  # a one-batch check shares nothing
            self._fits += 1
            checkpoints = self.run_dir / "checkpoints" / f"training{self._fits}"
            return self.fitter.train(layer, train, val, settings, start, ask, checkpoints)
        key = stage_key(stage, self._stage_inputs(layer_state, train, val, settings, start))
        training, trained = self.stages.get_or_train(  # a second cell asking for it waits for the first
            stage, key, lambda checkpoints: self.fitter.train(layer, train, val, settings, start, ask, checkpoints),
            state_of, lambda stored: self.fitter.reuse(stored, layer, train, val, ask))
        training.stage = StageUse(stage, key, trained=trained)
        self.used.append(training.stage)
        return training

    def _check_call(self, layer, outputs, init, init_noise, stage) -> dict:
        """A user's estimator calling fit() wrongly: one line naming q._target_, before any training. Returns
        what decides the layer (``stages.layer_inputs``), for the stage key."""
        where = f"q._target_: '{self.spec.estimator}' calls trainers.fit"
        if not isinstance(layer, NoiseLayer):
            raise UserError(f"{where} with a {type(layer).__name__}; a layers.NoiseLayer is needed")
        unknown = sorted(set(outputs) - set(OUTPUTS))
        if unknown:
            raise UserError(f"{where}(outputs=...): unknown {unknown}; allowed: {', '.join(OUTPUTS)}")
        if stage is not None and not (isinstance(stage, str) and STAGE_NAME.fullmatch(stage)):
            raise UserError(f"{where}(stage={stage!r}): a stage name is 1 to 64 letters, digits, '_' or '-'")
        if init is not None:
            if not isinstance(init, Training):
                raise UserError(f"{where}(init=...) with a {type(init).__name__}; the Training an earlier fit gave")
            try:
                with torch.device("meta"):  # shapes only: no weights drawn, the seeded generators untouched
                    mine = self.fitter.net(layer.num_classes).state_dict()
            except Exception:  # noqa: BLE001 -- a user's network that needs values to be built: built for real
                mine = self.fitter.net(layer.num_classes).state_dict()
            same = _shapes(mine) == _shapes(init.module.net.state_dict())
            same = same and (not init_noise or _shapes(init.module.noise.state_dict()) == _shapes(layer.state_dict()))
            if not same:
                raise UserError(
                    f"{where}(init=...) with a training whose net (or noise layer) has other shapes than "
                    f"this one's ({layer.num_classes} outputs): a warm start needs the same network"
                )
        return layer_inputs(layer, where)

    def settings(self, role: str | None, early_stopping: bool | None = None) -> Settings:
        """One training's settings: protocol.<role>'s where it gives them, else the estimator's choice of
        early stopping, else the run's."""
        return self.spec.settings(role, self.context.early_stopping if early_stopping is None else bool(early_stopping))

    def _stage_inputs(self, layer_state: dict, train: Split, val: Split, es: Settings, start: Start) -> dict:
        """Exactly what decides a training's weights and test numbers (stages.py)."""
        spec = self.spec
        trainer = {**spec.trainer, "max_epochs": es.epochs}
        watched = cell_config({"model": spec.model, "optim": es.optim, "trainer": trainer})  # volatile out
        init = None
        if start.init is not None:
            init = {k: digest(v) for k, v in start.init.module.net.state_dict().items()}
            if start.noise:
                init["noise"] = {k: digest(v) for k, v in start.init.module.noise.state_dict().items()}
        return {
            "data": {name: split_inputs(s) for name, s in (("train", train), ("val", val), ("test", self.test_split))},
            "seed": spec.seed, **watched, "code": provenance(),  # another commit or library: another stage
            "device": spec.device, "threads": torch.get_num_threads(),  # float sums differ
            "protocol": {"early_stopping": es.early_stopping, "selection": es.selection, "net_lr": start.net_lr,
                         "patience": spec.patience, "batch_size": spec.batch_size, "shift": spec.shift,
                         "channels_last": spec.channels_last},
            "classes": self.num_classes, "shape": list(self.shape),
            "layer": layer_state,
            "init": init,
        }


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}
