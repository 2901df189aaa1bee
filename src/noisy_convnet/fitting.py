"""One training with Lightning: a base net and its noise layer fitted on a training split, watched on a
validation split, checked finite, tested on the clean test set and, when asked, its outputs computed on
other images. The training factory (factory.py) decides what to train and whether a stored stage serves;
this module only trains (``Fitter.train``) or turns a stored stage back into a ``Training``
(``Fitter.reuse``).

Every training starts from the same seeded weights (``pl.seed_everything(seed)`` first), so two trainings
of the same layer on the same data give the same numbers whatever ran before, and every training is
tested on the clean test set (its best checkpoint with early stopping), which costs one pass over the test
images. A training killed half-way resumes from its last checkpoint (model, Q, optimiser, schedule, RNG).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from .data import FolderDataModule, TensorDataModule
from .datasets import Split
from .errors import Diverged, UserError, from_worker
from .files import write_atomic
from .layers import NoiseLayer
from .loggers import finish_wandb
from .module import NoisyLabelModule
from .protocol import Settings, Spec
from .record import StageUse

log = logging.getLogger(__name__)


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
class Start:
    """Where a training starts: the seeded fresh weights, or a warm start from an earlier Training's."""

    init: Training | None = None  # its base net's weights (and, with noise, its noise layer's)
    noise: bool = False
    net_lr: float | None = None  # the base net's learning rate (None: the optimiser's)


@dataclass(frozen=True)
class Ask:
    """What is computed after a training: ``outputs`` on the ``predict`` images, in their order."""

    predict: Split | None = None
    outputs: tuple[str, ...] = ()


class Fitter:
    """Trains, tests and reads out base nets + noise layers with a Lightning Trainer, on any training and
    validation split, all tested on the run's clean test set. ``watch(n)`` gives the n-th training's
    loggers (none by default)."""

    def __init__(self, spec: Spec, shape: tuple[int, int, int], test: Split, q_true: np.ndarray, num_classes: int,
                 run_dir: Path, watch: Callable[[int], list] | None = None):
        self.spec, self.shape, self.test_split, self.q_true = spec, shape, test, q_true
        self.num_classes, self.run_dir = num_classes, Path(run_dir)
        self.watch = watch or (lambda n: [])
        self.count = 0  # nets trained (a reused stage is not)

    def datamodule(self, train: Split, val: Split, predict: Split | None = None) -> pl.LightningDataModule:
        s = self.spec
        if train.source is None:  # in memory: tensors on the device
            return TensorDataModule(train, val, self.test_split, s.batch_size, s.shift, s.seed, s.channels_last,
                                    predict)
        return FolderDataModule(train, val, self.test_split, s.batch_size, s.num_workers, s.seed, s.channels_last,
                                predict)

    def net(self, num_classes: int) -> torch.nn.Module:
        """The network, with the seeded fresh weights of whatever ran before."""
        return instantiate(self.spec.model, in_shape=self.shape, num_classes=num_classes)

    def module(self, layer: NoiseLayer, net_lr: float | None = None, optim: dict | None = None) -> NoisyLabelModule:
        optim = self.spec.optim if optim is None else optim
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)  # every training starts from the same weights
        return NoisyLabelModule(
            self.net(layer.num_classes), layer, instantiate(optim["optimizer"]), instantiate(optim.get("scheduler")),
            q_true=self.q_true, num_classes=self.num_classes, channels_last=self.spec.channels_last, net_lr=net_lr,
        )

    def train(self, layer: NoiseLayer, train: Split, val: Split, settings: Settings, start: Start, ask: Ask,
              checkpoints: Path) -> Training:
        """Train through ``layer`` on ``train`` watching ``val`` (resuming from ``checkpoints`` when a killed
        training left them), test it (the best epoch's weights with early stopping) and compute ``ask``.
        Raises Diverged when the loss, Q or a weight is not finite at the end."""
        t_start, es = time.perf_counter(), settings.early_stopping
        self.count += 1
        dm = self.datamodule(train, val, ask.predict)
        module = self.module(layer, start.net_lr, settings.optim)
        if start.init is not None:  # a warm start: the earlier training's weights instead of the seeded fresh ones
            module.net.load_state_dict(start.init.module.net.state_dict())
            if start.noise:
                module.noise.load_state_dict(start.init.module.noise.state_dict())
        loggers = self.watch(self.count)
        callbacks = build_callbacks(self.spec, checkpoints, es, settings.selection)
        if loggers:
            from pytorch_lightning.callbacks import LearningRateMonitor

            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        trainer = self.trainer(logger=loggers or False, callbacks=callbacks, enable_checkpointing=True,
                               max_epochs=settings.epochs)
        last = checkpoints / "last.ckpt"  # a training killed or requeued half-way: resume where it stopped
        done = checkpoints / "done.json"  # a training that had ended: its fit-time numbers, kept
        if last.is_file() and unreadable(last):  # cut short by a kill while it was written
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
        out = self.outputs(module, dm, ask.outputs)
        finish_wandb(trainer)
        t = module.test_results
        test = TestResult(t["test_error"], t["confusion"], t.get("inlier_ap"), t.get("pr_curve"))
        return Training(module, epochs, val_nll, images_per_s, str(trainer.strategy.root_device), test,
                        out.get("probs"), out.get("features"), time.perf_counter() - t_start)

    def reuse(self, state: dict, layer: NoiseLayer, train: Split, val: Split, ask: Ask) -> Training:
        """A stored stage (``state_of``) as a Training: its weights in a fresh module, its numbers, and ``ask``."""
        t_start = time.perf_counter()
        module = self.module(layer)
        module.net.load_state_dict(state["net"])
        module.noise.load_state_dict(state["noise"])
        out = {} if ask.predict is None else self.outputs(module, self.datamodule(train, val, ask.predict),
                                                          ask.outputs)
        t = state["test"]
        pr = None if t.get("pr_curve") is None else {k: v.numpy() for k, v in t["pr_curve"].items()}
        test = TestResult(float(t["test_error"]), t["confusion"].numpy(), t.get("inlier_ap"), pr)
        return Training(module, int(state["epochs"]), state["val_nll"], float(state["images_per_s"]), state["device"],
                        test, out.get("probs"), out.get("features"), time.perf_counter() - t_start)

    def trainer(self, **kwargs) -> pl.Trainer:
        """A Lightning Trainer from conf/trainer; Lightning's refusal of a setting is one line naming trainer."""
        from pytorch_lightning.utilities.exceptions import MisconfigurationException

        try:
            return instantiate(self.spec.trainer, default_root_dir=str(self.run_dir), **kwargs)
        except InstantiationException as e:
            cause = e.__cause__
            if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
                raise UserError(f"trainer: Lightning refuses these settings ({str(cause).splitlines()[0]})") from None
            raise

    def outputs(self, module: NoisyLabelModule, dm, outputs: tuple[str, ...]) -> dict:
        """``outputs`` of the module on the datamodule's predict images, all of them (a one-batch check too),
        in their order, as numpy arrays."""
        if not outputs:
            return {}
        trainer = self.trainer(logger=False, callbacks=[], enable_checkpointing=False, fast_dev_run=False)
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


def state_of(t: Training) -> dict:
    """What a stage keeps of a Training (tensors and plain values only: read back with weights_only=True)."""
    test = t.test
    pr = None if test.pr_curve is None else {k: torch.as_tensor(v) for k, v in test.pr_curve.items()}
    return {
        "net": t.module.net.state_dict(), "noise": t.module.noise.state_dict(), "epochs": t.epochs,
        "val_nll": t.val_nll, "images_per_s": t.images_per_s, "device": t.device,
        "test": {"test_error": test.test_error, "confusion": torch.as_tensor(test.confusion),
                 "inlier_ap": test.inlier_ap, "pr_curve": pr},
    }


def unreadable(path: Path) -> bool:
    """A checkpoint that cannot be read as tensors and plain values (cut short by a kill, or a pickle that
    would run code: never run, set aside like a cut one). Lightning reads it so too (torch's default)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return False
    except Exception:  # noqa: BLE001 -- torch raises several kinds for a cut file (EOFError, RuntimeError, ...)
        return True


# selection -> (the validation metric, its better direction)
MONITORS = {"nll": ("val/nll", "min"), "accuracy": ("val/acc", "max")}


def build_callbacks(spec: Spec, checkpoints: Path, early_stopping: bool, selection: str = "nll") -> list:
    """Progress bar; a checkpoint after every epoch (last.ckpt: model, Q, optimiser and schedule, so a
    killed or requeued training resumes where it stopped); with early stopping, the best epoch's too (by
    ``selection``), and a stop after ``patience`` epochs without a better one (patience null: no stop)."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    cbs = []
    if spec.trainer.get("enable_progress_bar", True):
        cbs.append(RichProgressBar(leave=True))
    if early_stopping:  # first: trainer.checkpoint_callback, whose "best" is tested
        monitor, mode = MONITORS[selection]
        if spec.patience is not None:
            cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=spec.patience))
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
