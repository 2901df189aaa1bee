"""What a training needs around the math: loggers, callbacks, W&B's mode, the machine's share under a
launcher, and ``Trainers``, the factory through which a Q estimator trains a fresh base net + noise
layer with a Lightning Trainer built from the config, as many times as it needs.

Every training starts from the same seeded weights (``pl.seed_everything(cfg.seed)`` first), so two
trainings of the same layer on the same data give the same numbers, and every training is tested on the
clean test set (its best checkpoint with early stopping), which costs one pass over the test images.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import FolderDataModule, TensorDataModule
from .datasets import Split
from .errors import Diverged
from .layers import NoiseLayer
from .module import NoisyLabelModule
from .results import write_atomic

log = logging.getLogger(__name__)


def wandb_online() -> bool:
    """W&B logs online only with an API key (WANDB_API_KEY, or a ~/.netrc entry for the server) and a
    reachable server (WANDB_BASE_URL, a self-hosted one too; default api.wandb.ai); otherwise offline
    (`wandb sync` later)."""
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return False
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not os.environ.get("WANDB_API_KEY") and not (netrc.is_file() and host in netrc.read_text()):
        return False
    import socket

    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def _cell_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or None


def sweep_cell():
    """Hydra's config of this job when it is one cell of a sweep (-m), else None (a single run, or no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


def build_loggers(cfg: DictConfig, run_name: str, training: int = 1) -> list:
    """The loggers of conf/logger (several with ``logger=[csv,tensorboard]``). A W&B run is named after
    its sweep cell, or ``run_name`` for a single run, and logs offline without a key or a network. The
    second and later trainings of a run (an estimator's stages, candidates, folds) log to their own
    version folder (csv/training2/...), so none erases another's metrics."""
    loggers = []
    for name, lcfg in (cfg.logger or {}).items():
        if training > 1 and "version" in lcfg:
            lcfg = OmegaConf.merge(lcfg, {"version": f"training{training}"})
        if "wandb" in name:
            if not wandb_online():
                lcfg = OmegaConf.merge(lcfg, {"offline": True})
                log.info("W&B: no API key or no network, logging offline under %s", cfg.run_dir)
            if lcfg.get("name") is None or _cell_name():
                lcfg = OmegaConf.merge(lcfg, {"name": _cell_name() or run_name})
        loggers.append(instantiate(lcfg))
    return loggers


def build_callbacks(cfg: DictConfig, checkpoints: Path, early_stopping: bool) -> list:
    """Progress bar; a checkpoint after every epoch (last.ckpt: model, Q, optimiser and schedule, so a
    killed or requeued training resumes where it stopped); with early stopping, the best epoch's too."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    cbs = []
    if cfg.trainer.get("enable_progress_bar", True):
        cbs.append(RichProgressBar(leave=True))
    if early_stopping:  # first: trainer.checkpoint_callback, whose "best" is tested
        cbs.append(EarlyStopping(monitor="val/nll", mode="min", patience=cfg.patience))
        cbs.append(ModelCheckpoint(dirpath=checkpoints, monitor="val/nll", mode="min", filename="best-{epoch}"))
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


def finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run: the next training in this process must start its own, not reuse it."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


# The memory layout of a model when data.channels_last is null: channels-last for the models measured
# faster in it with `python scripts/bench.py --model M [trainer=gpu]` (img/s channels-last / NCHW). On the
# 2-core CPU: convnet_small 1.42 (median of six runs), convnet_cifar 1.12. On an H100 (bf16): convnet_cifar
# 1.11, convnet_small 0.86 (NCHW stays); resnet18 and alexnet, not measured, take the usual choice for tensor
# cores.
CHANNELS_LAST = {
    "cpu": ("noisy_convnet.models.SmallConvNet", "noisy_convnet.models.ConvNetCifar"),
    "cuda": ("noisy_convnet.models.ConvNetCifar", "noisy_convnet.models.resnet18", "noisy_convnet.models.alexnet"),
}


def training_device(cfg: DictConfig) -> torch.device:
    """Where the Trainer will train: its accelerator, or a GPU when there is one under "auto"."""
    accelerator = str((cfg.trainer or {}).get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def channels_last(cfg: DictConfig) -> bool:
    """data.channels_last when set; else what CHANNELS_LAST says for this device and model."""
    if cfg.data.channels_last is not None:
        return bool(cfg.data.channels_last)
    return cfg.model.get("_target_") in CHANNELS_LAST.get(training_device(cfg).type, ())


def joblib_jobs(launcher: DictConfig | dict, cores: int) -> int | None:
    """How many cells the joblib launcher runs at once on this machine (joblib: n_jobs -1 = one per core);
    None for another launcher."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    n_jobs = launcher.get("n_jobs", -1)
    return cores if n_jobs is None or n_jobs < 1 else min(n_jobs, cores)


def share_machine(cfg: DictConfig, launcher: DictConfig | dict, cores: int) -> None:
    """Cells run in parallel by the joblib launcher share the machine instead of each taking all of it:
    cores / jobs CPU threads each and, on a GPU, 1 / jobs of its memory each (several small trainings on
    one GPU). Values the user set are kept."""
    jobs = joblib_jobs(launcher, cores)
    if jobs is None:
        return
    if cfg.threads is None:
        cfg.threads = max(1, cores // jobs)
    if cfg.get("gpu_fraction") is None:
        cfg.gpu_fraction = round(1.0 / jobs, 4)


SWEEP_PID = "NOISY_CONVNET_SWEEP_PID"  # the command's process; set by cli.entry, inherited by joblib's workers


def stop_with_sweep(launcher: DictConfig | dict, every_s: float = 1.0) -> None:
    """In a joblib worker (a child of the sweep's process): exit as soon as the sweep's process is gone
    (killed with SIGKILL, which joblib's workers otherwise outlive, training on for nobody). The killed
    cell's checkpoints stay for the rerun."""
    import threading

    sweep_pid = int(os.environ.get(SWEEP_PID, "0"))
    if joblib_jobs(launcher, 1) is None or sweep_pid in (0, os.getpid()) or os.getppid() != sweep_pid:
        return  # not a worker of this machine's sweep (a SLURM job, or joblib running cells in-process)

    def watch():
        while os.getppid() == sweep_pid:
            time.sleep(every_s)
        os._exit(1)

    if not any(t.name == "stop_with_sweep" for t in threading.enumerate()):
        threading.Thread(target=watch, name="stop_with_sweep", daemon=True).start()


@dataclass
class Training:
    """One trained base net with its noise layer, tested on the clean test set."""

    module: NoisyLabelModule
    epochs: int  # epochs run (fewer than max_epochs when early stopping ended it)
    val_nll: float | None  # the noisy validation NLL of the tested model (the best epoch's with early stopping)
    images_per_s: float  # training images per second of fit()
    device: str
    test: dict  # test_error, confusion (Eq. 4) and, with outliers, inlier_ap and pr_curve
    probs: np.ndarray | None = None  # p(noisy | x) on the images asked for (N x K, float64), in their order
    seconds: float = 0.0  # wall time of this training (fit, test and predictions)


class Trainers:
    """Builds and trains a fresh base net + noise layer + Lightning Trainer from the config, on any
    training/validation split, and tests it on the run's clean test set."""

    def __init__(self, cfg: DictConfig, shape: tuple[int, int, int], test: Split, q_true: np.ndarray,
                 num_classes: int, run_dir: Path, run_name: str, hparams: dict | None = None):  # fmt: skip
        self.cfg, self.shape, self.test_split, self.q_true = cfg, shape, test, q_true
        self.hparams = hparams or {}  # logged to every logger: the flattened config, q and noise by name
        self.num_classes, self.run_dir, self.run_name = num_classes, Path(run_dir), run_name
        self.count = 0  # trainings so far
        self.channels_last = channels_last(cfg)

    def datamodule(self, train: Split, val: Split, predict: Split | None = None) -> pl.LightningDataModule:
        d, seed, test, cl = self.cfg.data, self.cfg.seed, self.test_split, self.channels_last
        if train.source is None:  # in memory: tensors on the device
            return TensorDataModule(train, val, test, d.batch_size, d.shift, seed, cl, predict)
        return FolderDataModule(train, val, test, d.batch_size, d.num_workers, seed, cl, predict)

    def fit(self, layer: NoiseLayer, train: Split, val: Split, early_stopping: bool | None = None,
            predict: Split | None = None) -> Training:  # fmt: skip
        """Train a fresh base net (with as many outputs as the layer has classes) through ``layer`` on
        ``train``, watching ``val``; early stopping as configured unless given; then test it (the best
        epoch's weights with early stopping) and, given ``predict``, compute p(noisy | x) on its images.
        Raises Diverged when the loss or Q is not finite at the end."""
        cfg, t_start = self.cfg, time.perf_counter()
        es = cfg.early_stopping if early_stopping is None else early_stopping
        self.count += 1
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # every training starts from the same weights
        dm = self.datamodule(train, val, predict)
        net = instantiate(cfg.model, in_shape=self.shape, num_classes=layer.num_classes)
        module = NoisyLabelModule(
            net, layer, instantiate(cfg.optim.optimizer), instantiate(cfg.optim.get("scheduler")),
            q_true=self.q_true, num_classes=self.num_classes, channels_last=self.channels_last,
        )  # fmt: skip
        checkpoints = self.run_dir / "checkpoints" / f"training{self.count}"
        loggers = build_loggers(cfg, self.run_name, self.count)
        for lg in loggers:  # a dashboard groups and filters runs by any of these keys
            lg.log_hyperparams({**self.hparams, "training": self.count})
        callbacks = build_callbacks(cfg, checkpoints, es)
        if loggers:
            from pytorch_lightning.callbacks import LearningRateMonitor

            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        trainer: pl.Trainer = instantiate(
            cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(self.run_dir),
            enable_checkpointing=True,
        )  # fmt: skip
        last = checkpoints / "last.ckpt"  # a training killed or requeued half-way: resume where it stopped
        done = checkpoints / "done.json"  # a training that had ended: its fit-time numbers, kept
        if last.is_file():
            log.info("training %d resumes from %s", self.count, last)
        t_fit = time.perf_counter()
        trainer.fit(module, dm, ckpt_path=str(last) if last.is_file() else None)
        fit_s = time.perf_counter() - t_fit
        epochs = trainer.current_epoch
        if done.is_file() and last.is_file():  # fit restored the end state and had nothing left to do
            ended = json.loads(done.read_text())
            val_nll, images_per_s = ended["val_nll"], ended["images_per_s"]
        else:
            _check_finite(trainer, layer, self.count)
            score = trainer.checkpoint_callback.best_model_score if es else trainer.callback_metrics.get("val/nll")
            val_nll, images_per_s = None if score is None else float(score), len(train) * epochs / fit_s
            if not trainer.fast_dev_run:
                write_atomic(done, json.dumps({"val_nll": val_nll, "images_per_s": images_per_s}))
        best = es and not trainer.fast_dev_run  # a one-batch check keeps no checkpoint
        trainer.test(module, dm, ckpt_path="best" if best else None, verbose=False)  # loads the best weights
        probs = None
        if predict is not None:
            probs = torch.cat(trainer.predict(module, dm, return_predictions=True)).cpu().double().numpy()
        finish_wandb(trainer)
        return Training(module, epochs, val_nll, images_per_s, str(trainer.strategy.root_device),
                        module.test_results, probs, time.perf_counter() - t_start)  # fmt: skip


def _check_finite(trainer: pl.Trainer, layer: NoiseLayer, count: int) -> None:
    loss = trainer.callback_metrics.get("train/loss")
    q = layer.q()
    if (loss is not None and not torch.isfinite(loss).all()) or (q is not None and not torch.isfinite(q).all()):
        raise Diverged(
            f"training {count} diverged: its loss or Q is not finite after epoch {trainer.current_epoch} "
            "(lower the learning rates or the regulariser weights)"
        )
