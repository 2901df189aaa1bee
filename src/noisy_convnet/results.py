"""The result record of one run: JSON conversion and atomic writing.

A run writes ``results.json`` only when it succeeded, through a temporary file in the same directory and
``os.replace`` (atomic on POSIX), so a crash half-way leaves no file that could be taken for a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"


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
        return round(x, 6)
    return x


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(run_dir: str | Path, record: dict) -> Path:
    path = Path(run_dir) / RESULTS_FILE
    write_atomic(path, json.dumps(to_jsonable(record), indent=1) + "\n")
    return path


def read(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
