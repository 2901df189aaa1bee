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

Every training starts from the same seeded weights (``pl.seed_everything(seed)`` first), so two trainings
of the same layer on the same data give the same numbers whatever ran before, and every training is
tested on the clean test set (its best checkpoint with early stopping), which costs one pass over the test
images. A training killed half-way resumes from its last checkpoint (model, Q, optimiser, schedule, RNG).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import FolderDataModule, TensorDataModule
from .datasets import Split
from .devices import channels_last, training_device
from .errors import Diverged, UserError, from_worker
from .files import write_atomic
from .identity import cell_config
from .layers import NoiseLayer
from .loggers import build_loggers, finish_wandb
from .module import NoisyLabelModule
from .record import StageUse, provenance
from .stages import NAME, StageStore, digest, stage_key

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


@dataclass
class TestResult:
    """A base net scored on the clean test set."""

    test_error: float
    confusion: np.ndarray  # Eq. 4: column j is the mean softmax over test images of true class j
    inlier_ap: float | None = None  # outlier noise: average precision of telling inliers from outliers
    pr_curve: dict | None = None  # its precision-recall curve {precision, recall}


@dataclass
class Training:
    """One trained base net with its noise layer, tested on the clean test set."""

    module: NoisyLabelModule
    epochs: int  # epochs run (fewer than max_epochs when early stopping ended it)
    val_nll: float | None  # the noisy validation NLL of the tested model (the best epoch's with early stopping)
    images_per_s: float  # training images per second of fit()
    device: str
    test: TestResult
    probs: np.ndarray | None = None  # p(noisy | x) on the images asked for (N x K, float64), in their order
    features: np.ndarray | None = None  # the base net's penultimate layer on them (N x D, float32)
    seconds: float = 0.0  # wall time of this training (fit, test and outputs), or of its reuse
    stage: StageUse | None = None  # the shared stage it is, trained here or reused


@dataclass(frozen=True)
class Settings:
    """How one training runs: the run's protocol, or protocol.<role>'s where it gives a value."""

    role: str | None
    epochs: int
    optim: dict  # {optimizer: {_target_...}, scheduler: {...} | None}
    early_stopping: bool  # keep the best noisy-validation epoch (else the last)
    selection: str  # nll | accuracy: what "best" means

    def describe(self, model: dict) -> dict:
        """The record's account of it: network, optimiser, schedule, epochs, which epoch is tested."""

        def named(node):
            if not node:
                return None
            return {"name": str(node.get("_target_", "")).rsplit(".", 1)[-1],
                    **{k: v for k, v in node.items() if not k.startswith("_")}}

        return {"role": self.role or "run", "model": str(model.get("_target_", "")).rsplit(".", 1)[-1],
                "optimizer": named(self.optim.get("optimizer")), "scheduler": named(self.optim.get("scheduler")),
                "epochs": self.epochs,
                "tested": f"best noisy-validation {self.selection}" if self.early_stopping else "last epoch",
                }


def _test_result(d: dict) -> TestResult:
    return TestResult(d["test_error"], d["confusion"], d.get("inlier_ap"), d.get("pr_curve"))


class Trainers:
    """Builds and trains a base net + noise layer + Lightning Trainer from the config, on any training and
    validation split, and tests it on the run's clean test set."""

    def __init__(self, cfg: DictConfig, shape: tuple[int, int, int], test: Split, q_true: np.ndarray,
                 num_classes: int, run_dir: Path, run_name: str, hparams: dict | None = None,
                 stages_dir: Path | None = None):
        self._cfg, self.shape, self.test_split, self.q_true = cfg, shape, test, q_true
        self.hparams = hparams or {}  # logged to every logger: the flattened config, q and noise by name
        self.num_classes, self.run_dir, self.run_name = num_classes, Path(run_dir), run_name
        self.channels_last = channels_last(cfg)
        self.context = Context(int(cfg.seed), int(cfg.trainer.max_epochs), bool(cfg.early_stopping), self.run_dir,
                               str(cfg.protocol.estimate_on))
        self.stages = StageStore(stages_dir if stages_dir is not None else self.run_dir / "stages")
        self.count = 0  # nets trained here (a reused stage is not)
        self.used: list[StageUse] = []  # the shared stages this run used, in order
        self.protocol: list[dict] = []  # every training's settings (Settings.describe), in order
        self._fits = 0  # trainings of the run's own (not stages): their checkpoint folders' numbers

    def datamodule(self, train: Split, val: Split, predict: Split | None = None) -> pl.LightningDataModule:
        d, seed, test, cl = self._cfg.data, self._cfg.seed, self.test_split, self.channels_last
        if train.source is None:  # in memory: tensors on the device
            return TensorDataModule(train, val, test, d.batch_size, d.shift, seed, cl, predict)
        return FolderDataModule(train, val, test, d.batch_size, d.num_workers, seed, cl, predict)

    def fit(self, layer: NoiseLayer, train: Split, val: Split, *, early_stopping: bool | None = None,
            init: Training | None = None, init_noise: bool = False, net_lr: float | None = None,
            predict: Split | None = None, outputs: tuple[str, ...] = ("probs",), stage: str | None = None,
            role: str | None = None) -> Training:
        """Train a base net (with as many outputs as the layer has classes) through ``layer`` on ``train``,
        watching ``val``; test it (the best epoch's weights with early stopping) and, given ``predict``,
        compute ``outputs`` on its images. Raises Diverged when the loss or Q is not finite at the end."""
        layer_state = self._check_call(layer, outputs, init, init_noise, stage)
        settings = self.settings(role, early_stopping)
        ask = (predict, tuple(outputs) if predict is not None else ())
        start = (init, init_noise, net_lr)
        self.protocol.append({**settings.describe(OmegaConf.to_container(self._cfg.model, resolve=True)),
                              **({"q_optimizer": layer.optimizer} if layer.optimizer else {}),
                              **({"init": "continued"} if init is not None else {})})
        if stage is None or self._cfg.trainer.get("fast_dev_run"):  # a one-batch check shares nothing
            self._fits += 1
            checkpoints = self.run_dir / "checkpoints" / f"training{self._fits}"
            return self._train(layer, train, val, settings, start, ask, checkpoints)
        key = stage_key(stage, self._stage_inputs(layer_state, train, val, settings, start))
        training, trained = self.stages.get_or_train(  # a second cell asking for it waits for the first
            stage, key, lambda checkpoints: self._train(layer, train, val, settings, start, ask, checkpoints),
            _state, lambda stored: self._reuse(stored, layer, train, val, ask))
        training.stage = StageUse(stage, key, trained=trained)
        self.used.append(training.stage)
        return training

    def _check_call(self, layer, outputs, init, init_noise, stage) -> dict:
        """A user's estimator calling fit() wrongly: one line naming q._target_, before any training. Returns
        what decides the layer (``_layer_state``), for the stage key."""
        where = f"q._target_: '{self._cfg.q.get('_target_')}' calls trainers.fit"
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
            mine = instantiate(self._cfg.model, in_shape=self.shape, num_classes=layer.num_classes).state_dict()
            theirs = init.module.net.state_dict()
            same = _shapes(mine) == _shapes(theirs)
            same = same and (not init_noise or _shapes(init.module.noise.state_dict()) == _shapes(layer.state_dict()))
            if not same:
                raise UserError(
                    f"{where}(init=...) with a training whose net (or noise layer) has other shapes than "
                    f"this one's ({layer.num_classes} outputs): a warm start needs the same network"
                )
        return _layer_state(layer, where)

    def settings(self, role: str | None, early_stopping: bool | None = None) -> Settings:
        """One training's settings: protocol.<role>'s where it gives them, else the estimator's choice of
        early stopping, else the run's."""
        cfg = self._cfg
        own = (cfg.protocol.get(role) if role is not None else None) or {}
        es = self.context.early_stopping if early_stopping is None else bool(early_stopping)
        es = es if own.get("early_stopping") is None else bool(own.early_stopping)
        optim = cfg.optim if own.get("optim") is None else own.optim
        return Settings(role, int(own.get("epochs") or cfg.trainer.max_epochs),
                        OmegaConf.to_container(optim, resolve=True), es,
                        str(own.get("selection") or cfg.selection))

    def _stage_inputs(self, layer_state: dict, train: Split, val: Split, es: Settings, start: tuple) -> dict:
        """Exactly what decides a training's weights and test numbers (stages.py)."""
        init, init_noise, net_lr = start
        cfg = OmegaConf.to_container(self._cfg, resolve=True)
        trainer = {**cfg["trainer"], "max_epochs": es.epochs}
        watched = cell_config({"model": cfg.get("model"), "optim": es.optim, "trainer": trainer})  # volatile out
        start = None
        if init is not None:
            start = {k: digest(v) for k, v in init.module.net.state_dict().items()}
            if init_noise:
                start["noise"] = {k: digest(v) for k, v in init.module.noise.state_dict().items()}
        return {
            "data": {name: _split_digest(s) for name, s in (("train", train), ("val", val), ("test", self.test_split))},
            "seed": self.context.seed, **watched, "code": provenance(),  # another commit or library: another stage
            "device": training_device(self._cfg).type, "threads": torch.get_num_threads(),  # float sums differ
            "protocol": {"early_stopping": es.early_stopping, "selection": es.selection, "net_lr": net_lr,
                         "patience": cfg["patience"],
                         "batch_size": cfg["data"]["batch_size"], "shift": cfg["data"]["shift"],
                         "channels_last": self.channels_last},
            "classes": self.num_classes, "shape": list(self.shape),
            "layer": layer_state,
            "init": start,
        }

    def _module(self, layer: NoiseLayer, net_lr: float | None = None, optim: dict | None = None) -> NoisyLabelModule:
        cfg = self._cfg
        optim = OmegaConf.to_container(cfg.optim, resolve=True) if optim is None else optim
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # every training starts from the same weights
        net = instantiate(cfg.model, in_shape=self.shape, num_classes=layer.num_classes)
        return NoisyLabelModule(
            net, layer, instantiate(optim["optimizer"]), instantiate(optim.get("scheduler")),
            q_true=self.q_true, num_classes=self.num_classes, channels_last=self.channels_last, net_lr=net_lr,
        )

    def _train(self, layer, train, val, settings: Settings, start, ask, checkpoints: Path) -> Training:
        cfg, t_start, (init, init_noise, net_lr) = self._cfg, time.perf_counter(), start
        es = settings.early_stopping
        self.count += 1
        dm = self.datamodule(train, val, ask[0])
        module = self._module(layer, net_lr, settings.optim)
        if init is not None:  # a warm start: the earlier training's weights instead of the seeded fresh ones
            module.net.load_state_dict(init.module.net.state_dict())
            if init_noise:
                module.noise.load_state_dict(init.module.noise.state_dict())
        loggers = build_loggers(cfg, self.run_name, self.count)
        for lg in loggers:  # a dashboard groups and filters runs by any of these keys
            lg.log_hyperparams({**self.hparams, "training": self.count})
        callbacks = build_callbacks(cfg, checkpoints, es, settings.selection)
        if loggers:
            from pytorch_lightning.callbacks import LearningRateMonitor

            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        trainer = self._trainer(logger=loggers or False, callbacks=callbacks, enable_checkpointing=True,
                                max_epochs=settings.epochs)
        last = checkpoints / "last.ckpt"  # a training killed or requeued half-way: resume where it stopped
        done = checkpoints / "done.json"  # a training that had ended: its fit-time numbers, kept
        if last.is_file() and _unreadable(last):  # cut short by a kill while it was written
            aside = checkpoints.with_name(f"{checkpoints.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            checkpoints.rename(aside)
            log.warning("training %d: its checkpoint %s cannot be read; set aside in %s, training again from the "
                        "start", self.count, last, aside)
        if last.is_file():
            log.info("training %d resumes from %s", self.count, last)
        t_fit = time.perf_counter()
        try:
            trainer.fit(module, dm, ckpt_path=str(last) if last.is_file() else None)
        except UserError as e:  # an image that cannot be decoded, found by a DataLoader worker
            raise from_worker(e) from None
        fit_s = time.perf_counter() - t_fit
        epochs = trainer.current_epoch
        try:
            _check_finite(trainer, module, self.count)  # a resumed end state too: its weights are checked
        except Diverged:
            shutil.rmtree(checkpoints, ignore_errors=True)  # never a result on rerun: it trains (and fails) again
            raise
        if done.is_file() and last.is_file():  # fit restored the end state and had nothing left to do
            ended = json.loads(done.read_text())
            val_nll, images_per_s = ended["val_nll"], ended["images_per_s"]
        else:
            score = trainer.checkpoint_callback.best_model_score if es else trainer.callback_metrics.get("val/nll")
            if es and settings.selection != "nll" and not trainer.fast_dev_run:  # the best epoch's NLL, not its score
                score = trainer.validate(module, dm, ckpt_path="best", verbose=False)[0].get("val/nll")
            val_nll, images_per_s = None if score is None else float(score), len(train) * epochs / fit_s
            if not trainer.fast_dev_run:
                write_atomic(done, json.dumps({"val_nll": val_nll, "images_per_s": images_per_s}))
        best = es and not trainer.fast_dev_run  # a one-batch check keeps no checkpoint
        trainer.test(module, dm, ckpt_path="best" if best else None, verbose=False)  # loads the best weights
        out = self._outputs(module, dm, ask[1])
        finish_wandb(trainer)
        return Training(module, epochs, val_nll, images_per_s, str(trainer.strategy.root_device),
                        _test_result(module.test_results), out.get("probs"), out.get("features"),
                        time.perf_counter() - t_start)

    def _reuse(self, state: dict, layer: NoiseLayer, train: Split, val: Split, ask) -> Training:
        """A stored stage as a Training: its weights in a fresh module, its numbers, and the outputs asked."""
        t_start = time.perf_counter()
        module = self._module(layer)
        module.net.load_state_dict(state["net"])
        module.noise.load_state_dict(state["noise"])
        out = self._outputs(module, self.datamodule(train, val, ask[0]), ask[1]) if ask[0] is not None else {}
        t = state["test"]
        pr = None if t.get("pr_curve") is None else {k: v.numpy() for k, v in t["pr_curve"].items()}
        test = TestResult(float(t["test_error"]), t["confusion"].numpy(), t.get("inlier_ap"), pr)
        return Training(module, int(state["epochs"]), state["val_nll"], float(state["images_per_s"]), state["device"],
                        test, out.get("probs"), out.get("features"), time.perf_counter() - t_start)

    def _trainer(self, **kwargs) -> pl.Trainer:
        """A Lightning Trainer from conf/trainer; Lightning's refusal of a setting is one line naming trainer."""
        from pytorch_lightning.utilities.exceptions import MisconfigurationException

        try:
            return instantiate(self._cfg.trainer, default_root_dir=str(self.run_dir), **kwargs)
        except InstantiationException as e:
            cause = e.__cause__
            if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
                raise UserError(f"trainer: Lightning refuses these settings ({str(cause).splitlines()[0]})") from None
            raise

    def _outputs(self, module: NoisyLabelModule, dm, outputs: tuple[str, ...]) -> dict:
        """``outputs`` of the module on the datamodule's predict images, all of them (a one-batch check too),
        in their order, as numpy arrays."""
        if not outputs:
            return {}
        trainer = self._trainer(logger=False, callbacks=[], enable_checkpointing=False, fast_dev_run=False)
        module.predict_outputs = tuple(outputs)
        try:
            batches = trainer.predict(module, dm, return_predictions=True)
        finally:
            module.predict_outputs = ("probs",)
        out = {name: torch.cat([b[name] for b in batches]).cpu() for name in outputs}
        if "probs" in out:
            out["probs"] = out["probs"].double().numpy()
        if "features" in out:
            out["features"] = out["features"].float().numpy()
        return out


def _layer_state(layer: NoiseLayer, where: str = "q._target_: the estimator trains") -> dict:
    """What decides a noise layer besides its class: its public attributes (numbers, strings, and arrays or
    tensors by digest, a plain tensor attribute as much as a buffer) and its state dict. An attribute of
    another kind cannot be hashed for a shared stage, and is refused (UserError)."""
    out = {"type": f"{type(layer).__module__}.{type(layer).__qualname__}",
           "state": {k: digest(v) for k, v in layer.state_dict().items()}}
    for k, v in vars(layer).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, (bool, int, float, str, type(None))):
            out[k] = v
        elif isinstance(v, (torch.Tensor, np.ndarray)):
            out[k] = digest(torch.as_tensor(v))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str, type(None))) for x in v):
            out[k] = list(v)
        else:
            raise UserError(
                f"{where} with a {type(layer).__name__} whose attribute '{k}' is a {type(v).__name__}: "
                "what decides a noise layer must be numbers, strings, arrays or tensors"
            )
    return out


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def _unreadable(path: Path) -> bool:
    """A checkpoint that cannot be read as tensors and plain values (cut short by a kill, or a pickle that
    would run code: never run, set aside like a cut one). Lightning reads it so too (torch's default)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return False
    except Exception:  # noqa: BLE001 -- torch raises several kinds for a cut file (EOFError, RuntimeError, ...)
        return True


def _split_digest(s: Split) -> dict:
    return {"x": digest(s.x), "y": digest(s.y), "source": None if s.source is None else _source(s.source)}


def _source(source) -> str:
    """What a file-backed split reads: its files (an image folder's samples, an outlier folder's list, a
    concatenation of them) and transform, hashed."""
    parts = [type(source).__qualname__]
    for inner in getattr(source, "datasets", None) or [source]:  # a ConcatDataset: each of its parts
        files = getattr(inner, "samples", None) or getattr(inner, "files", None)
        parts += [type(inner).__qualname__, repr(files if files is not None else getattr(inner, "root", inner)),
                  repr(getattr(inner, "transform", None))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _state(t: Training) -> dict:
    """What a stage keeps (tensors and plain values only: read back with weights_only=True)."""
    test = t.test
    pr = None if test.pr_curve is None else {k: torch.as_tensor(v) for k, v in test.pr_curve.items()}
    return {
        "net": t.module.net.state_dict(), "noise": t.module.noise.state_dict(), "epochs": t.epochs,
        "val_nll": t.val_nll, "images_per_s": t.images_per_s, "device": t.device,
        "test": {"test_error": test.test_error, "confusion": torch.as_tensor(test.confusion),
                 "inlier_ap": test.inlier_ap, "pr_curve": pr},
    }


# selection -> (the validation metric, its better direction)
MONITORS = {"nll": ("val/nll", "min"), "accuracy": ("val/acc", "max")}


def build_callbacks(cfg: DictConfig, checkpoints: Path, early_stopping: bool, selection: str = "nll") -> list:
    """Progress bar; a checkpoint after every epoch (last.ckpt: model, Q, optimiser and schedule, so a
    killed or requeued training resumes where it stopped); with early stopping, the best epoch's too (by
    ``selection``), and a stop after ``patience`` epochs without a better one (patience null: no stop)."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    cbs = []
    if cfg.trainer.get("enable_progress_bar", True):
        cbs.append(RichProgressBar(leave=True))
    if early_stopping:  # first: trainer.checkpoint_callback, whose "best" is tested
        monitor, mode = MONITORS[selection]
        if cfg.patience is not None:
            cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience))
        cbs.append(ModelCheckpoint(dirpath=checkpoints, monitor=monitor, mode=mode, filename="best-{epoch}"))
    cbs.append(ModelCheckpoint(dirpath=checkpoints, save_top_k=1, save_last=True))  # every epoch: last.ckpt
    cbs.append(RngState())
    return cbs


class RngState(pl.Callback):
    """Saves the global random generators (torch's CPU and CUDA ones: dropout draws from them) in every
    checkpoint and restores them on a resume: a training resumed at epoch 5 draws the dropout masks an
    uninterrupted one draws there. (The shuffle and the shifts have their own per-epoch generators.)"""

    device: torch.device | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # before a restore
        self.device = trainer.strategy.root_device

    def state_dict(self) -> dict:
        on_gpu = self.device is not None and self.device.type == "cuda"  # only the training's GPU, if any
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if on_gpu else None}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and self.device is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)


def _check_finite(trainer: pl.Trainer, module: NoisyLabelModule, count: int) -> None:
    loss = trainer.callback_metrics.get("train/loss")
    q = module.noise.q()
    weights = all(torch.isfinite(p).all() for p in module.parameters())
    if (loss is not None and not torch.isfinite(loss).all()) or (q is not None and not torch.isfinite(q).all()) \
            or not weights:
        raise Diverged(
            f"training {count} diverged: its loss or Q is not finite after epoch {trainer.current_epoch} "
            "(lower the learning rates or the regulariser weights)"
        )
