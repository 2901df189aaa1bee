"""What makes two cells of a sweep the same cell: defined here and nowhere else.

A cell's identity is its ``CellKey``: a hash of the part of its resolved config that decides its numbers
(``cell_config``: every key but the ``VOLATILE`` ones, which say where and how a run is watched, and
``data.root`` where it only says where verified files lie (``root_is_location``), and
without the schema's keys that hold their default, so that spelling a default out, or an option added
after a cell ran, changes nothing) and a hash of the input files its config names (a noise matrix, a label
file: ``input_hashes``). It decides (the folder side in cell.py, ``Cell``)

- resume: a cell whose folder holds a results.json with the same key is finished;
- twins: a finished cell of the same sweep with the same key under another folder name, found by a marker
  file named after the key (``.cell-<id>``), so a cell never re-reads its siblings' records;
- stale inputs: the same config with a changed input file is another cell (the key's ``inputs``);
- a run folder holding another config's results is refused;
- a killed run's checkpoints resume only the same key;
- the folder name: Hydra's ``exclude_keys`` are the ``VOLATILE`` keys and Hydra's own (``exclude_keys``),
  and values holding a path are written without nesting folders (``cell_dir``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from .errors import UserError
from .record import to_jsonable

# Config keys that say where and how a run is watched, not what it computes: a finished cell is reused
# whatever they are (a rerun may log elsewhere, or run with another launcher).
VOLATILE = (
    "run_dir",
    "logger",
    "threads",
    "gpu_fraction",
    "sweep",
    "trainer.enable_progress_bar",
    "data.download",
    "verbose",
)
# Overrides that choose a preset or where and how Hydra launches: never part of a cell's folder name.
HYDRA_ONLY = ("experiment", "hydra.sweep.dir", "hydra.run.dir", "hydra/launcher", "hydra.launcher.n_jobs")
# Keys added to a group's YAML after cells ran, at the value that computes what those cells computed: left out
# of a cell's identity at that value, so finished cells stay finished (the schema's own keys need no entry:
# their defaults are left out already).
ADDED = {("q", "start"): "estimated", ("q", "optimizer"): None}
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
    if isinstance(out.get("data"), dict) and root_is_location(out["data"]):
        out["data"].pop("root", None)
    for (group, key), value in ADDED.items():
        node = out.get(group)
        if isinstance(node, dict) and key in node and node[key] == value:
            node.pop(key)
    return out if defaults is None else _without_defaults(out, to_jsonable(defaults))


def root_is_location(data: dict) -> bool:
    """Whether ``data.root`` says only where a data set's files lie, not what they hold: a torchvision set's
    files pass their MD5 check (the official sums for the MNISTs, torchvision's for the others) wherever they
    are, so the same cell read from another folder (another DATA_ROOT, another machine's cache) is the same
    cell. An image folder's root names its images (its listing is an input), and files read with
    data.verify=false are whatever lies there: for those the root stays part of the cell."""
    return data.get("name") != "imagefolder" and data.get("verify", True) is not False


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
    """sha256 of every existing file the config's noise and q nodes name (a noise matrix, a label file, a
    feature file), and the listing (every file's path, size and modification time) of every folder they
    name (an outlier folder), of an image folder, and of the files a torchvision set read with
    data.verify=false reads: a cell whose inputs changed is not the same cell."""
    out = {}
    for key, value in _strings({"noise": config.get("noise") or {}, "q": config.get("q") or {}}):
        p = Path(value)
        if len(value) >= 4096 or value in out:
            continue
        try:
            if p.suffix and p.is_file():
                out[value] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif ("/" in value or value.startswith(".")) and p.is_dir():  # a path, not a name such as "classes"
                out[value] = _listing(p)
        except OSError as e:  # a file or folder the user may not read
            raise UserError(f"{key}: cannot read '{e.filename or value}' ({e.strerror}); give a file this user "
                            "can read") from None
    data = config.get("data") or {}
    if data.get("name") == "imagefolder" and data.get("root") and Path(data["root"]).is_dir():
        out[str(data["root"])] = _listing(Path(data["root"]))
    if not root_is_location(data) and data.get("name") != "imagefolder":  # unverified files: whatever lies there
        from .datasets import READS
        from .fetch import default_root

        root = Path(data.get("root") or default_root())
        for part in READS.get(data.get("name"), ()):
            p = root / part
            if p.exists():
                out[str(p)] = _listing(p) if p.is_dir() else _listing_file(p)
    return out


def _listing_file(path: Path) -> str:
    st = path.stat()
    return f"listing:{st.st_size}:{st.st_mtime_ns}"


def _listing(root: Path) -> str:
    import os

    h = hashlib.sha256()
    for folder, _dirs, files in sorted(os.walk(root)):
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "listing:" + h.hexdigest()


def _strings(node, key: str = ""):
    """Each string of a nested config node, with its dotted key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(node, str):
        yield key, node


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
        """The key of a results.json under today's schema defaults, computed from its config and input hashes
        (its stored ``cell`` is what it was under the defaults of its day: a default changed since must not
        make an old cell pass for one at the new default)."""
        if not isinstance(record.get("config"), dict):
            return None
        inputs = record.get("input_hashes")
        return cls(_sha(cell_config(record["config"], defaults)), _sha(inputs if isinstance(inputs, dict) else {}))

    def to_dict(self) -> dict:
        return {"config": self.config, "inputs": self.inputs}
