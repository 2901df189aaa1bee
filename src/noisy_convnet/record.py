"""The result record of one run (``Record``), its JSON form and ``results.json``.

A run writes ``results.json`` only when it succeeded, atomically (files.write_atomic), so a crash half-way
leaves no file that could be taken for a result. docs/results_schema.md lists the fields.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .files import write_atomic

RESULTS_FILE = "results.json"
SAME_AS = "same_as.json"  # in a sweep cell's folder: this cell's results are those of another folder


@dataclass(frozen=True)
class StageUse:
    """A shared stage a run used: its name, the key of its inputs, and whether this run trained it
    (False: reused from an earlier run with the same inputs)."""

    name: str
    key: str
    trained: bool


@dataclass
class Record:
    """What one run measured; ``results.json`` holds its fields, with ``fields`` (the noise model's and the
    Q estimator's own, e.g. outlier counts or a candidate selection) flattened beside the others."""

    dataset: str
    num_classes: int  # K, the classes the test scores
    train_size: int  # noisy training images (validation slice included); the inliers with outlier noise
    noise: str  # the noise model
    matrix: str | None  # the kind (or file) of Q*
    level: float  # the noise level (the realised one for a label file)
    q: str  # the Q estimator's name
    q_label: str  # how figures name it
    q_estimated: bool  # Q estimated from the data (drawn beside Q* in Fig. 2c)
    seed: int
    early_stopping: bool
    actual_noise: float  # share of training labels that differ from the true ones
    Q_true: Any  # Q* (q_ji = p(noisy = j | true = i))
    Q: Any  # the Q used at the end, or None without a noise layer
    q_error: float | None  # mean over columns of sum_j |Q - Q*| (noise.q_error)
    test_error: float  # clean test error of the base net (inliers only with outlier noise)
    confusion: Any  # Eq. 4: mean base-net softmax per true test class
    val_nll: float | None  # noisy validation NLL of the tested model
    epochs: int
    trainings: int  # nets trained by this run (a reused stage is not trained here)
    train_images_per_s: float
    device: str
    threads: int  # torch CPU threads (float sums, and so the numbers, depend on it)
    channels_last: bool  # the memory layout it trained in
    provenance: dict  # the project's commit (from a checkout) and the versions of what computed it
    wall_s: float
    config: dict
    pool_size: int | None = None  # the data set's training pool (the images train_size draws from)
    test_size: int | None = None  # its clean test set
    inlier_ap: float | None = None  # outlier noise: average precision of telling test inliers from outliers
    pr_curve: dict | None = None  # its precision-recall curve
    stages: list[StageUse] = field(default_factory=list)  # shared stages used, trained here or reused
    protocol: dict | None = None  # its name and every training's network, optimiser, epochs and tested epoch
    input_hashes: dict = field(default_factory=dict)  # sha256 of the files the config names
    cell: dict | None = None  # the cell's identity (identity.CellKey): what a rerun compares
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("fields")
        tail = {k: d.pop(k) for k in ("wall_s", "input_hashes", "cell", "config")}
        return {**d, **extra, **tail}

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        names = {f.name for f in fields(cls)} - {"fields"}
        known = {k: v for k, v in d.items() if k in names}
        old = {"q_label": d.get("q", ""), "q_estimated": False, "trainings": 1, "threads": 0, "channels_last": False,
               "provenance": {}}
        stages = [StageUse(**s) for s in known.pop("stages", None) or [] if isinstance(s, dict)]
        return cls(**{**old, **known}, stages=stages, fields={k: v for k, v in d.items() if k not in names})


def to_jsonable(x: Any) -> Any:
    """numpy arrays and scalars to lists and Python numbers, recursively."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float):
        return float(f"{x:.10g}")  # 10 significant digits: a learning rate of 1e-7 stays 1e-7
    return x


def dumps(d: dict) -> str:
    """One line per field (a matrix as one line of nested lists), the config indented: compact at K = 1000
    and still readable."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, indent=2 if k == 'config' else None)}" for k, v in d.items()]
    return "{\n" + ",\n".join(line.replace("\n", "\n  ") for line in lines) + "\n}\n"


def write(run_dir: str | Path, record: Record) -> Path:
    path = Path(run_dir) / RESULTS_FILE
    write_atomic(path, dumps(to_jsonable(record.to_dict())))
    return path


def read(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


@functools.cache
def provenance() -> dict:
    """What made these numbers: the project's git commit when run from a checkout (None otherwise) with a
    hash of the package's uncommitted changes (None when clean), the versions of Python, torch,
    Lightning and Hydra, and the CPU with the SIMD kernels torch uses on it. Read once per process."""
    import platform
    import subprocess

    import hydra
    import pytorch_lightning as pl
    import torch

    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        commit = git.stdout.strip() if git.returncode == 0 else None
        diff = subprocess.run(["git", "diff", "HEAD", "--", "."], cwd=Path(__file__).parent, capture_output=True,
                              timeout=10).stdout if commit else b""
    except (OSError, subprocess.SubprocessError):
        commit, diff = None, b""
    changes = hashlib.sha256(diff).hexdigest()[:16] if diff.strip() else None
    return {"commit": commit, "uncommitted": changes, "python": platform.python_version(), "torch": torch.__version__,
            "lightning": pl.__version__, "hydra": hydra.__version__, "cpu": _cpu(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **from_lock(Path(__file__).resolve().parents[2] / LOCK_FILE)}


LOCK_FILE = "requirements.lock"


def from_lock(lock: Path) -> dict:
    """Whether the installed libraries are the lock's (``make install``): ``locked`` True when every pinned
    version is the installed one, False with ``unlocked`` naming each that is not ("numpy": "2.4.6 locked,
    2.5.0 installed"), None when there is no lock beside the package (a ``pip install .`` of the ranges)."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    if not lock.is_file():
        return {"locked": None}
    differ = {}
    for name, pinned in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", lock.read_text(), re.M):
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "none"
        if installed != pinned:
            differ[name] = f"{pinned} locked, {installed} installed"
    return {"locked": not differ, **({"unlocked": differ} if differ else {})}


def _cpu() -> str:
    """The processor's model name (its SIMD kernels change float sums: numbers are per machine)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
