"""The typed schema of a run's config (OmegaConf structured configs) and ``validate(cfg)``, which turns
every user mistake into one ``UserError`` line naming the key and what is allowed -- before any work.

Two layers of checks: the schema gives types (``level=abc`` -> "level: 'abc' is not a float"), then
``validate`` checks ranges and names. Group choices given on the command line (``data=foo``) are checked
by ``check_overrides`` in the entry point, before Hydra composes anything, because Hydra's own message
for an unknown option spans many lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from . import datasets, layers, noise
from .errors import UserError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Config groups a user picks by name on the command line (``group=option``).
GROUPS = ("data", "noise", "q", "model", "optim", "trainer", "logger", "experiment")
NOISE_NAMES = ("none", "flip", "outlier", "labels")
SELECTABLE = ("reg_weight", "init_flip", "lr", "balance_weight")  # learned-Q keys that may list candidates


@dataclass
class DataConf:
    name: str = "mnist5k"
    train_size: int = 4000  # noisy training images, validation slice included
    val_fraction: float = 0.1  # share of train_size held out as a noisy validation slice; 0 = none
    batch_size: int = 128
    shift: int = 2  # augmentation: random translation of up to this many pixels; 0 = off
    channels_last: bool = False
    # noise=outlier only (paper Sec. "Outlier noise"): train_size counts the inliers N_in
    outlier_ratio: float = 1.0  # N_out / N_in: outliers with a uniformly random label among the K classes
    labelled_outliers: int = 50  # extra outliers labelled K+1, which make Eq. 8's Q* non-singular
    inlier_classes: int = 5  # K: the first this many classes are the inliers
    outlier_source: str = "classes"  # classes (the other classes) | photos (scikit-learn's sample photos)
    # torchvision data sets only
    root: str = "data"  # where the files are (or go, with download)
    download: bool = False
    verify: bool = True  # torchvision's MD5 checks; false trusts files in the same format
    # data=imagefolder only
    image_size: int = 224  # centre crop, pixels
    num_workers: int = 4  # DataLoader workers decoding the images


@dataclass
class NoiseConf:
    name: str = "flip"
    matrix: str = "random"  # uniform | pair | random | path to a .npy/.csv K x K matrix
    file: str | None = None  # noise=labels: .npy/.csv/.pt of one noisy label per training-pool image
    column: str | None = None  # noise=labels: which column of a .csv or .pt file (e.g. aggre_label)


@dataclass
class QConf:
    _target_: str = "noisy_convnet.layers.NoiseLayer"
    mode: str = "learned"
    param: str = "softmax"
    # Each of init_flip, lr, reg_weight, balance_weight may be a list: candidates chosen on the noisy validation slice.
    init_flip: Any = 0.5
    lr: Any = None
    reg_weight: Any = 0.0
    regulariser: str = "ridge"  # ridge | trace: what reg_weight weighs
    balance_weight: Any = 0.0  # weight of KL(mean base prediction || uniform): no dead or merged classes
    warmup_epochs: int = 0


@dataclass
class TrainConf:
    seed: int = 0
    level: float = 0.5  # noise level: the fraction of labels flipped by Q*
    early_stopping: bool = False
    patience: int = 5
    run_dir: str = "outputs/run"
    sweep: str = "default"  # names a sweep's directory and its W&B group
    threads: int | None = None  # torch CPU threads for this run; None = torch's default (all cores)
    gpu_fraction: float | None = None  # share of the GPU's memory this run may take; None = all of it
    data: DataConf = field(default_factory=DataConf)
    noise: NoiseConf = field(default_factory=NoiseConf)
    q: QConf = field(default_factory=QConf)
    model: Any = None
    optim: Any = None
    trainer: Any = None
    logger: Any = None


def schema_defaults() -> dict:
    """Every typed key's default value, as plain containers."""
    return OmegaConf.to_container(OmegaConf.structured(TrainConf))


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def typed(cfg: DictConfig) -> DictConfig:
    """cfg merged onto the schema: values converted to their types, or a UserError naming the key."""
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConf), cfg)
    except ConfigKeyError as e:
        raise UserError(f"{e.full_key}: unknown key") from None
    except ValidationError as e:
        first = str(e.msg).splitlines()[0]
        raise UserError(f"{e.full_key}: {first}") from None


def validate(cfg: DictConfig) -> DictConfig:
    """Check every user-facing value; return the typed config. Raises UserError on the first bad one."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]}: required, give it on the command line ({missing[0]}=...)")
    cfg = typed(cfg)
    if not 0.0 <= cfg.level < 1.0:
        raise UserError(f"level: {cfg.level} is outside [0, 1)")
    if cfg.data.name not in datasets.NAMES:
        raise UserError(f"data.name: unknown data set '{cfg.data.name}'; allowed: {_allowed(datasets.NAMES)}")
    if cfg.data.train_size < 1:
        raise UserError(f"data.train_size: {cfg.data.train_size} must be a positive number of images")
    if not 0.0 <= cfg.data.val_fraction <= 0.5:
        raise UserError(f"data.val_fraction: {cfg.data.val_fraction} is outside [0, 0.5]")
    if cfg.data.batch_size < 1:
        raise UserError(f"data.batch_size: {cfg.data.batch_size} must be >= 1")
    if cfg.noise.name not in NOISE_NAMES:
        raise UserError(f"noise.name: unknown noise '{cfg.noise.name}'; allowed: {_allowed(NOISE_NAMES)}")
    if cfg.noise.name == "labels" and not cfg.noise.file:
        raise UserError("noise.file: noise=labels needs noise.file=PATH (.npy, .csv or .pt, one label per pool image)")
    m = cfg.noise.matrix
    if cfg.noise.name != "labels" and m not in noise.MATRIX_KINDS and Path(m).suffix not in (".npy", ".csv"):
        raise UserError(f"noise.matrix: '{m}' is not one of {_allowed(noise.MATRIX_KINDS)} nor a .npy/.csv path")
    if cfg.q.mode not in layers.MODES:
        raise UserError(f"q.mode: unknown mode '{cfg.q.mode}'; allowed: {_allowed(layers.MODES)}")
    if cfg.q.param not in layers.PARAMS:
        raise UserError(f"q.param: unknown '{cfg.q.param}'; allowed: {_allowed(layers.PARAMS)}")
    if cfg.q.regulariser not in layers.REGULARISERS:
        raise UserError(f"q.regulariser: unknown '{cfg.q.regulariser}'; allowed: {_allowed(layers.REGULARISERS)}")
    _check_selectable(cfg, "reg_weight", lambda w: w >= 0, ">= 0")
    _check_selectable(cfg, "balance_weight", lambda w: w >= 0, ">= 0")
    _check_selectable(cfg, "init_flip", lambda f: 0 <= f < 1, "in [0, 1)")
    if cfg.q.lr is not None:
        _check_selectable(cfg, "lr", lambda r: r > 0, "> 0 (or null for the network's learning rate)")
    if cfg.trainer is not None and cfg.trainer.get("max_epochs", 1) < 1:
        raise UserError(f"trainer.max_epochs: {cfg.trainer.max_epochs} must be >= 1")
    if cfg.early_stopping and cfg.data.val_fraction == 0:
        raise UserError("early_stopping: needs a validation slice; set data.val_fraction > 0")
    if cfg.gpu_fraction is not None and not 0.0 < cfg.gpu_fraction <= 1.0:
        raise UserError(f"gpu_fraction: {cfg.gpu_fraction} is outside (0, 1]")
    if cfg.patience < 1:
        raise UserError(f"patience: {cfg.patience} must be >= 1")
    return cfg


def _check_selectable(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    """q.<key> is a number that passes ``ok``, or a non-empty list of them (candidates to choose from)."""
    value = cfg.q[key]
    values = list(value) if isinstance(value, ListConfig) else [value]
    is_number = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
    if not values or not all(is_number) or not all(ok(v) for v in values):
        raise UserError(f"q.{key}: {value} must be a number {allowed}, or a list of them")
    if len(values) > 1 and cfg.data.val_fraction == 0:
        raise UserError(
            f"q.{key}: choosing among {len(values)} values needs a validation slice; set data.val_fraction > 0"
        )


def joblib_jobs(launcher: DictConfig | dict, cores: int) -> int | None:
    """How many cells the joblib launcher runs at once on this machine (joblib: n_jobs -1 = one per core);
    None for another launcher."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    n_jobs = launcher.get("n_jobs", -1)
    return cores if n_jobs is None or n_jobs < 1 else min(n_jobs, cores)


def share_machine(cfg: DictConfig, launcher: DictConfig | dict, cores: int) -> None:
    """Cells run in parallel by the joblib launcher share the machine instead of each taking all of it:
    cores / jobs CPU threads each and, on a GPU, 1 / jobs of its memory each (several small trainings on
    one GPU). Values the user set are kept."""
    jobs = joblib_jobs(launcher, cores)
    if jobs is None:
        return
    if cfg.threads is None:
        cfg.threads = max(1, cores // jobs)
    if cfg.get("gpu_fraction") is None:
        cfg.gpu_fraction = round(1.0 / jobs, 4)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(args: list[str]) -> None:
    """Check ``group=option`` overrides (sweeps ``group=a,b`` too) against the files in conf/<group>/."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # a malformed override: Hydra's own parser will report it
        return
    for o in overrides:
        group = o.key_or_group
        if group not in GROUPS or o.is_delete():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        allowed = group_options(group)
        for v in values:
            if v is not None and str(v) not in allowed:
                raise UserError(f"{group}: unknown option '{v}'; allowed: {_allowed(allowed)}")
