"""Loading a sweep: every ``results.json`` under a folder (or, without any, the lines of its
``runs.jsonl``) into one DataFrame, the frame every table and figure reads (``load_sweep``). Several
sources join: a sweep run in parts on several machines is a committed report's ``runs.jsonl`` and the new
parts' folders; a run found in two sources is kept once, from the first."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import schema_defaults
from ..identity import cell_config
from ..record import RESULTS_FILE, SAME_AS

MATRICES = ("Q_true", "Q", "confusion", "pr_curve")


def curve(row: pd.Series) -> str:
    """The curve a run belongs to, by the record's names: its Q estimator's ``q`` and "+es" when the net was
    early-stopped (figures select and colour curves by this, never by a display label)."""
    return str(row["q"]) + ("+es" if row.get("early_stopping") else "")


def method(row: pd.Series) -> str:
    """How tables and legends name a run's curve: its Q estimator's label, and whether it was early-stopped."""
    label = row.get("q_label")
    name = label if isinstance(label, str) and label else row["q"]
    return name + (" + early stopping" if row.get("early_stopping") else "")


# What the tables read of a record, and of what type (config may be absent: an empty one)
SHAPES = {"q": str, "dataset": str, "noise": str, "seed": int, "level": (int, float), "matrix": (str, type(None)),
          "test_error": (int, float, type(None)), "config": dict, "protocol": (dict, type(None)),
          "provenance": (dict, type(None))}
NEEDED = SHAPES.keys() - {"config", "protocol", "provenance"}
DEFAULTS = schema_defaults()  # a key at its default is the same cell whether a record has it or not
RUNS_FILE = "runs.jsonl"  # the report's compact copy of every record, beside the figures: redrawn from it
IDENTITY = ("seed", "q", "dataset", "noise", "matrix", "level", "train_size", "early_stopping", "outlier_ratio")


def _is(value, kinds) -> bool:
    """isinstance, where a bool is none of SHAPES' kinds (JSON's true is not a seed or a level)."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def _files(root: Path) -> list[Path]:
    """What a source holds: every results.json below a folder (regular files: a FIFO of that name would
    hang the read); without any, the folder's runs.jsonl; a .jsonl file itself."""
    if root.is_file():
        return [root]
    paths = sorted(p for p in root.rglob(RESULTS_FILE) if p.is_file())
    if paths:
        return paths
    return [root / RUNS_FILE] if (root / RUNS_FILE).is_file() else []


def _records(path: Path):
    """(where, text) of a results.json, or of each line of a .jsonl (``where`` naming its line); text is a
    callable for a results.json, an exception for a .jsonl that cannot be read."""
    if path.name == RESULTS_FILE:
        return [(path, path.read_text)]
    try:
        lines = path.read_text().splitlines()
    except (ValueError, OSError) as e:  # bytes that are not UTF-8, a file it may not read
        return [(path, e)]
    return [(f"{path}:{i}", line) for i, line in enumerate(lines, 1)]


def _machine(record: dict) -> str:
    """The CPU (and its kernels' instruction set) a record was trained on, as its provenance names it, and
    the device when it is not the CPU."""
    prov = record.get("provenance") or {}
    names = [str(prov[k]) for k in ("cpu", "cpu_capability") if prov.get(k)]
    names += [f"with {record['device']}"] if record.get("device") not in (None, "cpu") else []
    return " ".join(names)


def _parse(where, text) -> tuple[dict, dict] | str:
    """(record, config) of one run's result, or the one line that says why it is left out."""
    try:
        if isinstance(text, Exception):
            raise text
        r = json.loads(text() if callable(text) else text)
    except (ValueError, OSError) as e:  # malformed JSON, bytes that are not UTF-8, a file gone
        return f"unreadable result {where}: {e}"
    missing = sorted(NEEDED - r.keys()) if isinstance(r, dict) else []
    if not isinstance(r, dict) or missing:
        return f"left out {where}: not a run's record{f' (no {missing})' if missing else ''}"
    cfg = r.pop("config", {}) or {}
    odd = [k for k, kinds in SHAPES.items() if not _is(r.get(k) if k != "config" else cfg, kinds)]
    odd += [] if _is((cfg.get("trainer") if isinstance(cfg, dict) else None), (dict, type(None))) else ["trainer"]
    if odd:  # a record of another shape (a string config, a q that is not a name): not this project's
        return f"left out {where}: not a run's record ({', '.join(odd)} of another type)"
    if not isinstance(r["test_error"], (int, float)) or not np.isfinite(r["test_error"]):
        return f"left out, test error {r['test_error']} (a diverged run): {where}"
    if (cfg.get("trainer") or {}).get("fast_dev_run"):
        return f"left out, a fast_dev_run (one batch, not a result): {where}"
    return r, cfg


def load_sweep(*roots: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per finished run, warnings about failed, unfinished or unreadable runs), from one sweep
    folder or several (a folder, or a report's runs.jsonl). A run in two sources (the same config and seed)
    is kept once, from the source given first, with a warning when its numbers differ; runs of several
    machines (their provenance's CPU) are told of: numbers vary by machine. ``df.attrs["left_out"]``: the
    files (resolved) some record of which is in no row and was not found in another source.

    The frame every table and figure reads, one row per run:
      the record's scalars   q, q_label, q_estimated, dataset, noise, matrix, level, seed, test_error,
                             q_error, early_stopping, train_size, outlier_ratio, ... (docs/results_schema.md;
                             its matrices Q_true, Q, confusion, pr_curve only in ``_record``)
      cfg.<key>              every config field, flattened
      run_dir                the folder of its results.json (or of the runs.jsonl it came from)
      method                 its label in tables and legends (``method``), with " [protocol]" when the sweep
                             holds several protocols and " (dataset)" when it holds several data sets
      curve                  its curve by record names (``curve``), with "#protocol" and "@dataset" likewise:
                             figures select and colour by this, never by a label
      protocol               the peer protocol's name, "shared" for the shared one
      _record, _config       the whole record and its config (the report's runs.jsonl is written from them)
      _cell                  its cell's identity without the seed (runs of one table row must share it)
    """
    rows, problems, seen, left_out, roots = [], [], {}, set(), [Path(root) for root in roots]
    files = {}  # each file read once, wherever a source holds it (a folder and its runs.jsonl, a source twice)
    for file in (file for root in roots for file in _files(root)):
        files.setdefault(file.resolve(), file)
    for path, where, text in ((file, where, text) for file in files.values() for where, text in _records(file)):
        parsed = _parse(where, text)
        if isinstance(parsed, str):  # not a run's result: said, and the file keeps it (cli refuses to rewrite it)
            problems.append(parsed)
            left_out.add(path.resolve())
            continue
        r, cfg = parsed
        r["_cell"] = json.dumps({k: v for k, v in cell_config(cfg, DEFAULTS).items() if k != "seed"}, sort_keys=True)
        run = json.dumps([r["_cell"], *(r.get(k) for k in IDENTITY)], default=str)  # a config-less record: its row
        if run in seen:  # the run again (a report's copy of a folder's record): the first one read is kept
            first, error = seen[run]
            if error != r["test_error"]:
                problems.append(f"left out {where}: the run of {first} again, with test error {r['test_error']} "
                                f"where that has {error} (kept)")
            continue
        seen[run] = (where, r["test_error"])
        row = {k: v for k, v in r.items() if k not in MATRICES}
        row.update({f"cfg.{k}": v for k, v in pd.json_normalize(cfg, sep=".").iloc[0].items()} if cfg else {})
        row["run_dir"] = str(path.parent)
        row["_record"] = r
        row["_config"] = cfg
        rows.append(row)
    for hydra_dir in sorted({h for root in roots if root.is_dir() for h in root.rglob(".hydra")}):
        if not (hydra_dir.parent / RESULTS_FILE).exists() and not (hydra_dir.parent / SAME_AS).exists():
            problems.append(f"failed or unfinished run (no {RESULTS_FILE}): {hydra_dir.parent}")
    df = pd.DataFrame(rows)
    machines = Counter(map(_machine, df["_record"] if len(df) else []))
    unknown = machines.pop("", 0)  # records older than their provenance's CPU
    if len(machines) > 1:  # CPUs differ in their kernels: a table mixing them is not one machine's numbers
        counts = [f"{n} on {m}" for m, n in sorted(machines.items(), key=lambda mn: (-mn[1], mn[0]))]
        counts += [f"{unknown} on a machine their records do not name"] if unknown else []
        problems.append(f"runs of {len(machines)} machines ({'; '.join(counts)}): test errors vary by machine "
                        "within the seed-to-seed spread; compare runs of one machine")
    if len(df):
        df["method"] = df.apply(method, axis=1)
        df["curve"] = df.apply(curve, axis=1)
        df["protocol"] = df["_record"].map(lambda r: (r.get("protocol") or {}).get("name") or "shared")
        if df["protocol"].nunique() > 1:  # one curve per protocol: an estimator under two protocols is two rows
            df["method"] = df["method"] + " [" + df["protocol"] + "]"
            df["curve"] = df["curve"] + "#" + df["protocol"]
        if df["dataset"].nunique() > 1:  # one curve per data set: never two data sets joined into one line
            df["method"] = df["method"] + " (" + df["dataset"].astype(str) + ")"
            df["curve"] = df["curve"] + "@" + df["dataset"].astype(str)
        df["_cell"] = df["_record"].map(lambda r: r["_cell"])
        keys = [k for k in ("dataset", "noise", "matrix", "method", "level", "train_size", "outlier_ratio") if k in df]
        for cell, g in df.groupby(keys, dropna=False):
            if g["_cell"].nunique() > 1:  # same row of the table, runs that differ in more than the seed
                problems.append(f"runs that differ in more than their seed share the table's row {cell}: "
                                f"{', '.join(sorted(g['run_dir']))}")
    df.attrs["left_out"] = left_out  # the files some record of which is in no row (none found elsewhere)
    return df, problems
