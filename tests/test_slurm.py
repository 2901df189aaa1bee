"""Sweeps on a real SLURM (issue 33), no mock: run where a cluster answers ``sinfo``; CI starts a one-node one
from Debian's packages (``scripts/slurm_local.sh install && scripts/slurm_local.sh start``, as root), and on
a machine without SLURM these tests are skipped with that reason.

Each cell is one SLURM job (hydra/launcher=slurm through submitit): its records equal the same cells run
here; a cell requeued mid-training (``scontrol requeue``), or stopped at its time limit and requeued by
submitit, resumes from its last checkpoint and ends with the test error and q_error of an uninterrupted run;
a failed cell makes the sweep's exit status say so."""

import json
import shutil
import subprocess
import sys
import threading
import time

import pytest

from noisy_convnet.record import RESULTS_FILE

from .conftest import ROOT


def _why_no_cluster() -> str | None:
    how = "as root: scripts/slurm_local.sh install && scripts/slurm_local.sh start (CI does), then make test"
    if shutil.which("sinfo") is None:
        return f"no SLURM here (no sinfo); {how}"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo does not answer ({e}); {how}"
    if p.returncode != 0 or not {"idle", "mixed", "allocated"} & set(p.stdout.split()):
        return f"no SLURM node up (sinfo: {(p.stdout + p.stderr).strip()[:200]}); {how}"
    return None


WHY = _why_no_cluster()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]

CELL = ["data=digits", "logger=none", "trainer.enable_progress_bar=false", "threads=1", "seed=0"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


def _sweep(sweep, *args, slurm=True, timeout=600, wait=True):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *CELL, *(SLURM if slurm else []), *args,
           f"hydra.sweep.dir={sweep}"]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _records(sweep) -> dict:
    out = {}
    for path in sweep.glob(f"*/{RESULTS_FILE}"):
        r = json.loads(path.read_text())
        out[path.parent.name] = (r["test_error"], r["q_error"])
    return out


def _said(sweep, text: str) -> bool:
    """Whether a cell's log (its job's output, its Hydra log) says ``text``."""
    return any(text in p.read_text(errors="replace") for p in sweep.rglob("*") if p.is_file() and
               p.suffix in (".out", ".err", ".log"))


def test_a_slurm_sweep_gives_the_records_of_the_same_sweep_run_here(tmp_path):
    cells = ["q=none,learned", "trainer.max_epochs=2"]
    p = _sweep(tmp_path / "slurm", *cells)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "Bypassing sacct" not in p.stdout + p.stderr  # no accounting: no poll
    here = _sweep(tmp_path / "here", *cells, slurm=False)
    assert here.returncode == 0, here.stderr[-3000:]
    slurm, local = _records(tmp_path / "slurm"), _records(tmp_path / "here")
    assert len(slurm) == 2 and slurm == local


class _StartRequeuedAtOnce:
    """SLURM holds a requeued job for 2 minutes (reason BeginTime) before it may start again; while the test
    runs, such a job of this sweep is released at once (``scontrol update StartTime=now``)."""

    def __init__(self, sweep):
        self.sweep, self.stop = sweep, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self.stop.wait(1.0):
            folder = self.sweep / ".submitit"
            jobs = [d.name for d in folder.iterdir() if d.name.isdigit()] if folder.is_dir() else []
            for job in jobs:
                reason = subprocess.run(["squeue", "-h", "-o", "%r", "-j", job], capture_output=True, text=True)
                if reason.stdout.strip() == "BeginTime":
                    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _requeue_when_checkpointed(proc, sweep, after_s: float = 2.0) -> None:
    """``scontrol requeue`` the sweep's job once its cell has written a checkpoint."""
    deadline = time.time() + 300
    while not list(sweep.glob("*/checkpoints/*/last.ckpt")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.5)
    time.sleep(after_s)
    jobs = [d.name for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]  # this sweep's, not another test's
    assert len(jobs) == 1, jobs
    subprocess.run(["scontrol", "requeue", jobs[0]], check=True, timeout=30)


def test_a_requeued_cell_resumes_and_ends_equal_to_an_uninterrupted_run(tmp_path):
    cell = ["q=learned", "trainer.max_epochs=40"]
    with _StartRequeuedAtOnce(tmp_path / "slurm"):
        proc = _sweep(tmp_path / "slurm", *cell, wait=False)
        _requeue_when_checkpointed(proc, tmp_path / "slurm")
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert _said(tmp_path / "slurm", "resumes from")  # it did not start over
    here = _sweep(tmp_path / "here", *cell, slurm=False)
    assert here.returncode == 0, here.stderr[-3000:]
    slurm, local = _records(tmp_path / "slurm"), _records(tmp_path / "here")
    assert len(slurm) == 1 and slurm == local


def test_a_cell_at_its_time_limit_is_requeued_and_finishes(tmp_path):
    """timeout_min=1, submitit's signal 40 s before it: the cell is stopped after 20 s, requeued
    (max_num_timeout), and resumes to the end, equal to an uninterrupted run."""
    cell = ["q=learned", "trainer.max_epochs=400"]  # longer than 20 s on the digits
    with _StartRequeuedAtOnce(tmp_path / "slurm"):
        p = _sweep(tmp_path / "slurm", *cell, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=40",
                   "hydra.launcher.max_num_timeout=5")
    assert p.returncode == 0, p.stderr[-3000:]
    assert _said(tmp_path / "slurm", "resumes from")
    here = _sweep(tmp_path / "here", *cell, slurm=False)
    assert here.returncode == 0, here.stderr[-3000:]
    assert _records(tmp_path / "slurm") == _records(tmp_path / "here") and len(_records(tmp_path / "here")) == 1


def test_a_failed_cell_is_the_sweeps_exit_status(tmp_path):
    p = _sweep(tmp_path, "level=1.5,0.3", "trainer.max_epochs=1")
    assert p.returncode == 2, p.stderr[-3000:]
    summary = [line for line in p.stderr.splitlines() if line.startswith("error: sweep:")]
    assert len(summary) == 1 and "1 cell(s) failed" in summary[0] and "level=1.5" in summary[0]
    assert len(_records(tmp_path)) == 1


@pytest.mark.parametrize("ask, key", [("hydra.launcher.partition=nope", "partition"),
                                      ("hydra.launcher.mem_gb=100000", "mem_gb"),
                                      ("trainer=gpu", "gpus_per_node")])
def test_a_request_slurm_refuses_is_one_line_naming_the_key(tmp_path, ask, key):
    p = _sweep(tmp_path, ask, "trainer.max_epochs=1")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: hydra.launcher.{key}: SLURM refused"), p.stderr
