"""The command line: ``noisy-convnet [-m] key=value ...`` (also ``python -m noisy_convnet`` and
``python train.py`` in a checkout), a thin ``@hydra.main`` over ``train.run``.

A user error (bad level, unknown data set or option, malformed matrix file, ...) ends with one line on
stderr naming the key and what is allowed, and exit status 2; Hydra's own composition errors are turned
into that line too (hydra_errors.user_error). In a sweep, a bad cell says so in one line and the others run.
A refused run or cell leaves no folder of its own (one the user named stays): it goes when it holds only
Hydra's files.
A training that diverges ends with one line and exit status 1 (in a sweep: one line, and the other cells run).
A sweep with failed cells ends with one line naming them, exit status 2 (all user mistakes) or 1.
"""

import contextlib
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import check
from .errors import Diverged, UserError
from .files import LOCK, try_lock
from .hydra_errors import user_error
from .launch import STATUS, SWEEP_PID, cell_failed, share_machine, stop_with_sweep, sweep_cell


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    share_machine(cfg, hc.launcher, os.cpu_count() or 1)
    stop_with_sweep(hc.launcher)
    try:
        checked = check(cfg)  # before the training is imported: most mistakes are answered before torch loads
        from .train import run

        record = run(checked)
    except UserError as e:
        _drop_unused_folder(hc, cfg)
        if sweep_cell() is not None:  # one bad cell: say which, write nothing, let the others run
            print(f"error: cell {hc.job.override_dirname or hc.job.num}: {e}", file=sys.stderr)
            cell_failed(hc, "user", str(e))
            return float("nan")
        _exit(e, 2)
    except Diverged as e:  # not a result: fail the run loudly, without a traceback; in a sweep, this cell only
        if sweep_cell() is not None:
            print(f"error: cell {hc.job.override_dirname or hc.job.num}: {e}", file=sys.stderr)
            cell_failed(hc, "diverged", str(e))
            return float("nan")
        _exit(e, 1)
    where = cfg.get("run_dir") or hc.runtime.output_dir  # this cell's folder (a skipped cell's record names its own)
    print(f"test error {record.test_error:.4f}  results: {where}/results.json")
    return record.test_error


def _own_folder(hc, cfg: DictConfig) -> Path | None:
    """The folder Hydra made for this job when it is the run's own: a sweep's cell folder (named by its
    overrides, the run's where run_dir= does not move it) or a single run's default one (outputs/runs/<date>/
    <time>, new to the microsecond). None for a folder the user named (hydra.run.dir=), the command's working
    directory or one above it."""
    folder, start = Path(hc.runtime.output_dir).resolve(), Path(hc.runtime.cwd).resolve()
    if sweep_cell() is not None:
        own = cfg.get("run_dir") is None or Path(cfg.run_dir).resolve() == folder
    else:
        own = not any(o.lstrip("+").startswith("hydra.run.dir=") for o in hc.overrides.hydra)
    return folder if own and folder != start and folder not in start.parents else None


def _drop_unused_folder(hc, cfg: DictConfig) -> None:
    """A refused run leaves no folder of its own (``_own_folder``): it goes when it holds only what Hydra
    wrote at the job's start (.hydra/, the job's log) and the cell's lock, taken first and the folder listed
    again under it; one holding anything else (an earlier run's files, same_as.json) stays."""
    folder = _own_folder(hc, cfg)
    hydra_files = {hc.output_subdir, f"{hc.job.name}.log", LOCK}
    if folder is None or not folder.is_dir() or not {p.name for p in folder.iterdir()} <= hydra_files:
        return
    with try_lock(folder / LOCK) as locked:
        if not locked:  # another process of this cell is at work in it
            return
        if {p.name for p in folder.iterdir()} <= hydra_files:  # still only those, now that no one else writes
            os.chdir(hc.runtime.cwd)  # not from within it (hydra.job.chdir=true); Hydra restores its own
            shutil.rmtree(folder, ignore_errors=True)
    if sweep_cell() is None:  # the run's date folder, if it held only this run
        with contextlib.suppress(OSError):
            folder.parent.rmdir()


def _exit(e: Exception, status: int):
    print(f"error: {e}", file=sys.stderr)
    sys.exit(status)


def entry() -> None:
    """The console script: Hydra re-raises its composition errors (HYDRA_FULL_ERROR) so that they end in
    one line here; any other exception is a bug and keeps its traceback."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    if "" not in sys.path and os.getcwd() not in sys.path:  # q._target_=my_module.MyQ finds ./my_module.py, as
        sys.path.insert(0, os.getcwd())  # python train.py and python -m noisy_convnet do
    os.environ[SWEEP_PID] = str(os.getpid())  # joblib's workers stop when this process is gone
    try:
        main()
    except Exception as e:
        err = user_error(e, sys.argv[1:])
        if err is None:
            raise
        _exit(err, 2)
    if STATUS["exit"]:  # a sweep with failed cells (launch.SweepStatus said which)
        sys.exit(STATUS["exit"])
