"""The typed schema of a run's config, the one home of every default, and ``validate(cfg)``, which turns
every user mistake into one ``UserError`` line naming the key and what is allowed -- before any work.

The schema (``TrainConf``, registered with Hydra's ConfigStore as ``schema`` and first in
``conf/train.yaml``'s defaults) holds the defaults of the top-level and ``data.*`` keys; the YAML files
override only what differs. The groups built with ``_target_`` (``noise``, ``q``, ``model``, ``optim``)
are objects whose YAML file is their one home: their constructors take no defaults for what the file
sets, and check their own arguments when they are built. ``validate`` builds the noise model, the Q
estimator and the optimisers, and the network on torch's meta device, so a bad ``noise.*``, ``q.*``,
``optim.*`` or ``model.*`` value, or a ``_target_`` that cannot be imported, ends in one line before any data
is loaded (what a network refuses only for the data's real shape, when the run builds it).

Hydra's own composition errors (an unknown option, a key that does not exist, a value of the wrong type)
become the same one line through ``hydra_errors.user_error``; ``compose(overrides)`` is the Python entry
that does it; building a ``_target_`` node and the line its mistakes become are ``targets.py``'s. One module
for the schema and the checks of every key: a key's default and its check read together (the reason it is
over 300 lines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from . import identity  # noqa: F401  (identity registers the cell_dir resolvers)
from .errors import UserError
from .estimators import NAMES
from .targets import build, build_error, built, check_targets, takes, unlocated

# The estimators_* presets sweep q=${estimators:}: every built-in estimator, in estimators.ESTIMATORS' order
OmegaConf.register_new_resolver("estimators", lambda: ",".join(NAMES), replace=True)
# conf/hydra/launcher/slurm.yaml sizes a cell's request by its trainer: ${if_gpu:${trainer.accelerator},a,b} is
# a with trainer=gpu, b otherwise (a CPU cell asks for no GPU, which a CPU partition refuses)
OmegaConf.register_new_resolver("if_gpu", lambda accelerator, gpu, cpu: gpu if accelerator == "gpu" else cpu,
                                replace=True)

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package
# Config groups a user picks by name on the command line (``group=option``).
GROUPS = ("data", "noise", "q", "model", "optim", "trainer", "logger", "experiment")


@dataclass
class DataConf:
    name: str = "mnist5k"
    train_size: int | None = None  # noisy training images, validation slice included; None = all the pool gives
    val_fraction: float = 0.1  # share of train_size held out as a noisy validation slice; 0 = none
    batch_size: int = 128
    shift: int = 0  # augmentation: random translation by up to this many pixels; 0 = off (the paper's protocol)
    channels_last: bool | None = None  # memory layout; None: per device and model (devices.channels_last)
    # torchvision data sets only
    root: str | None = None  # where the files are (or go); None: $NOISY_CONVNET_DATA or ~/.cache/noisy-convnet
    download: bool = False  # fetch missing files (data=mnist and fashion_mnist set it: fetch.py says from where)
    verify: bool = True  # MD5 checks (torchvision's; the official ones for the MNISTs); false: trust the files
    # data=imagefolder only
    image_size: int = 224  # centre crop, pixels
    num_workers: int = 4  # DataLoader workers decoding the images


SELECTIONS = ("nll", "accuracy")  # what "the best noisy-validation epoch" means: lowest NLL, highest accuracy
ROLES = ("plain", "reweight", "revision")  # protocol.<role>: the trainings a peer's protocol may set apart
START_ALLOWED = "estimated (the method's own T) or true (Q*: the oracle start)"


def oracle_start(value) -> bool | None:
    """q.start: True for the oracle start (``true``: Q* instead of the estimate), False for ``estimated``,
    None for any other value."""
    return True if value is True or value == "true" else False if value == "estimated" else None

ESTIMATE_ON = ("train", "all")


@dataclass
class StageConf:
    """One training of an estimator that departs from the run's protocol (a peer's own): null keys are the
    run's (trainer.max_epochs, optim, selection) or the estimator's (early_stopping)."""

    epochs: int | None = None
    optim: Any = None  # an optim node ({optimizer: {_target_...}, scheduler: ...}) as in conf/optim/
    early_stopping: bool | None = None  # true: the best noisy-validation epoch is kept; false: the last
    selection: str | None = None  # nll | accuracy


@dataclass
class ProtocolConf:
    """How the estimators' trainings run (conf/experiment/protocol_*.yaml set a peer's own; docs/method.md)."""

    name: str = "shared"  # named in the record
    estimator: str | None = None  # the estimator whose paper this protocol is (its "own" in the report)
    estimate_on: str = "train"  # images the plain net's p(noisy | x) estimates T on: train | all (+ validation)
    plain: StageConf = field(default_factory=StageConf)  # the plain net an estimator trains first
    reweight: StageConf = field(default_factory=StageConf)  # T-Revision's importance reweighting
    revision: StageConf = field(default_factory=StageConf)  # T-Revision's revision
    q_optimizer: str | None = None  # a Q learned end to end (VolMinNet): its own optimiser (adam), or null: the net's


@dataclass
class TrainConf:
    seed: int = 0  # one seed feeds the training subset, Q*, the noisy labels and the training
    level: float = 0.5  # noise level in [0, 1): the share of labels Q* moves off their true class (flip noise)
    early_stopping: bool = False  # true: stop on the noisy validation NLL and test the best model
    patience: int | None = 5  # epochs without improvement before early stopping; null: all epochs, the best kept
    selection: str = "nll"  # the best noisy-validation epoch: lowest NLL (nll) or highest accuracy of Q p
    run_dir: str | None = None  # None: Hydra's output directory, or outputs/runs/<time>-<pid> without Hydra
    sweep: str = "default"  # a sweep (-m) writes to outputs/multirun/<sweep>/<cell>; reruns skip finished cells
    threads: int | None = None  # torch CPU threads for this run; None = torch's default (all cores)
    gpu_fraction: float | None = None  # share of the GPU's memory this run may take; None = all of it
    save_model: bool = False  # keep the tested base net's weights as model.pt in the run directory
    verbose: bool = False  # true: the libraries' banners, tips and deprecation notices too (loggers.quiet)
    data: DataConf = field(default_factory=DataConf)
    protocol: ProtocolConf = field(default_factory=ProtocolConf)
    noise: Any = None  # a NoiseModel (conf/noise/*.yaml)
    q: Any = None  # a QEstimator (conf/q/*.yaml)
    model: Any = None
    optim: Any = None
    trainer: Any = None
    logger: Any = None


ConfigStore.instance().store(name="schema", node=TrainConf)


def schema_defaults() -> dict:
    """Every typed key's default value, as plain containers."""
    return OmegaConf.to_container(OmegaConf.structured(TrainConf))


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def compose(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path = CONF_DIR) -> DictConfig:
    """The run's config from the command-line overrides, as ``train.py`` composes it, outside Hydra's
    runtime (tests, notebooks): ``run(compose(["data=digits", "q=fixed"]))``. Bad overrides: UserError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    run_dirs = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "hydra.run.dir"]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = hydra_compose("train", overrides=list(overrides))
        if run_dirs and cfg.get("run_dir") is None:  # outside Hydra's runtime, its run folder is run_dir
            cfg.run_dir = run_dirs[-1]
        return cfg
    except Exception as e:
        from .hydra_errors import user_error

        err = user_error(e, overrides)
        if err is None:
            raise
        raise err from None


def typed(cfg: DictConfig) -> DictConfig:
    """cfg merged onto the schema: values converted to their types, or a UserError naming the key."""
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConf), cfg)
    except ConfigKeyError as e:
        raise UserError(f"{e.full_key}: unknown key") from None
    except ValidationError as e:
        first = str(e.msg).splitlines()[0]
        raise UserError(f"{e.full_key}: {first}") from None


def _number(value, integer: bool = False) -> bool:
    """A finite number (a whole one with ``integer``), not a bool."""
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)


# (key, test, what is allowed): every user-facing key the schema does not type, or types too loosely.
CHECKS = (
    ("seed", lambda v: _number(v, True) and 0 <= v < 2**32, "a whole number in [0, 2**32)"),
    ("level", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("patience", lambda v: v is None or v >= 1, "a whole number >= 1, or null (every epoch, the best kept)"),
    ("selection", lambda v: v in SELECTIONS, _allowed(SELECTIONS)),
    ("protocol.estimate_on", lambda v: v in ESTIMATE_ON, _allowed(ESTIMATE_ON)),
    ("threads", lambda v: v is None or v >= 1, ">= 1, or null for torch's default"),
    ("gpu_fraction", lambda v: v is None or 0.0 < v <= 1.0, "in (0, 1], or null"),
    ("data.train_size", lambda v: v is None or v >= 1, "a positive number of images, or null for all"),
    ("data.val_fraction", lambda v: 0.0 <= v <= 0.5, "in [0, 0.5]"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.shift", lambda v: v >= 0, ">= 0 pixels"),
    ("data.image_size", lambda v: v >= 1, ">= 1 pixels"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("trainer.max_epochs", lambda v: _number(v, True) and v >= 1, "a whole number >= 1"),
    (
        "trainer.devices",
        lambda v: v in (1, "1", "auto"),
        "1: one CPU process or one GPU per run (parallel runs: hydra/launcher=joblib)",
    ),
    *(
        (f"{optim}.optimizer.{key}", ok, allowed)
        for optim in ("optim", *(f"protocol.{role}.optim" for role in ROLES))
        for key, ok, allowed in (
            ("lr", lambda v: _number(v) and v > 0, "a finite number > 0"),
            ("weight_decay", lambda v: v is None or _number(v) and v >= 0, "a finite number >= 0"),
            ("momentum", lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
        )
    ),
    *(
        (f"protocol.{role}.{key}", ok, allowed)
        for role in ROLES
        for key, ok, allowed in (
            ("epochs", lambda v: v is None or (_number(v, True) and v >= 1), "a whole number >= 1, or null"),
            ("selection", lambda v: v is None or v in SELECTIONS, f"{_allowed(SELECTIONS)}, or null"),
        )
    ),
    ("q.start", lambda v: oracle_start(v) is not None, START_ALLOWED),
    ("model.dropout", lambda v: _number(v) and 0 <= v < 1, "in [0, 1): the share of units dropped"),
    ("optim.scheduler.pct_start", lambda v: _number(v) and 0 < v < 1, "in (0, 1): the share of steps that warm up"),
    (
        "optim.scheduler.milestones",
        lambda v: all(_number(m, True) and m >= 1 for m in v),
        "a list of whole epochs >= 1 (at each, lr x gamma)",
    ),
    ("optim.scheduler.gamma", lambda v: _number(v) and 0 < v <= 1, "in (0, 1]: the factor at each milestone"),
    (
        "trainer.enable_checkpointing",
        lambda v: v is True,
        "true only: a killed run resumes from its checkpoints (deleted once results.json is written; "
        "save_model=true keeps the final weights)",
    ),
)


# trainer.precision values that train as they say on each device (others fail in Lightning, or run something
# else: 16-mixed on a CPU is bf16; 64-true and bf16-true do not take the float32 images)
PRECISIONS = {"cpu": ("32-true", "bf16-mixed"), "cuda": ("32-true", "16-mixed", "bf16-mixed")}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
# Trainer keys that would train, validate or test on part of the data (or skip validation epochs that early
# stopping and the validation NLL rely on)
PARTIAL = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
           "check_val_every_n_epoch", "val_check_interval", "overfit_batches", "max_steps", "max_time")


def _check_trainer(cfg: DictConfig) -> None:
    """The trainer keys Lightning would take with a traceback, or run as something else, refused in one line."""
    import inspect

    import pytorch_lightning as pl

    from .devices import training_device

    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in cfg.trainer:
        if key != "_target_" and key not in known:
            raise UserError(f"trainer.{key}: not an argument of pytorch_lightning.Trainer")
        if key in PARTIAL and cfg.trainer[key] is not None:
            raise UserError(
                f"trainer.{key}: trains, validates or tests on part of the data, which the record "
                "would report as a result; not supported (a one-batch check: trainer.fast_dev_run=true)"
            )
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator not in ACCELERATORS:
        raise UserError(f"trainer.accelerator: {accelerator!r} is not allowed; {_allowed(ACCELERATORS)}")
    precision = str(cfg.trainer.get("precision", "32-true"))
    precision = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}.get(precision, precision)
    device = training_device(cfg).type
    if precision not in PRECISIONS[device]:
        raise UserError(f"trainer.precision: {precision!r} is not allowed on {device}; "
                        f"{_allowed(PRECISIONS[device])}")
    fast = cfg.trainer.get("fast_dev_run", False)
    if not isinstance(fast, bool) and not (_number(fast, True) and fast >= 1):
        raise UserError(f"trainer.fast_dev_run: {fast!r} is not allowed; true, false or a number of batches >= 1")


def _check_optim(node, key: str) -> None:
    """An optim node (the run's ``optim``, a stage's ``protocol.<role>.optim``): its optimiser built on a
    parameter and its scheduler built, so an argument the class does not take is one line here."""
    if node is None:
        return
    if not isinstance(node, DictConfig) or "optimizer" not in node:
        raise UserError(f"{key}: an optim node ({{optimizer: ..., scheduler: ...}}, as conf/optim/*.yaml), or null")
    import torch

    optimizer = build(node.optimizer, f"{key}.optimizer")
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as e:
        raise UserError(f"{key}.optimizer: {e}") from None
    scheduler = node.get("scheduler")
    if scheduler is not None:  # a value, or keys added to an optim without a schedule (optim=adagrad +...)
        if not isinstance(scheduler, DictConfig) or "_target_" not in scheduler:
            raise UserError(f"{key}.scheduler: a scheduler node with a _target_ (as in conf/optim/sgd_step.yaml), "
                            "or null")
        build(scheduler, f"{key}.scheduler")


def _check_model_keys(cfg: DictConfig) -> None:
    """The network's own keys (model.hidden, ...), before any data loads: it is built on the meta device (no
    memory) for 28x28 images, and what does not depend on the images is one line now: a ``_target_`` that
    cannot be imported, arguments its constructor does not take (or lacks), a key it refuses ("model.<key>:
    ..."). Anything else may depend on the data's real shape or device and is the run's build's to say."""
    import torch

    shape = {"in_shape": (1, 28, 28), "num_classes": 10}
    try:
        with torch.device("meta"):
            instantiate(cfg.model, **shape)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ValueError) and str(cause).startswith("model."):
            raise UserError(str(cause)) from None
        if unlocated(e) or (isinstance(cause, TypeError) and not takes(cfg.model, **shape)):
            raise build_error(cfg.model, "model", e) from None
    except Exception:  # noqa: BLE001 (the run's build says it, with the real images)
        pass


def layer_optimizer(name, key: str) -> None:
    """A noise layer's own optimiser (protocol.q_optimizer, q.optimizer): a name of layers.LAYER_OPTIMIZERS,
    or None for a parameter group of the network's."""
    from .layers import LAYER_OPTIMIZERS

    if name is not None and not (isinstance(name, str) and name in LAYER_OPTIMIZERS):
        raise UserError(f"{key}: {name!r} is not allowed; {_allowed(LAYER_OPTIMIZERS)}, or null (a parameter group "
                        "of the network's optimiser)")


def _check(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = OmegaConf.select(cfg, key, default="__absent__")
    if value == "__absent__":
        return
    try:
        good = bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise UserError(f"{key}: {value!r} is not allowed; {allowed}")


# Keys that hold a path (noise.matrix: when not a kind): expanded and normalised before anything reads them
PATH_KEYS = ("data.root", "noise.file", "noise.matrix", "noise.outlier_source", "q.features")


def _paths(cfg: DictConfig) -> None:
    from .files import user_path
    from .noise import MATRIX_KINDS

    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and not (key == "noise.matrix" and value in MATRIX_KINDS):
            OmegaConf.update(cfg, key, user_path(value, key), merge=False)


def check_values(cfg: DictConfig) -> DictConfig:
    """The checks that need no heavy library (torch, Lightning): missing keys, types, paths and the values of
    CHECKS. ``check`` runs them first (the command line calls it before it imports the training), so such a
    mistake is answered at Hydra's own speed. Returns the typed config."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]}: required, give it on the command line ({missing[0]}=...)")
    cfg = typed(cfg)
    _paths(cfg)
    for key, ok, allowed in CHECKS:
        _check(cfg, key, ok, allowed)
    return cfg


@dataclass(frozen=True)
class Checked:
    """What ``check`` built while checking: the typed config and the one noise model and Q estimator the run
    uses (each built once, from its YAML node)."""

    cfg: DictConfig
    noise_model: Any
    estimator: Any


def validate(cfg: DictConfig) -> DictConfig:
    """Check every user-facing value; return the typed config. Raises UserError on the first bad one."""
    return check(cfg).cfg


def check(cfg: DictConfig) -> Checked:
    """Check every user-facing value, building the noise model and the Q estimator to check theirs (and the
    optimisers, and the network on the meta device: ``_check_optim``, ``_check_model_keys``); return the two
    with the typed config (train.run uses these very objects). Raises UserError on the first bad one.
    In the order of what each check needs: nothing heavy (``check_values``), then torch (Q's optimiser, the
    data set's name, the noise model, the estimator, the network), then Lightning (the optimisers, whose
    schedules live in module.py, and the trainer): the command line calls this before it imports the
    training, so a mistake of the first two kinds is answered before Lightning is imported."""
    cfg = check_values(cfg)
    layer_optimizer(OmegaConf.select(cfg, "protocol.q_optimizer"), "protocol.q_optimizer")
    from . import datasets

    if cfg.data.name not in datasets.NAMES:
        raise UserError(f"data.name: unknown data set '{cfg.data.name}'; allowed: {_allowed(datasets.NAMES)}")
    if cfg.data.name != "imagefolder":  # keys only an image folder reads: set for another data set, they do nothing
        for key in ("image_size", "num_workers"):
            if cfg.data[key] != getattr(DataConf, key):
                raise UserError(f"data.{key}: only data=imagefolder reads it (data={cfg.data.name} loads its images "
                                "into memory); leave it out")
    if cfg.early_stopping and cfg.data.val_fraction == 0:
        raise UserError("early_stopping: needs a validation slice; set data.val_fraction > 0")
    from .estimators import QEstimator
    from .noise_models import NoiseModel

    noise_model = built(build(cfg.noise, "noise"), cfg.noise, "noise", NoiseModel, "apply")
    if not noise_model.uses_level and not math.isclose(cfg.level, TrainConf.level):
        raise UserError(
            f"level: noise={noise_model.name} does not use level (it would train the same model for every value); "
            f"leave it at its default{noise_model.level_hint}"
        )
    estimator = built(build(cfg.q, "q"), cfg.q, "q", QEstimator, "fit")
    estimator.check(noise_model)
    needs = estimator.needs_validation()
    if needs and cfg.data.val_fraction == 0:
        raise UserError(f"{needs}; set data.val_fraction > 0")
    _check_model_keys(cfg)  # the slowest of these (a network with batch norm loads torch._dynamo on the meta device)
    for key in ("optim", *(f"protocol.{role}.optim" for role in ROLES)):
        _check_optim(OmegaConf.select(cfg, key), key)
    _check_trainer(cfg)
    check_targets(cfg, ["trainer", *(f"logger.{name}" for name in cfg.get("logger") or {})])
    return Checked(cfg, noise_model, estimator)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
