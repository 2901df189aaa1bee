"""A run's folder as a resumable cell of a sweep: the one place that claims it, resumes it, marks it and
writes it (identity.py says what makes two cells the same; this module what a cell's folder holds).

``train.run`` uses it as::

    cell = Cell(run_dir, key, defaults, sweep_dir)
    with cell.claimed():              # the same cell started twice at once: one waits, then finds it done
        done = cell.finished()        # this folder's record, or a twin's beside it (then same_as.json here)
        if done is None:
            cell.prepare()            # refuse a folder of another config; keep only this cell's checkpoints
            ...                       # train, into cell.stages (the sweep's shared stages)
            cell.complete(record)     # model.pt, results.json (atomically), the marker; checkpoints go

A finished cell is one whose folder holds a results.json with the same key (``finished``); a twin is a
finished cell of the same sweep with that key under another folder name (``finished_beside``), found by a
marker file named after the key (``.cell-<id>``), so a cell never re-reads its siblings' records. A run
folder holding another config's results is refused (``other_config``); a killed run's checkpoints resume
only the same key (``claim_checkpoints``) and go once its record is written (``drop_checkpoints``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .files import LOCK, lock, write_atomic
from .identity import CellKey
from .record import RESULTS_FILE, SAME_AS, Record, read
from .record import write as write_record
from .stages import StageStore

MARKER = ".cell-"  # + CellKey.id: an empty file beside a finished cell's results.json
CHECKPOINTS = "checkpoints"  # run_dir/checkpoints/training<N>/ and fingerprint.json: the run's own, nothing else
STAGES, LABELS, INDICES, Q_PNG, MODEL = "stages", "noisy_labels.npy", "indices.npy", "Q.png", "model.pt"
# What a run writes in its folder (True: a folder): a file or folder of another kind there is refused.
WRITTEN = {CHECKPOINTS: True, STAGES: True, RESULTS_FILE: False, LABELS: False, INDICES: False, Q_PNG: False,
           MODEL: False}
log = logging.getLogger(__name__)


class Cell:
    """One run's folder, keyed by its ``CellKey``; ``sweep_dir``: its sweep's folder when it is a cell of one."""

    def __init__(self, run_dir: str | Path, key: CellKey, defaults: dict, sweep_dir: Path | None = None):
        self.dir, self.key, self.defaults, self.sweep_dir = Path(run_dir), key, defaults, sweep_dir
        self.trainings: list = []  # the run's trainings so far (its Trainers' protocol): none, nothing was trained

    @property
    def stages(self) -> Path:
        """Where its shared stages live: the sweep's stages/ (shared by its cells), or its own folder's."""
        return (self.sweep_dir if self.sweep_dir is not None else self.dir) / STAGES

    @contextmanager
    def claimed(self):
        """Held from the look-up to the record: a second process with the same folder waits here."""
        with lock(self.dir / LOCK, f"the cell {self.dir}"):
            yield self

    def finished(self) -> Record | None:
        """Its record when it ran already: here, or as a twin beside it in the sweep (then same_as.json here
        names the twin's results)."""
        done = finished(self.dir, self.key, self.defaults)
        if done is not None:
            log.info("already finished, skipped: %s", self.dir / RESULTS_FILE)
            return done
        beside = None if self.sweep_dir is None else finished_beside(self.sweep_dir, self.dir, self.key, self.defaults)
        if beside is None:
            return None
        log.info("already finished, skipped: %s is this cell", beside[0] / RESULTS_FILE)
        write_atomic(self.dir / SAME_AS, json.dumps({"results": str(beside[0] / RESULTS_FILE)}))
        return beside[1]

    def prepare(self) -> None:
        """Before it trains: a folder holding another config's record, or a file where it writes a folder (or
        the reverse), is refused in one line; a killed run's checkpoints stay only if they are this cell's."""
        if other_config(self.dir, self.key, self.defaults):
            raise UserError(f"run_dir: '{self.dir}' holds a results.json of another config (or not written by this "
                            "project); give another hydra.run.dir (or delete that file)")
        for name, folder in WRITTEN.items():  # what this run writes there must be free for it
            path = self.dir / name
            if path.exists() and path.is_dir() != folder:
                raise UserError(f"run_dir: '{path}' is a {'folder' if path.is_dir() else 'file'}, where a run writes "
                                f"its {'folder' if folder else 'file'} of that name; give another hydra.run.dir")
        claim_checkpoints(self.dir, self.key)

    def unprepare(self) -> None:
        """A run refused before its first training (a check that needs the data): the fingerprint ``prepare``
        wrote and the labels it kept go; after a training began, or with a killed run's checkpoints, all stays."""
        ckpt = self.dir / CHECKPOINTS
        if not self.trainings and ckpt.is_dir() and {p.name for p in ckpt.iterdir()} == {"fingerprint.json"}:
            drop_checkpoints(self.dir)
            for name in (LABELS, INDICES):
                (self.dir / name).unlink(missing_ok=True)

    def complete(self, record: Record, model: bytes | None = None) -> Path:
        """Its end: the tested net's weights (``model``, written first: a record means both), the record
        (atomically), the marker, then its checkpoints removed and, for a single run, its stages (they
        served its resume only; a user's files there stay). Returns the record's path."""
        if model is not None:
            write_atomic(self.dir / MODEL, model)
        path = write_record(self.dir, record)
        mark(self.dir, self.key)  # after the record: a twin under another name finds it by this file
        drop_checkpoints(self.dir)  # this run's checkpoints go, nothing else
        if self.sweep_dir is None:
            StageStore(self.stages).clear()
        return path


def _stored(run_dir: Path) -> dict | None:
    try:
        record = read(run_dir / RESULTS_FILE)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def mark(run_dir: str | Path, key: CellKey) -> None:
    """The marker of a finished cell (after its results.json): twins find it by name, reading nothing."""
    write_atomic(Path(run_dir) / f"{MARKER}{key.id}", "")


def finished(run_dir: str | Path, key: CellKey, defaults: dict) -> Record | None:
    """The stored record if run_dir holds a results.json of this very cell, else None (no file, an
    unreadable one, or one of another config or other input files: the cell runs)."""
    record = _stored(Path(run_dir))
    if record is None or CellKey.stored(record, defaults) != key:
        return None
    return Record.from_dict(record)


def finished_beside(sweep_dir: str | Path, run_dir: str | Path, key: CellKey, defaults: dict
                    ) -> tuple[Path, Record] | None:
    """A finished cell of the sweep with this very key in another folder (the same cell named by other
    overrides, e.g. with a default spelled out): (its folder, its record), else None. Found by its marker;
    a finished cell written before markers existed gets one here, once."""
    sweep_dir, here, unmarked = Path(sweep_dir), Path(run_dir).resolve(), set()
    for results in sweep_dir.glob(f"*/{RESULTS_FILE}"):  # records that predate markers: mark them once
        if not any(results.parent.glob(f"{MARKER}*")):
            unmarked.add(results.parent)
            record = _stored(results.parent)
            old = None if record is None else CellKey.stored(record, defaults)
            if old is not None:
                try:
                    mark(results.parent, old)
                except OSError:  # a folder this process may not write (an archive): it is read, not marked
                    pass
    for folder in sorted({m.parent for m in sweep_dir.glob(f"*/{MARKER}{key.id}")} | unmarked):
        if folder.resolve() != here:
            record = finished(folder, key, defaults)  # the record itself decides (a marker may be stale)
            if record is not None:
                return folder, record
    return None


def other_config(run_dir: str | Path, key: CellKey, defaults: dict) -> bool:
    """run_dir holds a results.json that is not this cell's (another config's, not this one with changed
    input files; or a file this project did not write): a run must not overwrite it. A one-batch check's
    record (trainer.fast_dev_run) is not a result and gives way."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return False
    record = _stored(Path(run_dir))
    stored = None if record is None else CellKey.stored(record, defaults)
    if stored is None:
        return True  # someone else's file
    return stored.config != key.config and not ((record.get("config") or {}).get("trainer") or {}).get("fast_dev_run")



def drop_checkpoints(run_dir: str | Path) -> None:
    """Delete the checkpoints this project writes in run_dir (training<N>/ folders and the fingerprint),
    and the checkpoints folder only if nothing else is left in it: a user's own files there stay."""
    ckpt = Path(run_dir) / CHECKPOINTS
    if not (ckpt / "fingerprint.json").is_file():  # not this project's folder: nothing in it is touched
        return
    for p in ckpt.iterdir():
        if p.is_dir() and not p.is_symlink() and re.fullmatch(r"training\d+(\.unreadable-[\d-]+)?", p.name):
            shutil.rmtree(p)
    (ckpt / "fingerprint.json").unlink(missing_ok=True)
    if not any(ckpt.iterdir()):
        ckpt.rmdir()


def claim_checkpoints(run_dir: str | Path, key: CellKey) -> None:
    """A killed run's checkpoints (run_dir/checkpoints) resume only the same cell key: any others of this
    project's are deleted before the run trains."""
    ckpt = Path(run_dir) / CHECKPOINTS
    fingerprint = ckpt / "fingerprint.json"
    stamp = json.dumps({"cell": key.id})
    if ckpt.exists() and (not fingerprint.is_file() or fingerprint.read_text() != stamp):
        drop_checkpoints(run_dir)
    if not fingerprint.is_file():
        write_atomic(fingerprint, stamp)
