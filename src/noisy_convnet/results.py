"""The result record of one run (``Record``): JSON conversion, atomic writing and the resume check.

A run writes ``results.json`` only when it succeeded, through a temporary file in the same directory and
``os.replace`` (atomic on POSIX), so a crash half-way leaves no file that could be taken for a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"
SAME_AS = "same_as.json"  # in a sweep cell's folder: this cell's results are those of another folder
# Config keys that say where and how a run is watched, not what it computes: a finished cell is reused
# whatever they are (a rerun may log elsewhere, or run with another launcher).
VOLATILE = ("run_dir", "logger", "threads", "gpu_fraction", "sweep", "trainer.enable_progress_bar")


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
    trainings: int  # nets trained for this run
    train_images_per_s: float
    device: str
    threads: int  # torch CPU threads (float sums, and so the numbers, depend on it)
    channels_last: bool  # the memory layout it trained in
    provenance: dict  # the project's commit (from a checkout) and the versions of what computed it
    wall_s: float
    config: dict
    inlier_ap: float | None = None  # outlier noise: average precision of telling test inliers from outliers
    pr_curve: dict | None = None  # its precision-recall curve
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("fields")
        return {**{k: v for k, v in d.items() if k not in ("config", "wall_s")}, **extra, "wall_s": d["wall_s"],
                "input_hashes": input_hashes(d["config"].get("noise") or {}), "config": d["config"]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        names = {f.name for f in fields(cls)} - {"fields"}
        known = {k: v for k, v in d.items() if k in names}
        old = {"q_label": d.get("q", ""), "q_estimated": False, "trainings": 1, "threads": 0, "channels_last": False,
               "provenance": {}}  # fmt: skip
        return cls(**{**old, **known},
                   fields={k: v for k, v in d.items() if k not in names})  # fmt: skip


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


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write through a temporary file in the same directory and os.replace: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it, not mkstemp's owner-only 0600
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_array(path: str | Path, array: np.ndarray) -> None:
    """np.save, written atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(path, buf.getvalue())


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


def cell_config(config: dict) -> dict:
    """The part of a resolved config that decides a run's numbers (VOLATILE keys removed)."""
    out = json.loads(json.dumps(to_jsonable(config)))  # deep copy, same rounding as a stored record
    for key in VOLATILE:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _without_new_defaults(current: dict, stored: dict, defaults: dict) -> dict:
    """current without the keys that the stored config lacks and that still hold their default: options
    added to the schema after a cell ran (which keep the old behaviour at their default) do not make the
    cell run again."""
    out = {}
    for key, value in current.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if key not in stored:
            if isinstance(defaults, dict) and key in defaults and value == default:
                continue
            out[key] = value
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            out[key] = _without_new_defaults(value, stored[key], default if isinstance(default, dict) else {})
        else:
            out[key] = value
    return out


def input_hashes(node: dict) -> dict:
    """sha256 of every existing file a config's string values name (a noise matrix, a label file): a cell
    whose input file changed is not the same cell."""
    import hashlib

    out = {}
    for value in _strings(node):
        p = Path(value)
        if len(value) < 4096 and p.suffix and p.is_file():
            out[value] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _stored_config(run_dir: str | Path) -> dict | None:
    try:
        record = read(Path(run_dir) / RESULTS_FILE)
    except (OSError, ValueError):
        return None
    return record.get("config") if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


def claim_checkpoints(run_dir: str | Path, config: dict) -> None:
    """A killed run's checkpoints (run_dir/checkpoints) resume only the same cell config with the same
    input files: any others are deleted before the run trains."""
    import shutil

    ckpt = Path(run_dir) / "checkpoints"
    stamp = json.dumps(
        {"config": cell_config(config), "inputs": input_hashes(config.get("noise") or {})}, sort_keys=True
    )
    mark = ckpt / "fingerprint.json"
    if ckpt.exists() and (not mark.is_file() or mark.read_text() != stamp):
        shutil.rmtree(ckpt)
    if not mark.is_file():
        write_atomic(mark, stamp)


def other_config(run_dir: str | Path, config: dict, defaults: dict | None = None) -> bool:
    """run_dir holds a results.json of another cell config (not this one with changed input files): a run
    must not overwrite another's results."""
    stored = _stored_config(run_dir)
    if stored is None:
        return False
    current = cell_config(config)
    if defaults is not None:
        current = _without_new_defaults(current, cell_config(stored), to_jsonable(defaults))
    return cell_config(stored) != current


@contextmanager
def cell_lock(run_dir: str | Path):
    """Holds run_dir/.lock while a run computes its cell: a second process given the same cell (an identical
    sweep started beside the first) waits here, then finds the cell finished and skips it. The lock dies
    with its process (a killed run leaves none); POSIX locks work on NFS too."""
    import errno
    import fcntl
    import logging

    log = logging.getLogger(__name__)
    with open(Path(run_dir) / ".lock", "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):  # held by another process
                _wait_for_lock(f, run_dir, log)
            else:  # a file system without locks (ENOLCK): run unlocked rather than not at all
                log.warning("cannot lock %s (%s): two identical runs started at once would both train", run_dir, e)
        yield  # closing the file releases the lock


def _wait_for_lock(f, run_dir: str | Path, log, every_s: float = 1.0, say_every_s: float = 600.0) -> None:
    import fcntl
    import time

    waited = 0.0
    while True:
        if waited % say_every_s < every_s:  # at once, then every ten minutes: a stuck holder is seen
            log.info("another process is running %s: waiting for it (%.0f min so far)", run_dir, waited / 60)
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            time.sleep(every_s)
            waited += every_s


def finished_beside(sweep_dir: str | Path, run_dir: str | Path, config: dict, defaults: dict | None = None,
                    inputs: dict | None = None) -> tuple[Path, Record] | None:  # fmt: skip
    """A finished cell of the sweep with this very config in another folder (the same cell named by other
    overrides, e.g. with a default spelled out): (its folder, its record), else None. The run's own folder
    then gets SAME_AS, which points there."""
    here = Path(run_dir).resolve()
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULTS_FILE}")):
        if path.parent != here:
            record = finished(path.parent, config, defaults, inputs)
            if record is not None:
                return path.parent, record
    return None


def finished(run_dir: str | Path, config: dict, defaults: dict | None = None, inputs: dict | None = None
             ) -> Record | None:  # fmt: skip
    """The stored record if run_dir holds a results.json made with the same cell config, else None
    (no file, an unreadable one, or one from another config: the cell runs and replaces it). ``defaults``
    (the schema's) lets a cell made before an option existed count as the same when that option is at
    its default; ``inputs`` is the config's input_hashes when the caller has already read them."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        record = read(path)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None
    if inputs is None:
        inputs = input_hashes(config.get("noise") or {})
    if record.get("input_hashes", {}) != inputs:
        return None  # an input file changed since
    stored, current = cell_config(record.get("config") or {}), cell_config(config)
    if defaults is not None:
        current = _without_new_defaults(current, stored, to_jsonable(defaults))
    return Record.from_dict(record) if stored == current else None
