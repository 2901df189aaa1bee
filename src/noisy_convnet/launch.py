"""What a run needs to know of the launcher around it: whether it is a sweep's cell, its share of the
machine under the joblib launcher, and the watchdog that stops a joblib worker with its killed sweep."""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig


def sweep_cell():
    """Hydra's config of this job when it is one cell of a sweep (-m), else None (a single run, or no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


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
