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

from . import config, datasets, identity, noise, plots, targets
from . import record as record_file
from .cell import INDICES, LABELS, Q_PNG, Cell
from .errors import Diverged, UserError
from .estimators import Fitted
from .factory import Trainers, Training
from .files import save_array
from .launch import sweep_cell, sweep_folder
from .loggers import build_loggers, quiet
from .noise_models import NoisyData
from .protocol import Spec
from .record import Record

log = logging.getLogger(__name__)


def default_run_dir() -> str:
    """Hydra's output directory, or, outside Hydra, outputs/runs/<date>/<time>-<pid> (unique per process)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    return f"outputs/runs/{datetime.now():%Y-%m-%d/%H-%M-%S-%f}-{os.getpid()}"


VAL_PER_CLASS = 10  # the smallest noisy validation slice that early stopping or a selection may use


def run(cfg: DictConfig | config.Checked) -> Record:
    """Train and test one run; a config, or what ``config.check`` returned for it (the command line checks
    before it imports this module, so that a mistake is answered before Lightning loads)."""
    t_start = time.perf_counter()
    # the noise model and the estimator built by the check are the run's
    checked = cfg if isinstance(cfg, config.Checked) else config.check(cfg)
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
    cell = Cell(run_dir, identity.CellKey.of(resolved, defaults, inputs), defaults, _sweep_dir())
    with cell.claimed():  # the same cell started twice at once: one waits, then skips
        done = cell.finished()  # "already finished, skipped: ..." names the record found
        if done is not None:  # resume: this cell (or its twin beside it) already ran with this very config
            return done
        cell.prepare()
        threads = torch.get_num_threads()
        try:
            return _run(checked, cell, resolved, inputs, t_start)
        except UserError:  # refused: before its first training, nothing of it is left (cli drops the folder)
            cell.unprepare()
            raise
        finally:  # a run's thread count must not reach later runs in this process (their float sums)
            torch.set_num_threads(threads)


def _sweep_dir() -> Path | None:
    """The sweep's folder when this run is one of its cells (in a folder of its own), else None."""
    hc = sweep_cell()
    if hc is None:
        return None
    sweep = sweep_folder(hc)
    return sweep if Path(hc.runtime.output_dir).resolve().parent == sweep else None


def _run(checked: config.Checked, cell: Cell, resolved: dict, inputs: dict, t_start: float) -> Record:
    """One cell's work; ``resolved``: its config resolved once (the cell key's, the loggers', the record's)."""
    cfg, noise_model, estimator, run_dir = checked.cfg, checked.noise_model, checked.estimator, cell.dir
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
    hparams = {"q": estimator.name, "noise": noisy.noise, **flat(resolved)}

    def watch(training: int) -> list:  # a dashboard groups and filters runs by any of these keys
        loggers = build_loggers(cfg, run_name, training)
        for lg in loggers:
            lg.log_hyperparams({**hparams, "training": training})
        return loggers

    trainers = Trainers(Spec.of(cfg), ds.shape, noisy.test, noisy.q_true, noisy.num_classes, run_dir, watch,
                        cell.stages)
    cell.trainings = trainers.protocol  # from its first training on, a refusal keeps what the run wrote
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
        threads=torch.get_num_threads(), channels_last=trainers.spec.channels_last, provenance=record_file.provenance(),
        wall_s=time.perf_counter() - t_start, config=resolved,
        pool_size=len(ds.pool), test_size=len(ds.test), inlier_ap=t.test.inlier_ap, pr_curve=t.test.pr_curve,
        stages=trainers.used, protocol={"name": cfg.protocol.name, "estimator": cfg.protocol.estimator,
                                          "estimate_on": cfg.protocol.estimate_on, "trainings": trainers.protocol},
        input_hashes=inputs,
        cell=cell.key.to_dict(), fields={**noisy.extra, **fitted.fields},
    )
    plots.save(plots.q_heatmaps(noisy.q_true, fitted.q, _title(record)), run_dir / Q_PNG)
    model = None
    if cfg.save_model:  # the tested base net's weights, kept beside its record
        buf = io.BytesIO()
        torch.save(t.module.net.state_dict(), buf)
        model = buf.getvalue()
    path = cell.complete(record, model)
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
    net = targets.built(targets.build(cfg.model, "model", in_shape=ds.shape, num_classes=ds.num_classes), cfg.model,
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
