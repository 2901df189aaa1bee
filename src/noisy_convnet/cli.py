"""The command line: ``noisy-convnet [-m] key=value ...`` (also ``python -m noisy_convnet`` and
``python train.py`` in a checkout), a thin ``@hydra.main`` over ``train.run``.

A user error (bad level, unknown data set or option, malformed matrix file, ...) ends with one line on
stderr naming the key and what is allowed, and exit status 2; Hydra's own composition errors are turned
into that line too (hydra_errors.user_error). In a sweep, a bad cell says so in one line and the others run.
A refused run or cell leaves no folder (the one Hydra made for it goes when it holds only Hydra's files).
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

from .config import check_values
from .errors import Diverged, UserError
from .files import LOCK
from .hydra_errors import user_error
from .launch import STATUS, SWEEP_PID, cell_failed, share_machine, stop_with_sweep, sweep_cell


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    share_machine(cfg, hc.launcher, os.cpu_count() or 1)
    stop_with_sweep(hc.launcher)
    try:
        check_values(cfg)  # before torch and Lightning are imported: a mistake answered at Hydra's speed
        from .train import run

        record = run(cfg)
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


def _drop_unused_folder(hc, cfg: DictConfig) -> None:
    """A refused run leaves no folder of its own: a sweep's cell folder (named by its overrides) or a single
    run's default one (outputs/runs/<date>/<time>, new to the microsecond) goes when it holds only what Hydra
    wrote at the job's start (.hydra/, the job's log) and the cell's lock, taken first and the folder listed
    again under it. A folder the user named (hydra.run.dir=; a cell's with run_dir= elsewhere), the working
    directory or one above it, or one holding anything else (an earlier run's files, same_as.json) stays."""
    import fcntl

    folder, cell = Path(hc.runtime.output_dir).resolve(), sweep_cell() is not None
    if cell:  # its lock is the cell's only where the cell runs (run_dir= may move it elsewhere)
        own = cfg.get("run_dir") is None or Path(cfg.run_dir).resolve() == folder
    else:  # the default folder is this process's alone (named to the microsecond); one the user named is not
        own = not any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)
    if not own or folder == Path.cwd().resolve() or folder in Path.cwd().resolve().parents:
        return
    hydra_files = {hc.output_subdir, f"{hc.job.name}.log", LOCK}
    if not folder.is_dir() or not {p.name for p in folder.iterdir()} <= hydra_files:
        return
    with open(folder / LOCK, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another process of this cell is at work in it
        if {p.name for p in folder.iterdir()} <= hydra_files:  # still only those, now that no one else writes
            shutil.rmtree(folder, ignore_errors=True)
    if not cell:  # the run's date folder, if it held only this run
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
