"""The loggers of conf/logger (CSV, TensorBoard, W&B) for each training of a run, W&B's mode (online only
with a key and a reachable server, offline otherwise), and what the libraries may print (``quiet``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# The libraries' lines a run does not print unless verbose=true: Lightning's banners and tips (its rank_zero
# info: "GPU available", "TPU available", the litlogger advertisement, "Loading `train_dataloader`", "`Trainer.fit`
# stopped"), and the deprecation notices of the pinned libraries about each other (not the project's to fix).
CHATTY = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
          "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
LIBRARY_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                    # the best epoch is tested: the first ModelCheckpoint is the best one's (fitting.build_callbacks)
                    r"`\.test\(ckpt_path=\"best\"\)` is called with Trainer configured with multiple",
                    # where SLURM is installed (its srun found), outside a SLURM job: Lightning's advice to use srun
                    r"The `srun` command is available on your system but is not used")


def quiet(verbose: bool) -> None:
    """Silence the libraries' chatter (verbose=false, the default); verbose=true lets it through again. The
    project's own lines (what a run did, where it wrote, the progress bars) are not touched."""
    import warnings

    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # W&B's telemetry exporter, which says so when the server (a proxy, not W&B's) refuses its batches
    logging.getLogger("opentelemetry").setLevel(logging.INFO if verbose else logging.CRITICAL)
    for message in LIBRARY_WARNINGS:
        warnings.filterwarnings("default" if verbose else "ignore", message=message)


def _wandb_server() -> tuple[str, int, str]:
    from urllib.parse import urlparse

    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    url = urlparse(base)
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443), base


def wandb_online() -> bool:
    """W&B logs online only with an API key (WANDB_API_KEY, or a ~/.netrc entry for the server) and a
    reachable server (WANDB_BASE_URL, a self-hosted one too; default api.wandb.ai); otherwise offline
    (`wandb sync` later). WANDB_MODE=online asks for online: without a key or a server, one line (UserError)
    instead of a run that quietly logs nowhere the user looks."""
    asked = os.environ.get("WANDB_MODE")
    if asked in ("offline", "disabled", "dryrun"):
        return False
    host, port, base = _wandb_server()
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not os.environ.get("WANDB_API_KEY") and not (netrc.is_file() and host in netrc.read_text()):
        if asked == "online":
            raise UserError("WANDB_MODE: online, but no API key (WANDB_API_KEY or `wandb login`); log in, or "
                            "unset WANDB_MODE to log offline and `wandb sync` later")
        return False
    why = _unreachable(host, port)
    if why is None:
        return True
    if asked == "online":
        raise UserError(f"WANDB_MODE: online, but the W&B server {base} cannot be reached ({why}); unset "
                        "WANDB_MODE to log offline and `wandb sync` later")
    return False


PROBE_TTL_S = 300  # how long a probe's answer holds: a server back after a hiccup is seen again
_PROBES: dict[tuple[str, int], tuple[float, str | None]] = {}  # (host, port) -> (when, why unreachable)


def _unreachable(host: str, port: int) -> str | None:
    """Why the server cannot be reached, or None: asked at most once per PROBE_TTL_S per process and server
    (behind a firewall the probe waits its 3 s timeout, and a sweep's worker runs many trainings)."""
    import socket

    now = time.monotonic()
    seen = _PROBES.get((host, port))
    if seen is not None and now - seen[0] < PROBE_TTL_S:
        return seen[1]
    try:
        socket.create_connection((host, port), timeout=3).close()
        why = None
    except OSError as e:
        why = str(e)
    _PROBES[(host, port)] = (now, why)
    return why


def start_wandb(start: Callable[[bool], T]) -> T:
    """``start(offline)`` a W&B run: offline when wandb_online says so; online, and if the server answers but
    refuses the run (a proxy, a server that is not W&B's, a key it does not know: wandb's CommError or
    AuthenticationError), one warning and the run goes on offline, never a traceback; with WANDB_MODE=online
    the refusal is one line (UserError) instead."""
    import wandb

    if not wandb_online():
        log.info("W&B: no API key or no network, logging offline")
        return start(True)
    try:
        return start(False)
    except wandb.errors.Error as e:
        base = _wandb_server()[2]
        why = f"{type(e).__name__}: {' '.join(str(e).split(': {')[0].split())[:160]}"  # not the page it returned
        if os.environ.get("WANDB_MODE") == "online":
            raise UserError(f"WANDB_MODE: online, but the W&B server {base} refused the run ({why}); check the "
                            "key and WANDB_BASE_URL, or unset WANDB_MODE to log offline") from None
        log.warning("W&B: the server %s refused the run (%s); logging offline, `wandb sync` it later", base, why)
        wandb.teardown()  # the failed online start's state, which the offline start would reuse
        return start(True)


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
            if lcfg.get("name") is None or _cell_name():
                lcfg = OmegaConf.merge(lcfg, {"name": _cell_name() or run_name})
            loggers.append(start_wandb(lambda offline, lcfg=lcfg: _wandb_logger(lcfg, offline)))
        else:
            loggers.append(instantiate(lcfg))
    return loggers


def _wandb_logger(lcfg: DictConfig, offline: bool):
    """A WandbLogger whose run is started now (``experiment``), so that a server refusing it is known here."""
    if offline:
        lcfg = OmegaConf.merge(lcfg, {"offline": True})
    logger = instantiate(lcfg)
    logger.experiment  # noqa: B018 (starts the run)
    return logger


def finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run: the next training in this process must start its own, not reuse it."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()
