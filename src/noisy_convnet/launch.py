"""What a run needs to know of the launcher around it: whether it is a sweep's cell, its share of the
machine under the joblib launcher, the watchdog that stops a joblib worker with its killed sweep, and the
sweep's exit status: a cell that fails (a user mistake, a divergence) lets the others run, notes itself in
the sweep's ``.failed/`` folder, and the command ends with one line naming the failed cells and exit status
2 (every failure a user mistake) or 1; a sweep whose cells all succeed exits 0."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_cell():
    """Hydra's config of this job when it is one cell of a sweep (-m), else None (a single run, or no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


def sweep_folder(hc) -> Path:
    """The sweep's folder, absolute: Hydra's sweep.dir from the command's working directory (a job may run
    in another: hydra.job.chdir=true)."""
    return Path(hc.runtime.cwd, hc.sweep.dir).resolve()


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


FAILED = ".failed"  # in a sweep's folder: one file per cell that failed, named by the command's pid and the job
STATUS = {"exit": 0}  # the sweep's exit status, set at its end in the command's own process


def cell_failed(hc, kind: str, message: str) -> None:
    """Note a failed cell (``kind``: "user" for a user mistake, "diverged") for its sweep's summary."""
    from .files import write_atomic

    folder = sweep_folder(hc) / FAILED
    folder.mkdir(parents=True, exist_ok=True)
    note = {"cell": hc.job.override_dirname or str(hc.job.num), "kind": kind, "error": message}
    write_atomic(folder / f"{os.environ.get(SWEEP_PID, os.getpid())}-{hc.job.num}.json", json.dumps(note))


class SweepStatus(Callback):
    """Hydra's callback (conf/hydra/default.yaml) that ends a sweep with its cells' status."""

    def _notes(self, config: DictConfig) -> list[Path]:
        folder = Path(config.hydra.sweep.dir) / FAILED
        return sorted(folder.glob(f"{os.getpid()}-*.json")) if folder.is_dir() else []

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        STATUS["exit"] = 0
        if "slurm" in str(config.hydra.launcher.get("_target_", "")).lower():
            quiet_sacct()
        for old in self._notes(config):  # an earlier command's, under a pid this one reuses
            old.unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = []
        for path in self._notes(config):
            try:
                failed.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                failed.append({"cell": path.stem, "kind": "unknown", "error": "its note cannot be read"})
            path.unlink(missing_ok=True)
        try:
            (Path(config.hydra.sweep.dir) / FAILED).rmdir()
        except OSError:
            pass  # not empty (another command's cells) or not there
        if failed:
            names = "; ".join(f["cell"] for f in failed)
            print(f"error: sweep: {len(failed)} cell(s) failed ({names}); the others ran, their results are kept",
                  file=sys.stderr)
            STATUS["exit"] = 2 if all(f["kind"] == "user" for f in failed) else 1


class _Once(logging.Filter):
    """Lets the first record whose message holds ``text`` through, and none after it."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        seen, self.seen = self.seen, True
        return not seen


def quiet_sacct() -> None:
    """submitit polls ``sacct`` for its jobs' states. On a cluster that keeps no accounting (many small ones)
    every poll fails, and submitit says so in a warning, printed three times per poll through Hydra's
    handlers, beside sacct's own line: there the poll is not made (one line says so), and the jobs' states
    come from their result files, which is all the failing poll left anyway. Elsewhere a failing poll's
    warning is printed once."""
    import subprocess

    try:
        show = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        show = ""
    if "accounting_storage/none" in show:
        from submitit.slurm.slurm import SlurmInfoWatcher

        SlurmInfoWatcher._make_command = lambda self: None  # update() then keeps what it knows: nothing from sacct
        logging.getLogger(__name__).info("SLURM keeps no accounting here: the cells' states come from their result "
                                         "files, not from sacct")
    elif not any(isinstance(f, _Once) for f in logging.getLogger("submitit").filters):
        logging.getLogger("submitit").addFilter(_Once("Bypassing sacct error"))
