"""``run(cfg) -> Record``: one training run, composed from the pieces.

validate config -> load data -> the noise model draws the training images and their noisy labels
(NoisyData) -> hold out the noisy validation slice -> the Q estimator trains base net + noise layer (once
or several times) -> the base net it returns is tested on clean labels -> results.json (atomically), the
Q* / Q heatmap and the resolved config in the run directory.

Works on a config from Hydra's command line or from ``config.compose([...])`` in Python.

Expected result with the defaults (mnist5k, random Q* at level 0.5, 4,000 images, learned Q, 20 epochs):
about 6% clean test error in under a minute on 2 CPU cores; docs/results.md has the measured figures.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from . import config, datasets, identity, noise, plots
from . import record as record_file
from .errors import Diverged, UserError
from .estimators import Fitted
from .factory import Trainers, Training
from .files import lock, save_array, write_atomic
from .launch import sweep_cell
from .loggers import quiet
from .noise_models import NoisyData
from .record import RESULTS_FILE, SAME_AS, Record
from .stages import StageStore

log = logging.getLogger(__name__)


def default_run_dir() -> str:
    """Hydra's output directory, or, outside Hydra, outputs/runs/<date>/<time>-<pid> (unique per process)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    return f"outputs/runs/{datetime.now():%Y-%m-%d/%H-%M-%S-%f}-{os.getpid()}"


VAL_PER_CLASS = 10  # the smallest noisy validation slice that early stopping or a selection may use
# What a run writes in its folder (True: a folder): a file or folder of another kind there is refused.
STAGES, LABELS, INDICES, Q_PNG, MODEL = "stages", "noisy_labels.npy", "indices.npy", "Q.png", "model.pt"
WRITTEN = {identity.CHECKPOINTS: True, STAGES: True, RESULTS_FILE: False, LABELS: False, INDICES: False,
           Q_PNG: False, MODEL: False}


def run(cfg: DictConfig) -> Record:
    t_start = time.perf_counter()
    checked = config.check(cfg)  # the noise model and the estimator built there are the run's
    cfg = checked.cfg
    quiet(cfg.verbose)
    if cfg.run_dir is None:
        cfg.run_dir = default_run_dir()
    run_dir = Path(cfg.run_dir)
    try:  # before any work: a run that cannot write its record must not train
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as e:
        raise UserError(f"run_dir: cannot write in '{run_dir}' ({e.strerror}); give a directory that can be "
                        "created and written") from None
    resolved, defaults = OmegaConf.to_container(cfg, resolve=True), config.schema_defaults()
    inputs = identity.input_hashes(resolved)  # the input files, read once
    key = identity.CellKey.of(resolved, defaults, inputs)
    with lock(run_dir / ".lock", f"the cell {run_dir}"):  # the same cell started twice at once: one waits, then skips
        done = identity.finished(run_dir, key, defaults)
        if done is not None:  # resume: this cell already ran with this very config
            log.info("already finished, skipped: %s", run_dir / RESULTS_FILE)
            return done
        sweep_dir = _sweep_dir()
        beside = None if sweep_dir is None else identity.finished_beside(sweep_dir, run_dir, key, defaults)
        if beside is None:
            threads = torch.get_num_threads()
            try:
                return _run(checked, run_dir, key, inputs, sweep_dir, t_start)
            finally:  # a run's thread count must not reach later runs in this process (their float sums)
                torch.set_num_threads(threads)
        log.info("already finished, skipped: %s is this cell", beside[0] / RESULTS_FILE)
        write_atomic(run_dir / SAME_AS, json.dumps({"results": str(beside[0] / RESULTS_FILE)}))
    return beside[1]


def _sweep_dir() -> Path | None:
    """The sweep's folder when this run is one of its cells (in a folder of its own), else None."""
    hc = sweep_cell()
    if hc is None:
        return None
    sweep = Path(hc.sweep.dir).resolve()
    return sweep if Path(hc.runtime.output_dir).resolve().parent == sweep else None


def _run(checked: config.Checked, run_dir: Path, key: identity.CellKey, inputs: dict, sweep_dir: Path | None,
         t_start: float) -> Record:
    cfg, noise_model, estimator = checked.cfg, checked.noise_model, checked.estimator
    if identity.other_config(run_dir, key, config.schema_defaults()):
        raise UserError(f"run_dir: '{run_dir}' holds a results.json of another config (or not written by this "
                        "project); give another hydra.run.dir (or delete that file)")
    for name, folder in WRITTEN.items():  # what this run writes there must be free for it
        path = run_dir / name
        if path.exists() and path.is_dir() != folder:
            raise UserError(f"run_dir: '{path}' is a {'folder' if path.is_dir() else 'file'}, where a run writes its "
                            f"{'folder' if folder else 'file'} of that name; give another hydra.run.dir")
    identity.claim_checkpoints(run_dir, key)  # a killed run's checkpoints resume only this very cell
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("trainer: accelerator gpu, but this machine has no GPU that torch can use; use trainer=cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.gpu_fraction and torch.cuda.is_available():  # one of several trainings sharing this GPU
        torch.cuda.set_per_process_memory_fraction(cfg.gpu_fraction)

    root = None if cfg.data.root is None else to_absolute_path(cfg.data.root)
    ds = datasets.load(cfg.data.name, root, cfg.data.download, cfg.data.verify, cfg.data.image_size)
    h, w = ds.shape[1:]
    if cfg.data.shift >= min(h, w):
        raise UserError(
            f"data.shift: {cfg.data.shift} pixels would move {h}x{w} images out of view; at most {min(h, w) - 1}"
        )
    _check_model(cfg, ds)
    noisy = _checked_noise(noise_model.apply(ds, cfg.data, cfg.level, cfg.seed), cfg.noise)
    noisy = dataclasses.replace(noisy, pool_size=len(ds.pool))
    noisy = noisy.for_outputs(estimator.outputs(noisy))  # the estimator sizes the net; its data follows
    log.info("%s: %d noisy training images, %.3f of labels noisy", ds.name, len(noisy.train), noisy.actual_noise)

    train, val = datasets.holdout(noisy.train, cfg.data.val_fraction)
    floor = VAL_PER_CLASS * noisy.num_classes  # fewer, and the choice it makes is noise
    if len(val) < floor and (cfg.early_stopping or estimator.needs_validation()):
        raise UserError(f"data.val_fraction: {cfg.data.val_fraction} of {len(noisy.train)} images is {len(val)} "
                        f"validation images; early stopping (or q={estimator.name}) needs at least {floor} "
                        f"({VAL_PER_CLASS} per class); raise it")
    _keep_labels(noisy, run_dir)
    run_name = f"{ds.name}-{noisy.noise}-{noisy.level:g}-q_{estimator.name}-s{cfg.seed}"
    hparams = {"q": estimator.name, "noise": noisy.noise, **flat(OmegaConf.to_container(cfg, resolve=True))}
    stages = (sweep_dir if sweep_dir is not None else run_dir) / STAGES  # shared by the sweep's cells
    ours = sweep_dir is None  # a single run's stages: removed once its record is written
    trainers = Trainers(cfg, ds.shape, noisy.test, noisy.q_true, noisy.num_classes, run_dir, run_name, hparams,
                        stages)
    fitted = _checked_fit(estimator.fit(noisy, train, val, trainers), noisy, cfg.q)
    t = fitted.training
    record = Record(
        dataset=ds.name, num_classes=noisy.num_classes, train_size=noisy.train_size, noise=noisy.noise,
        matrix=noisy.matrix, level=noisy.level, q=estimator.name, q_label=estimator.label or estimator.name,
        q_estimated=estimator.estimated, seed=cfg.seed, early_stopping=cfg.early_stopping,
        actual_noise=noisy.actual_noise, Q_true=noisy.q_true, Q=fitted.q,
        q_error=None if fitted.q is None else noise.q_error(fitted.q, noisy.q_true),
        test_error=t.test.test_error, confusion=t.test.confusion, val_nll=t.val_nll, epochs=t.epochs,
        trainings=trainers.count, train_images_per_s=t.images_per_s, device=t.device,
        threads=torch.get_num_threads(), channels_last=trainers.channels_last, provenance=record_file.provenance(),
        wall_s=time.perf_counter() - t_start, config=OmegaConf.to_container(cfg, resolve=True),
        pool_size=len(ds.pool), test_size=len(ds.test), inlier_ap=t.test.inlier_ap, pr_curve=t.test.pr_curve,
        stages=trainers.used, protocol={"name": cfg.protocol.name, "estimator": cfg.protocol.estimator,
                                          "trainings": trainers.protocol},
        input_hashes=inputs,
        cell=key.to_dict(), fields={**noisy.extra, **fitted.fields},
    )
    plots.save(plots.q_heatmaps(noisy.q_true, fitted.q, _title(record)), run_dir / Q_PNG)
    if cfg.save_model:  # the tested base net's weights, kept beside its record (written first: a record means both)
        buf = io.BytesIO()
        torch.save(t.module.net.state_dict(), buf)
        write_atomic(run_dir / MODEL, buf.getvalue())
    path = record_file.write(run_dir, record)
    identity.mark(run_dir, key)  # after the record: a twin under another name finds it by this file
    identity.drop_checkpoints(run_dir)  # the record is written: this run's checkpoints go, nothing else
    if ours:  # a single run's stages (its own, a killed run's) served its resume only; a user's files stay
        StageStore(stages).clear()
    log.info("test error %.4f  (results: %s)", record.test_error, path)
    return record


def _keep_labels(noisy: NoisyData, run_dir: Path) -> None:
    """The exact noisy labels beside the record, to reuse or inspect: noisy_labels.npy (every training
    image's, the validation slice last), indices.npy (each one's index in the data set's pool, when they
    come from it) and the noise model's own arrays (e.g. flip_rates.npy), all in the same order."""
    save_array(run_dir / LABELS, noisy.train.y.numpy())
    if noisy.indices is not None:
        save_array(run_dir / INDICES, np.asarray(noisy.indices))
    for name, array in noisy.files.items():
        save_array(run_dir / name, np.asarray(array))


def _checked_noise(noisy, node: DictConfig) -> NoisyData:
    """What a noise model returned, checked before any training (a user's own class as the project's)."""
    target = node.get("_target_")
    if not isinstance(noisy, NoisyData):
        raise UserError(f"noise._target_: '{target}' apply() returned {type(noisy).__name__}, not a NoisyData")
    q = np.asarray(noisy.q_true, dtype=np.float64)
    noise.check_stochastic(q, len(q), "noise._target_", f"the Q* that '{target}' made")
    y = noisy.train.y.numpy()
    if len(y) and (y.min() < 0 or y.max() >= len(q)):
        raise UserError(f"noise._target_: '{target}' made noisy labels outside [0, {len(q) - 1}] (its Q* has "
                        f"{len(q)} classes)")
    return noisy


RECORD_FIELDS = {f.name for f in dataclasses.fields(Record)} | {"input_hashes", "cell"}


def _checked_fit(fitted, noisy: NoisyData, node: DictConfig) -> Fitted:
    """What an estimator's fit() returned, checked before anything is recorded."""
    target = node.get("_target_")
    if not isinstance(fitted, Fitted) or not isinstance(fitted.training, Training):
        raise UserError(f"q._target_: '{target}' fit() returned {type(fitted).__name__}; return Fitted(training, q, "
                        "fields) with the Training that trainers.fit gave")
    if fitted.q is not None:
        q = np.asarray(fitted.q, dtype=np.float64)
        if q.shape != noisy.q_true.shape:
            raise UserError(f"q._target_: '{target}' fit() returned a Q of shape {q.shape}; Q* has shape "
                            f"{noisy.q_true.shape}")
        if not np.isfinite(q).all():
            raise Diverged(f"q._target_: '{target}' fit() returned a Q that is not finite")
        noise.check_stochastic(q, len(q), "q._target_", f"the Q that '{target}' returned")
    try:  # written with the record: a field JSON cannot hold must not fail the run after it wrote nothing
        json.dumps(record_file.to_jsonable(dict(fitted.fields or {})))
    except (TypeError, ValueError) as e:
        raise UserError(f"q._target_: '{target}' fit() returned fields JSON cannot hold ({e}); return numbers, "
                        "strings, lists, dicts or numpy arrays") from None
    clash = sorted(set(fitted.fields or {}) & RECORD_FIELDS)
    if clash:
        raise UserError(f"q._target_: '{target}' fit() returned fields {clash}, which are the record's own; name "
                        "them otherwise")
    return fitted


def flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> {"data.train_size": 4000, ...} (lists as strings: loggers take scalars)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list) else v
    return out


def _check_model(cfg: DictConfig, ds: datasets.Dataset) -> None:
    """The network takes images of this shape (AlexNet's pooling needs at least 63x63): one forward pass of
    two blank images, before any training."""
    net = config.built(config.build(cfg.model, "model", in_shape=ds.shape, num_classes=ds.num_classes), cfg.model,
                       "model", torch.nn.Module, "forward").eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *ds.shape))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, ds.num_classes):
            raise RuntimeError(f"its output is {getattr(out, 'shape', type(out).__name__)}, not (2, {ds.num_classes})")
    except RuntimeError as e:
        shape = "x".join(map(str, ds.shape))
        raise UserError(f"model: {cfg.model._target_} cannot take {shape} images ({str(e).splitlines()[0]})") from None


def _title(r: Record) -> str:
    return f"{r.dataset} {r.noise}/{r.matrix} level={r.level:g} q={r.q}: test error {r.test_error:.3f}"
