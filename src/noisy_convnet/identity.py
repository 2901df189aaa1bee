"""What makes two cells of a sweep the same cell: defined here and nowhere else.

A cell's identity is its ``CellKey``: a hash of the part of its resolved config that decides its numbers
(``cell_config``: every key but the ``VOLATILE`` ones, which say where and how a run is watched, and
without the schema's keys that hold their default, so that spelling a default out, or an option added
after a cell ran, changes nothing) and a hash of the input files its config names (a noise matrix, a label
file: ``input_hashes``). It decides

- resume: a cell whose folder holds a results.json with the same key is finished (``finished``);
- twins: a finished cell of the same sweep with the same key under another folder name (``finished_beside``),
  found by a marker file named after the key (``.cell-<id>``), so a cell never re-reads its siblings' records;
- stale inputs: the same config with a changed input file is another cell (the key's ``inputs``);
- a run folder holding another config's results is refused (``other_config``);
- a killed run's checkpoints resume only the same key (``claim_checkpoints``);
- the folder name: Hydra's ``exclude_keys`` are the ``VOLATILE`` keys and Hydra's own (``exclude_keys``),
  and values holding a path are written without nesting folders (``cell_dir``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from .files import write_atomic
from .record import RESULTS_FILE, Record, read, to_jsonable

# Config keys that say where and how a run is watched, not what it computes: a finished cell is reused
# whatever they are (a rerun may log elsewhere, or run with another launcher).
VOLATILE = ("run_dir", "logger", "threads", "gpu_fraction", "sweep", "trainer.enable_progress_bar")
# Overrides that choose a preset or where and how Hydra launches: never part of a cell's folder name.
HYDRA_ONLY = ("experiment", "hydra.sweep.dir", "hydra.run.dir", "hydra/launcher", "hydra.launcher.n_jobs")
MARKER = ".cell-"  # + CellKey.id: an empty file beside a finished cell's results.json
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems


def exclude_keys() -> list[str]:
    """Hydra's override_dirname.exclude_keys (conf/hydra/default.yaml): the keys that do not name a cell."""
    return [*HYDRA_ONLY, *VOLATILE]


def cell_dir(name: str) -> str:
    """A sweep cell's folder from its overrides as Hydra joins them: one folder, never nested (a value's
    "/" is written %2F, a "%" %25, so two values never share a name), and over NAME_MAX bytes cut short
    and ended by a hash of the whole name, so the same cell keeps the same folder."""
    flat = name.replace("%", "%25").replace("/", "%2F")
    raw = flat.encode()
    if len(raw) > NAME_MAX:
        flat = raw[:200].decode(errors="ignore") + "..." + hashlib.sha256(raw).hexdigest()[:16]
    return flat


OmegaConf.register_new_resolver("cell_dir", cell_dir, replace=True)
OmegaConf.register_new_resolver("cell_exclude_keys", exclude_keys, replace=True)


def cell_config(config: dict, defaults: dict | None = None) -> dict:
    """The part of a resolved config that decides a run's numbers: VOLATILE keys removed and, given the
    schema's ``defaults``, its keys that hold their default value removed too."""
    out = json.loads(json.dumps(to_jsonable(config)))  # deep copy, same rounding as a stored record
    for key in VOLATILE:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out if defaults is None else _without_defaults(out, to_jsonable(defaults))


def _without_defaults(config: dict, defaults: dict) -> dict:
    out = {}
    for key, value in config.items():
        if key in defaults and value == defaults[key]:
            continue
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            value = _without_defaults(value, defaults[key])
        out[key] = value
    return out


def input_hashes(config: dict) -> dict:
    """sha256 of every existing file the config's noise node names (a noise matrix, a label file): a cell
    whose input file changed is not the same cell."""
    out = {}
    for value in _strings(config.get("noise") or {}):
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


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CellKey:
    """A cell's identity: ``config`` hashes its cell_config, ``inputs`` its input files' hashes."""

    config: str
    inputs: str

    @property
    def id(self) -> str:
        return _sha([self.config, self.inputs])[:40]

    @classmethod
    def of(cls, config: dict, defaults: dict, inputs: dict | None = None) -> CellKey:
        """The key of a resolved config; ``inputs``: its input_hashes when already read (else read here)."""
        inputs = input_hashes(config) if inputs is None else inputs
        return cls(_sha(cell_config(config, defaults)), _sha(inputs))

    @classmethod
    def stored(cls, record: dict, defaults: dict) -> CellKey | None:
        """The key a results.json was written under (computed from its config for records that predate it)."""
        cell = record.get("cell")
        if isinstance(cell, dict) and isinstance(cell.get("config"), str) and isinstance(cell.get("inputs"), str):
            return cls(cell["config"], cell["inputs"])
        if not isinstance(record.get("config"), dict):
            return None
        inputs = record.get("input_hashes")
        return cls(_sha(cell_config(record["config"], defaults)), _sha(inputs if isinstance(inputs, dict) else {}))

    def to_dict(self) -> dict:
        return {"config": self.config, "inputs": self.inputs}


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
                    ) -> tuple[Path, Record] | None:  # fmt: skip
    """A finished cell of the sweep with this very key in another folder (the same cell named by other
    overrides, e.g. with a default spelled out): (its folder, its record), else None. Found by its marker;
    a finished cell written before markers existed gets one here, once."""
    sweep_dir, here = Path(sweep_dir), Path(run_dir).resolve()
    for results in sweep_dir.glob(f"*/{RESULTS_FILE}"):  # records that predate markers: mark them once
        if not any(results.parent.glob(f"{MARKER}*")):
            record = _stored(results.parent)
            old = None if record is None else CellKey.stored(record, defaults)
            if old is not None:
                mark(results.parent, old)
    for marker in sorted(sweep_dir.glob(f"*/{MARKER}{key.id}")):
        if marker.parent.resolve() != here:
            record = finished(marker.parent, key, defaults)
            if record is not None:
                return marker.parent, record
    return None


def other_config(run_dir: str | Path, key: CellKey, defaults: dict) -> bool:
    """run_dir holds a results.json of another cell config (not this one with changed input files): a run
    must not overwrite another's results."""
    record = _stored(Path(run_dir))
    stored = None if record is None else CellKey.stored(record, defaults)
    return stored is not None and stored.config != key.config


def claim_checkpoints(run_dir: str | Path, key: CellKey) -> None:
    """A killed run's checkpoints (run_dir/checkpoints) resume only the same cell key: any others are
    deleted before the run trains."""
    ckpt = Path(run_dir) / "checkpoints"
    fingerprint = ckpt / "fingerprint.json"
    stamp = json.dumps({"cell": key.id})
    if ckpt.exists() and (not fingerprint.is_file() or fingerprint.read_text() != stamp):
        shutil.rmtree(ckpt)
    if not fingerprint.is_file():
        write_atomic(fingerprint, stamp)
