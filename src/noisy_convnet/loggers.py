"""The loggers of conf/logger (CSV, TensorBoard, W&B) for each training of a run, W&B's mode (online only
with a key and a reachable server, offline otherwise), and what the libraries may print (``quiet``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The libraries' lines a run does not print unless verbose=true: Lightning's banners and tips (its rank_zero
# info: "GPU available", "TPU available", the litlogger advertisement, "Loading `train_dataloader`", "`Trainer.fit`
# stopped"), and the deprecation notices of the pinned libraries about each other (not the project's to fix).
CHATTY = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
          "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")  # fmt: skip
LIBRARY_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                    # the best epoch is tested: the first ModelCheckpoint is the best one's (factory.build_callbacks)
                    r"`\.test\(ckpt_path=\"best\"\)` is called with Trainer configured with multiple")  # fmt: skip


def quiet(verbose: bool) -> None:
    """Silence the libraries' chatter (verbose=false, the default); verbose=true lets it through again. The
    project's own lines (what a run did, where it wrote, the progress bars) are not touched."""
    import warnings

    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for message in LIBRARY_WARNINGS:
        warnings.filterwarnings("default" if verbose else "ignore", message=message)


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


def finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run: the next training in this process must start its own, not reuse it."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()
