"""Shared stages: a training that several estimators need with the same inputs is trained once and reused.

A stage is named by its estimator-side role (``"plain"``: the early-stopped plain net on the noisy labels)
and keyed by a hash of exactly the inputs that decide it (``stage_key``): the images and noisy labels of its
training and validation parts, the test set, the seed, the network, the optimiser, the Trainer's settings
(epochs, precision...), the code (commit, uncommitted changes, library versions), the device and its
thread count, the early-stopping protocol, the batch size, shift and memory layout, the noise
layer it trains through and, for a warm start, the weights it starts from. Where it is watched (loggers,
progress bars) is not an input. A stage lives in ``<root>/<name>-<key>/``
(``root``: the sweep's ``stages/`` folder, or the run folder's for a single run) as ``stage.pt``, written
atomically once its training and test ended; while it trains, its checkpoints live there too (a killed
stage resumes from them, whichever cell runs it next) and its lock makes a second cell wait for it instead
of training it twice (``StageStore.get_or_train``). ``layer_inputs`` and ``split_inputs`` give the noise
layer's and the images' part of the key. ``stage.pt`` holds only tensors and plain values and is read with
``torch.load(weights_only=True)``: reading it runs no code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .datasets import Split
from .errors import UserError
from .files import lock, write_atomic
from .layers import NoiseLayer

STAGE_FILE = "stage.pt"
NAME = r"[A-Za-z0-9_-]{1,64}"  # a stage's name: its folder is <name>-<key>, so no path in a name
FOLDER = re.compile(rf"{NAME}-[0-9a-f]{{64}}")  # a stage's folder: <name>-<sha256 key>
log = logging.getLogger(__name__)


def digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's values, shape and dtype."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def stage_key(name: str, inputs: dict) -> str:
    """The key of a stage: sha256 of its name and its inputs (JSON-able values, tensors given by digest)."""
    return hashlib.sha256(json.dumps({"stage": name, **inputs}, sort_keys=True, default=str).encode()).hexdigest()


class StageStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def clear(self) -> None:
        """Remove every stage folder here (``<name>-<key>``, finished or killed), and the root if that
        leaves it empty; anything else in it (a user's files) stays."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and FOLDER.fullmatch(folder.name):
                shutil.rmtree(folder, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass  # not empty: a user's files

    def folder(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    @contextmanager
    def claim(self, name: str, key: str):
        """Held while a stage is looked up and, if missing, trained: a second process waits here."""
        folder = self.folder(name, key)
        with lock(folder / ".lock", f"the shared stage {folder}"):
            yield folder

    def load(self, name: str, key: str) -> dict | None:
        path = self.folder(name, key) / STAGE_FILE
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- a file cut short or from another torch: trained again
            aside = path.with_name(f"{STAGE_FILE}.unreadable")
            path.replace(aside)
            log.warning("stage %s: %s cannot be read (%s); set aside as %s, training it again", name, path, e, aside)
            return None
        return state if isinstance(state, dict) and state.get("key") == key else None

    def get_or_train(self, name: str, key: str, train, state_of, reuse):
        """The stage protocol: under the stage's lock, its stored state if a process stored it for this key,
        else ``train(checkpoints_folder)``, whose ``state_of(result)`` is stored; the stored state is turned
        into a result by ``reuse(state)`` outside the lock (the next waiting cell need not wait for it).
        Returns (the result, whether it was trained here)."""
        with self.claim(name, key) as folder:
            stored = self.load(name, key)
            if stored is None:
                result = train(folder / "checkpoints")
                self.save(name, key, state_of(result))
                return result, True
        log.info("stage %s reused from %s", name, folder)
        return reuse(stored), False

    def save(self, name: str, key: str, state: dict) -> None:
        buf = io.BytesIO()
        torch.save({**state, "key": key}, buf)
        folder = self.folder(name, key)
        write_atomic(folder / STAGE_FILE, buf.getvalue())
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the stage is kept; its checkpoints are not


# --- what decides a stage besides the config: its noise layer and its images --------------------------

def layer_inputs(layer: NoiseLayer, where: str = "q._target_: the estimator trains") -> dict:
    """What decides a noise layer besides its class: its public attributes (numbers, strings, and arrays or
    tensors by digest, a plain tensor attribute as much as a buffer) and its state dict. An attribute of
    another kind cannot be hashed for a shared stage, and is refused (UserError)."""
    out = {"type": f"{type(layer).__module__}.{type(layer).__qualname__}",
           "state": {k: digest(v) for k, v in layer.state_dict().items()}}
    for k, v in vars(layer).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, (bool, int, float, str, type(None))):
            out[k] = v
        elif isinstance(v, (torch.Tensor, np.ndarray)):
            out[k] = digest(torch.as_tensor(v))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str, type(None))) for x in v):
            out[k] = list(v)
        else:
            raise UserError(
                f"{where} with a {type(layer).__name__} whose attribute '{k}' is a {type(v).__name__}: "
                "what decides a noise layer must be numbers, strings, arrays or tensors"
            )
    return out


def split_inputs(s: Split) -> dict:
    return {"x": digest(s.x), "y": digest(s.y), "source": None if s.source is None else _source(s.source)}


def _source(source) -> str:
    """What a file-backed split reads: its files (an image folder's samples, an outlier folder's list, a
    concatenation of them) and transform, hashed."""
    parts = [type(source).__qualname__]
    for inner in getattr(source, "datasets", None) or [source]:  # a ConcatDataset: each of its parts
        files = getattr(inner, "samples", None) or getattr(inner, "files", None)
        parts += [type(inner).__qualname__, repr(files if files is not None else getattr(inner, "root", inner)),
                  repr(getattr(inner, "transform", None))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
