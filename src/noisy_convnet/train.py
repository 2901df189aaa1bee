"""``run(cfg)``: one training run, composed from the pieces; returns the result record.

validate config -> load data -> pick the N training images -> build Q* -> corrupt their labels -> hold
out the noisy validation slice -> train base net + noise layer -> test the base net on clean labels ->
write results.json (atomically), the Q* / Q heatmap and the resolved config into the run directory.

Expected result with the defaults (mnist5k, random Q* at level 0.5, 4,000 images, learned Q, 20 epochs,
2 CPU cores): 5.6% clean test error in about 40 s; see README for the measured table.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import config, datasets, noise, outliers, plots, results
from .data import FolderDataModule, TensorDataModule
from .errors import UserError
from .module import NoisyLabelModule

log = logging.getLogger(__name__)


def rng(seed: int, stream: int) -> np.random.Generator:
    """Independent generators from one seed: the noisy labels do not change when the model does."""
    return np.random.default_rng([seed, stream])


def check_fixed_q(cfg: DictConfig, q_true: np.ndarray) -> None:
    """q=fixed trains through Q*, which must be invertible for the base model to recover the true labels
    (paper, after Eq. 7). The message names the key that made it singular."""
    if cfg.q.mode != "fixed" or not noise.is_singular(q_true):
        return
    key, why = {
        "outlier": ("data.labelled_outliers", "Eq. 8's Q* is singular without labelled outliers; set it > 0"),
        "labels": ("q", "the realised noise matrix of these labels is singular; use q=learned or q=none"),
    }.get(cfg.noise.name, ("q", f"{cfg.noise.matrix} noise at level {cfg.level} gives a singular Q* "
                                "(choose another level or matrix, or q=learned|none)"))  # fmt: skip
    raise UserError(f"{key}: q=fixed needs a non-singular Q* (cond {np.linalg.cond(q_true):.1e}); {why}")


def _wandb_online() -> bool:
    """W&B logs online only with an API key and a reachable server; otherwise offline (synced later)."""
    if os.environ.get("WANDB_MODE") == "offline":
        return False
    netrc = Path.home() / ".netrc"
    if not os.environ.get("WANDB_API_KEY") and not (netrc.is_file() and "api.wandb.ai" in netrc.read_text()):
        return False
    import socket

    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        return True
    except OSError:
        return False


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, lcfg in (cfg.logger or {}).items():
        if "wandb" in name:
            if not _wandb_online():
                lcfg = OmegaConf.merge(lcfg, {"offline": True})
                log.info("W&B: no API key or no network, logging offline under %s", cfg.run_dir)
            cell = _cell_name()
            if cell:  # in a sweep, the run is named after its cell
                lcfg = OmegaConf.merge(lcfg, {"name": cell})
        loggers.append(instantiate(lcfg))
    return loggers


def _cell_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or None


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    cbs = []
    if cfg.trainer.get("enable_progress_bar", True):
        cbs.append(RichProgressBar(leave=True))
    if cfg.early_stopping:
        cbs.append(EarlyStopping(monitor="val/nll", mode="min", patience=cfg.patience))
        cbs.append(
            ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/nll", mode="min", save_weights_only=True)
        )
    return cbs


def prepare_flip(cfg: DictConfig, ds: datasets.Dataset) -> dict:
    """The first train_size images of the pool with labels redrawn from Q* (label-flip noise)."""
    k = ds.num_classes
    chosen = datasets.subset(ds.pool, cfg.data.train_size, cfg.seed, k)
    q_true = np.eye(k) if cfg.noise.name == "none" else noise.matrix(cfg.noise.matrix, k, cfg.level, rng(cfg.seed, 1))
    y_noisy = noise.corrupt(chosen.y.numpy(), q_true, rng(cfg.seed, 2))
    train = chosen.relabel(y_noisy)
    return {
        "train": train,
        "y_true": chosen.y.numpy(),
        "test": ds.test,
        "num_classes": k,
        "Q_true": q_true,
        "extra": {},
    }


def prepare_labels(cfg: DictConfig, ds: datasets.Dataset) -> dict:
    """Real noisy labels from a file (one per pool image); Q_true is their realised noise matrix."""
    k = ds.num_classes
    y_file = noise.labels_from_file(to_absolute_path(cfg.noise.file), cfg.noise.column, len(ds.pool), k)
    idx = datasets.subset_indices(len(ds.pool), cfg.data.train_size, cfg.seed, k)
    chosen = ds.pool.take(idx)
    y_clean, y_noisy = chosen.y.numpy(), y_file[idx]
    q_true = noise.realised(y_clean, y_noisy, k)
    train = chosen.relabel(y_noisy)
    return {"train": train, "y_true": y_clean, "test": ds.test, "num_classes": k, "Q_true": q_true,
            "extra": {"noise_file": cfg.noise.file, "noise_column": cfg.noise.column}}  # fmt: skip


def prepare_outliers(cfg: DictConfig, ds: datasets.Dataset) -> dict:
    """Inliers (train_size of them, flip noise at `level` if any), outliers with uniform labels, and
    labelled outliers; Q* from Eq. 8. Without a noise layer the labelled outliers are left out: a
    K-output net has no class for them."""
    d = cfg.data
    o = outliers.compose(ds, d.outlier_source, d.inlier_classes, d.train_size, d.outlier_ratio,
                         d.labelled_outliers, rng(cfg.seed, 3), external_outliers(cfg, ds))  # fmt: skip
    k, y = o.num_classes, o.train.y.numpy().copy()
    flip = noise.matrix(cfg.noise.matrix, k, cfg.level, rng(cfg.seed, 1)) if cfg.level > 0 else np.eye(k)
    inl = o.y_true < k
    y[inl] = noise.corrupt(o.y_true[inl], flip, rng(cfg.seed, 2))
    q_true = noise.outlier(k, outliers.alpha(o.n_out, o.labelled), flip)
    keep = np.ones(len(y), bool) if cfg.q.mode != "none" else y < k
    train = o.train.take(np.flatnonzero(keep)).relabel(y[keep])
    extra = {"outlier_ratio": d.outlier_ratio, "n_in": o.n_in, "n_out": o.n_out, "labelled_outliers": o.labelled,
             "outlier_source": d.outlier_source}  # fmt: skip
    return {"train": train, "y_true": o.y_true[keep], "test": o.test, "num_classes": k, "Q_true": q_true,
            "extra": extra}  # fmt: skip


def fit(cfg: DictConfig, ds: datasets.Dataset, prep: dict, q_choice: dict, run_dir: Path) -> dict:
    """Train base net + noise layer on the prepared (noisy) data, test the base net; the run's numbers."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # every candidate starts from the same weights
    k, q_true = prep["num_classes"], prep["Q_true"]
    train, val = datasets.holdout(prep["train"], cfg.data.val_fraction)
    if train.source is None:  # in memory: tensors on the device
        dm = TensorDataModule(
            train, val, prep["test"], cfg.data.batch_size, cfg.data.shift, cfg.seed, cfg.data.channels_last
        )
    else:  # an image folder: DataLoader workers
        dm = FolderDataModule(train, val, prep["test"], cfg.data.batch_size, cfg.data.num_workers, cfg.seed,
                              cfg.data.channels_last)  # fmt: skip
    n_out = q_true.shape[0] if cfg.q.mode != "none" else k  # the outlier model has a K+1-th output
    net = instantiate(cfg.model, in_shape=ds.shape, num_classes=n_out)
    layer = instantiate(cfg.q, q_true=None if cfg.q.mode == "none" else q_true, num_classes=n_out, **q_choice)
    module = NoisyLabelModule(
        net, layer, instantiate(cfg.optim.optimizer), instantiate(cfg.optim.get("scheduler")),
        q_true=q_true, num_classes=k, channels_last=cfg.data.channels_last,
    )  # fmt: skip
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=build_loggers(cfg) or False, callbacks=build_callbacks(cfg, run_dir),
        default_root_dir=str(run_dir), enable_checkpointing=cfg.early_stopping,
    )  # fmt: skip
    t_fit = time.perf_counter()
    trainer.fit(module, dm)
    fit_s = time.perf_counter() - t_fit
    epochs = trainer.current_epoch
    # The noisy validation NLL of the model that is tested: the best epoch's with early stopping.
    val_nll = (
        trainer.checkpoint_callback.best_model_score if cfg.early_stopping else trainer.callback_metrics.get("val/nll")
    )
    trainer.test(module, dm, ckpt_path="best" if cfg.early_stopping else None, verbose=False)
    _finish_wandb(trainer)
    q_end = module.noise.q()
    q_end = None if q_end is None else q_end.detach().cpu().numpy()
    return {
        "epochs": epochs,
        "reg_weight": layer.reg_weight if cfg.q.mode == "learned" else None,
        "q_choice": q_choice or None,
        "val_nll": None if val_nll is None else float(val_nll),
        "Q": q_end,
        "q_error": None if q_end is None else noise.q_error(q_end, q_true),
        **module.test_results,
        "train_images_per_s": len(train) * epochs / fit_s,
        "device": str(trainer.strategy.root_device),
    }


def q_candidates(cfg: DictConfig) -> list[dict]:
    """A list in a learned-Q key (q.reg_weight, q.init_flip, q.lr, q.balance_weight) means: train one model per value
    (per combination, for several lists) on the same noisy labels and keep the one with the lowest NLL on
    the noisy validation slice. The test set plays no part. [{}] when there is nothing to choose."""
    if cfg.q.mode != "learned":
        return [{}]
    lists = {k: [float(v) for v in cfg.q[k]] for k in config.SELECTABLE if isinstance(cfg.q.get(k), ListConfig)}
    return [dict(zip(lists, values, strict=True)) for values in itertools.product(*lists.values())]


def external_outliers(cfg: DictConfig, ds: datasets.Dataset) -> tuple[datasets.Split, datasets.Split] | None:
    """(training, test) outlier images from another data set or a folder, in ds's shape (or, for an image
    folder data set, as files read with its transform); None for the built-in sources."""
    src = cfg.data.outlier_source
    if src in outliers.SOURCES:
        return None
    folder = to_absolute_path(src)
    if ds.pool.source is not None:  # files stay files: a folder, or nothing (compose says what is allowed)
        is_dir = Path(folder).is_dir()
        return outliers.folder_files(folder, ds.pool.source.transform, rng(cfg.seed, 4)) if is_dir else None
    if src in datasets.TORCHVISION:
        other = datasets.load(src, to_absolute_path(cfg.data.root), cfg.data.download, cfg.data.verify)
        pair = outliers.to_shape(other.pool.x, ds.shape), outliers.to_shape(other.test.x, ds.shape)
    elif Path(folder).is_dir():
        pair = outliers.folder_images(folder, ds.shape, rng(cfg.seed, 4))
    else:
        return None  # compose names the allowed sources
    return tuple(datasets.Split(x, torch.zeros(len(x), dtype=torch.long)) for x in pair)


def run(cfg: DictConfig) -> dict:
    t_start = time.perf_counter()
    cfg = config.validate(cfg)
    run_dir = Path(cfg.run_dir)
    done = results.finished(run_dir, OmegaConf.to_container(cfg, resolve=True), config.schema_defaults())
    if done is not None:  # resume: this cell already ran with this very config
        log.info("already finished, skipped: %s", run_dir / results.RESULTS_FILE)
        return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.gpu_fraction and torch.cuda.is_available():  # one of several trainings sharing this GPU
        torch.cuda.set_per_process_memory_fraction(cfg.gpu_fraction)

    ds = datasets.load(cfg.data.name, to_absolute_path(cfg.data.root), cfg.data.download, cfg.data.verify,
                       cfg.data.image_size)  # fmt: skip
    prepare = {"outlier": prepare_outliers, "labels": prepare_labels}.get(cfg.noise.name, prepare_flip)
    prep = prepare(cfg, ds)
    k, q_true = prep["num_classes"], prep["Q_true"]
    check_fixed_q(cfg, q_true)
    actual_noise = float((prep["train"].y.numpy() != prep["y_true"]).mean())
    log.info("%s: %d noisy training images, %.3f of labels noisy", ds.name, len(prep["train"]), actual_noise)

    fits = [fit(cfg, ds, prep, choice, run_dir) for choice in q_candidates(cfg)]
    best = min(fits, key=lambda f: f["val_nll"]) if len(fits) > 1 else fits[0]
    record = {
        "dataset": ds.name,
        "num_classes": k,
        "train_size": cfg.data.train_size,
        "noise": cfg.noise.name,
        "matrix": cfg.noise.matrix,
        "level": {"none": 0.0, "labels": actual_noise}.get(cfg.noise.name, cfg.level),
        "q": cfg.q.mode,
        "seed": cfg.seed,
        "early_stopping": cfg.early_stopping,
        "actual_noise": actual_noise,
        "Q_true": q_true,
        **best,
        **prep["extra"],
        "wall_s": time.perf_counter() - t_start,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if len(fits) > 1:  # what the selection saw (the test errors are for the record, not used to choose)
        record["selection"] = [
            {**f["q_choice"], **{k_: f[k_] for k_ in ("val_nll", "test_error", "q_error")}} for f in fits
        ]
    plots.save(plots.q_heatmaps(q_true, record["Q"], _title(record)), run_dir / "Q.png")
    path = results.write(run_dir, record)
    log.info("test error %.4f  (results: %s)", record["test_error"], path)
    return record


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run: the next run in this process (a sweep) must start its own, not reuse it."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def _title(r: dict) -> str:
    return f"{r['dataset']} {r['noise']}/{r['matrix']} level={r['level']} q={r['q']}: test error {r['test_error']:.3f}"
