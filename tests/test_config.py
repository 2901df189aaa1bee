"""Every config option composes and validates; every bad input ends with one clean line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from noisy_convnet import config, targets
from noisy_convnet.errors import UserError
from noisy_convnet.train import run

from .conftest import run_cli

# Options that need one more value from the user; without it they must fail validation.
REQUIRED = {
    "noise=labels": "noise.file=labels.npy",
    "data=imagefolder": "data.root=images",
    "noise=custom": "noise._target_=noisy_convnet.noise_models.NoNoise",
    "q=custom": "q._target_=noisy_convnet.estimators.NoQ",
}


@pytest.mark.parametrize("group", [g for g in config.GROUPS if g != "experiment"])
def test_every_option_of_every_group_composes_and_validates(make_cfg, group):
    for option in config.group_options(group):
        choice = f"{group}={option}"
        config.validate(make_cfg(choice, *([REQUIRED[choice]] if choice in REQUIRED else [])))
        if choice in REQUIRED:
            with pytest.raises(UserError, match=f"^{REQUIRED[choice].split('=')[0]}: "):
                run(make_cfg(choice))  # before any data is read


def test_documented_overrides_reach_the_config(make_cfg, tmp_path):
    cfg = config.validate(
        make_cfg(
            "data=mnist5k", "data.train_size=1000", "noise=flip", "noise.matrix=pair", "level=0.3",
            "q=fixed", "model=convnet_small", "seed=3", "trainer.max_epochs=7",
        )
    )
    assert (cfg.data.name, cfg.data.train_size, cfg.noise.matrix, cfg.level) == ("mnist5k", 1000, "pair", 0.3)
    assert (targets.build(cfg.q, "q").name, cfg.seed, cfg.trainer.max_epochs) == ("fixed", 3, 7)


@pytest.mark.parametrize(
    "override, key",
    [
        ("level=1.5", "level"),
        ("level=-0.1", "level"),
        ("level=abc", "level"),
        ("data.train_size=many", "data.train_size"),
        ("data.val_fraction=0.9", "data.val_fraction"),
        ("q.mode=sometimes", "q.mode"),  # no such key
        ("q.param=sometimes", "q.param"),
        ("q.warmup_epochs=-1", "q.warmup_epochs"),
        ("noise.outlier_ratio=1", "noise.outlier_ratio"),  # a key of another noise model
        ("+noise.outlier_ratio=1", "noise"),  # forced in: the flip model has no such argument
        ("q._target_=noisy_convnet.nowhere.Q", "q._target_"),  # cannot be imported
        ("noise.matrix=diagonal", "noise.matrix"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("q.reg_weight=[0.5,-1]", "q.reg_weight"),
        ("q.init_flip=[0.01,1.5]", "q.init_flip"),
        ("q.lr=[0.1,abc]", "q.lr"),
        ("q.regulariser=lasso", "q.regulariser"),
        ("q.balance_weight=-1", "q.balance_weight"),
    ],
)
def test_validate_names_the_bad_key(make_cfg, override, key):
    with pytest.raises(UserError, match=f"^{key}: "):  # when composed (types, unknown keys) or validated
        config.validate(make_cfg(override))


def test_hydra_composition_errors_become_one_line():
    with pytest.raises(UserError, match="^data: unknown option 'imagenet9'; allowed: .*mnist5k"):
        config.compose(["data=imagenet9"])
    with pytest.raises(UserError, match="^nois: unknown key"):
        config.compose(["nois=flip"])
    with pytest.raises(UserError, match="^level: Value 'abc' .*could not be converted to Float"):
        config.compose(["level=abc"])
    cfg = config.compose(["logger=[csv,tensorboard]", "run_dir=/tmp/unused"])  # Hydra's list syntax composes
    assert set(cfg.logger) == {"csv", "tensorboard"}


@pytest.mark.parametrize("noise", ["none", "outlier", "labels"])
def test_a_noise_model_without_level_refuses_one(make_cfg, noise):
    extra = ["noise.file=labels.npy"] if noise == "labels" else []
    config.validate(make_cfg(f"noise={noise}", *extra))  # the default level is fine
    with pytest.raises(UserError, match=f"^level: noise={noise} does not use level"):
        config.validate(make_cfg(f"noise={noise}", "level=0.3", *extra))


def _bad_matrix_files(tmp_path):
    np.save(tmp_path / "shape.npy", np.eye(3))
    np.save(tmp_path / "sums.npy", np.full((10, 10), 0.2))
    return tmp_path / "shape.npy", tmp_path / "sums.npy"


@pytest.mark.parametrize(
    "args, key",
    [
        (["level=1.5"], "level"),
        (["level=abc"], "level"),
        (["data=imagenet9"], "data"),
        (["model=resnet999"], "model"),
        (["noise=gaussian"], "noise"),
        (["q=sometimes"], "q"),
        (["data.train_size=5000"], "data.train_size"),
        (["data.train_size=5"], "data.train_size"),
        (["noise.matrix=missing/q.npy"], "noise.matrix"),
        (["noise.matrix=SHAPE"], "noise.matrix"),
        (["noise.matrix=SUMS"], "noise.matrix"),
        (["noise.matrix=uniform", "level=0.9", "q=fixed"], "q"),  # uniform at (K-1)/K: singular Q*
        (["nois=flip"], "nois"),
        (["noise=outlier", "level=0.2"], "level"),
        (["hydra.mode=MULTIRUN", "q=none,sometimes", "hydra.sweep.dir=SWEEP"], "q"),
        (["hydra.run.dir=SHAPE"], "hydra.run.dir"),  # an existing file: Hydra cannot make the directory
        (["hydra.run.dir=SHAPE/run"], "hydra.run.dir"),
        ([f"hydra.run.dir=/tmp/{'a' * 300}"], "hydra.run.dir"),  # a name longer than the file system allows
        (["run_dir=SHAPE"], "run_dir"),
    ],
)
def test_bad_input_ends_with_one_line_and_no_results(tmp_path, args, key):
    shape, sums = _bad_matrix_files(tmp_path)
    args = [a.replace("SHAPE", str(shape)).replace("SUMS", str(sums)).replace("SWEEP", str(tmp_path)) for a in args]
    p = run_cli("data=digits", *args, "logger=none", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(err) == 1, p.stderr
    assert err[0].startswith(f"error: {key}: "), err[0]
    assert "Traceback" not in p.stderr + p.stdout
    # not even Hydra's .hydra/ and log in the default run folder: nothing is left of a refused run
    assert [f.relative_to(tmp_path) for f in (tmp_path / "outputs").rglob("*")] in ([], [Path("outputs/runs")])


def test_a_refusal_keeps_a_folder_the_user_named(tmp_path):
    """hydra.run.dir= (or ++hydra.run.dir=) names a folder of the user's, here one with an earlier run's
    .hydra/ and log, or the working directory: a refused run leaves it; a run in its default folder that
    moved into it (hydra.job.chdir=true) leaves nothing."""
    for override in ("hydra.run.dir", "++hydra.run.dir"):
        mine = tmp_path / override
        (mine / ".hydra").mkdir(parents=True)
        (mine / "cli.log").write_text("an earlier run\n")
        p = run_cli("level=1.5", f"{override}={mine}")
        assert p.returncode == 2 and (mine / "cli.log").read_text().startswith("an earlier run"), p.stderr
    (tmp_path / "here").mkdir()
    assert run_cli("level=1.5", "hydra.run.dir=.", cwd=tmp_path / "here").returncode == 2
    assert (tmp_path / "here" / ".hydra").is_dir()
    (tmp_path / "moved").mkdir()
    assert run_cli("level=1.5", "hydra.job.chdir=true", cwd=tmp_path / "moved").returncode == 2
    assert sorted(f.relative_to(tmp_path) for f in (tmp_path / "moved").rglob("*")) == [Path("moved/outputs"),
                                                                                   Path("moved/outputs/runs")]


def test_a_refused_cell_of_a_sweep_leaves_no_folder_and_an_earlier_runs_files_stay(tmp_path):
    """A key wrong in every cell left a folder of Hydra's files per cell, each then reported as a failed or
    unfinished run; a folder that holds anything besides them (an earlier run's) is kept."""
    (tmp_path / "sweep" / "level=1.5,seed=1").mkdir(parents=True)
    (tmp_path / "sweep" / "level=1.5,seed=1" / "notes.txt").write_text("mine")
    p = run_cli("-m", "data=digits", "level=1.5", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", "logger=none")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("error: cell ") == 2
    assert sorted(f.name for f in (tmp_path / "sweep").iterdir()) == ["level=1.5,seed=1", "multirun.yaml"]
    assert (tmp_path / "sweep" / "level=1.5,seed=1" / "notes.txt").read_text() == "mine"


def test_choosing_among_candidates_needs_a_validation_slice(make_cfg):
    with pytest.raises(UserError, match="^q.init_flip: choosing among 2 values needs a validation slice"):
        config.validate(make_cfg("q=learned", "q.init_flip=[0.01,0.5]", "data.val_fraction=0"))
    config.validate(make_cfg("q=learned", "q.init_flip=0.01", "data.val_fraction=0"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs"),
        ("trainer.max_epochs=null", "trainer.max_epochs"),
        ("trainer.devices=2", "trainer.devices"),
        ("seed=-1", "seed"),
        ("seed=99999999999999999", "seed"),
        ("optim.optimizer.lr=-0.01", "optim.optimizer.lr"),
        ("optim.optimizer.lr=inf", "optim.optimizer.lr"),
        ("optim.scheduler.pct_start=2", "optim.scheduler.pct_start"),  # ran a schedule that never warmed up
        ("optim=sgd optim.optimizer.momentum=1.5", "optim.optimizer.momentum"),
        ("threads=-1", "threads"),
        ("threads=0", "threads"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.shift=-1", "data.shift"),
        ("data.image_size=0", "data.image_size"),
        ("q=null", "q"),
        ("q.lr=inf", "q.lr"),
        ("q.reg_weight=inf", "q.reg_weight"),
        ("q.init_flip=0", "q.init_flip"),
        ("+trainer.enable_checkpointing=false", "trainer.enable_checkpointing"),  # was silently overridden
        # values Hydra or Lightning accepted that ran as something else, or ended in a traceback
        ("q.warmup_epochs=1.5", "q.warmup_epochs"),
        ("q=volmin q.init=true", "q.init"),
        ("noise=outlier noise.labelled_outliers=2.5", "noise.labelled_outliers"),
        ("trainer.precision=bogus", "trainer.precision"),
        ("trainer.precision=64-true", "trainer.precision"),
        ("trainer.precision=bf16-true", "trainer.precision"),
        ("trainer.precision=transformer-engine", "trainer.precision"),
        ("trainer.precision=16-mixed", "trainer.precision"),  # on a CPU Lightning runs bf16 instead
        ("trainer.fast_dev_run=abc", "trainer.fast_dev_run"),
        ("trainer.fast_dev_run=-1", "trainer.fast_dev_run"),
        ("trainer.accelerator=tpu", "trainer.accelerator"),
        ("data=digits data.image_size=64", "data.image_size"),  # only an image folder reads it: did nothing
        ("data=mnist5k data.num_workers=8", "data.num_workers"),
        ("+trainer.foo=1", "trainer.foo"),
        ("noise=labels noise.file=x.npy noise.allow_implausible=maybe", "noise.allow_implausible"),
        ("level=0.1 noise.matrix=Q.npy", "level"),  # a file's matrix: level unused
        ("q=hoc q.rounds=0", "q.rounds"),
        ("q=hoc q.steps=0", "q.steps"),
        ("q=hoc q.rounds=1.5", "q.rounds"),
        ("q=hoc noise=outlier", "q"),
        ("q=trevision noise=outlier", "q"),
        ("q=trevision q.revision_lr=0", "q.revision_lr"),
        ("noise=instance noise.rate_sd=0", "noise.rate_sd"),
        ("noise=instance noise.rate_sd=-1", "noise.rate_sd"),
        ("noise=instance level=1.5", "level"),
        ("noise=outlier noise.inlier_classes=4.5", "noise.inlier_classes"),
        ("noise=outlier noise.outlier_ratio=true", "noise.outlier_ratio"),
        ("q=anchor q.anchor_percentile=0.97", "q.anchor_percentile"),  # a fraction where a percentile is meant
        ("trainer.limit_test_batches=0.1", "trainer.limit_test_batches"),  # a result from part of the test set
        ("trainer.check_val_every_n_epoch=50", "trainer.check_val_every_n_epoch"),
        ("q=hoc q.features=123", "q.features"),
        ("q=hoc q.features=missing.npy", "q.features"),
        ("q=custom q._target_=builtins.print", "q._target_"),  # a function
        ("q=custom q._target_=collections.OrderedDict", "q._target_"),  # a plain class
        ("q=custom q._target_=noisy_convnet.estimators.QEstimator", "q._target_"),  # the abstract base
        ("noise=custom noise._target_=noisy_convnet.estimators.NoQ", "noise._target_"),  # the other family
        ("noise=custom noise._target_=noisy_convnet.noise_models.NoiseModel", "noise._target_"),
        # the network's keys and the optimiser's arguments, before the data loads (were a traceback after it)
        ("model.hidden=0", "model.hidden"),
        ("model=mlp model.hidden=128", "model.hidden"),
        ("model=mlp model.dropout=1.5", "model.dropout"),
        ("model=resnet18 model.small_stem=no", "model.small_stem"),  # a string read as true
        ("model=lenet5 +model.width=2", "model"),  # an argument LeNet5 does not take
        ("model=mlp ~model.hidden", "model"),  # one it needs
        ("model._target_=noisy_convnet.models.Nope", "model._target_"),  # cannot be imported
        ("q=volmin q.optimizer=rmsprop", "q.optimizer"),
        ("optim=adagrad +optim.optimizer.momentum=0.9", "optim.optimizer"),
        ("optim=adagrad +optim.scheduler.gamma=0.5", "optim.scheduler"),  # no schedule to set
        ("optim.scheduler=5", "optim.scheduler"),  # was a TypeError traceback
        ("protocol.q_optimizer=rmsprop", "protocol.q_optimizer"),  # was named q.optimizer, a key not given
    ],
)
def test_every_user_key_is_checked_before_any_work(make_cfg, override, key, tmp_path):
    """Values that reached torch, numpy or Lightning before any check (tracebacks, or silently ignored)."""
    np.save(tmp_path / "Q.npy", np.eye(10))
    with pytest.raises(UserError, match=f"^{key}: "):
        config.validate(make_cfg(*override.replace("Q.npy", str(tmp_path / "Q.npy")).split()))


class NumpyInit(torch.nn.Module):
    """A network that sets its weights through numpy: on the meta device that is a TypeError."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(int(np.prod(in_shape)), num_classes)
        self.fc.weight.data.copy_(torch.from_numpy(np.zeros_like(self.fc.weight.detach().numpy())))


class ColourOnly(torch.nn.Module):
    """A network for 3-channel images: refuses the 1x28x28 of the check with a UserError about the data."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        if in_shape[0] != 3:
            raise UserError(f"data: this network takes colour images, not {list(in_shape)}")
        self.fc = torch.nn.Linear(int(np.prod(in_shape)), num_classes)


@pytest.mark.parametrize("network", [NumpyInit, ColourOnly])
def test_the_meta_build_refuses_only_what_does_not_depend_on_the_images(make_cfg, network):
    """The check builds the network on the meta device for 28x28 images: what fails there for the device or
    the shape is the run's build's to say (with the real images), not a refusal of the keys."""
    cfg = make_cfg("~model", f"+model._target_={network.__module__}.{network.__name__}")
    assert config.check(cfg).cfg.model._target_.endswith(network.__name__)
    if network is NumpyInit:  # and it is a network the run builds
        assert isinstance(targets.build(cfg.model, "model", in_shape=(1, 8, 8), num_classes=10), NumpyInit)


def test_a_key_the_network_is_also_given_is_left_to_the_run(make_cfg):
    """model.num_classes is also passed by the run (Hydra's kwargs win): the check binds it once, no KeyError."""
    name = f"{NumpyInit.__module__}.NumpyInit"
    cfg = config.check(make_cfg("~model", f"+model._target_={name}", "+model.num_classes=10")).cfg
    assert cfg.model.num_classes == 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["q._target_=mine_dep.MyQ"], r"^q._target_: importing 'mine_dep.MyQ' failed at .*mine_dep.py:1: "
                                      r"ModuleNotFoundError: No module named 'not_installed_anywhere'$"),
        (["q._target_=mine_syntax.MyQ"], r"^q._target_: importing 'mine_syntax.MyQ' failed: SyntaxError: .*line 1"),
        (["q._target_=mine_dep.Nope.MyQ"], r"^q._target_: importing 'mine_dep.Nope.MyQ' failed"),
        (["q._target_=nowhere_at_all.MyQ"], r"^q._target_: cannot import 'nowhere_at_all.MyQ' \(.*'nowhere_at_all'"),
        (["~model", "+model._target_=torch.nn.Sequential", "+model._args_=[{_target_: torch.nn.Nope}]"],
         r"^model._args_0._target_: cannot import 'torch.nn.Nope'"),  # the inner node's key and target
        (["trainer._target_=pytorch_lightning.Nope"], r"^trainer._target_: cannot import 'pytorch_lightning.Nope'"),
        (["logger=csv", "logger.csv._target_=pytorch_lightning.loggers.Nope"], r"^logger.csv._target_: cannot import"),
    ],
)
def test_a_target_that_cannot_be_imported_is_one_line_saying_why(make_cfg, tmp_path, monkeypatch, overrides, message):
    """A path that names nothing says so; a user's module that fails to import says its own error and where
    (Hydra's hint, "is it installed?", would hide it)."""
    (tmp_path / "mine_dep.py").write_text("import not_installed_anywhere\n")
    (tmp_path / "mine_syntax.py").write_text("def MyQ(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=message):
        config.check(make_cfg(*overrides))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.shift=8"], "data.shift"),  # as large as the 8x8 digits: blank images
        (["model=alexnet"], "model"),  # too deep for 8x8 images
        (["early_stopping=true", "data.val_fraction=0.0001"], "data.val_fraction"),  # rounds to no image
        (["q.warmup_epochs=3", "trainer.max_epochs=3"], "q.warmup_epochs"),  # Q never leaves its start
        (["early_stopping=true", "data.val_fraction=0.02"], "data.val_fraction"),  # 36 images: under 10 per class
        (["q=anchor", "data.val_fraction=0.02"], "data.val_fraction"),
        (["q=hoc", "q.sample_size=100000"], "q.sample_size"),  # more than the training images
        (["noise=instance", "level=0"], "level"),  # still ~8% flips: noise=none is clean
        (["model._target_=collections.OrderedDict"], "model._target_"),  # not a network
    ],
)
def test_what_needs_the_data_is_checked_before_training(make_cfg, tmp_path, overrides, key):
    with pytest.raises(UserError, match=f"^{key}: "):
        run(make_cfg(*overrides))
    assert not (tmp_path / "run" / "results.json").exists()
    left = sorted(f.name for f in (tmp_path / "run").iterdir()) if (tmp_path / "run").exists() else []
    assert left in ([], [".lock"])  # the checkpoints' fingerprint and the labels kept went with the refusal


@pytest.mark.parametrize("args", [["level=1.5"], ["data=imagenet9"], ["q=nope"], ["seed=-1"], ["data.root="],
                                  ["protocol.plain.epochs=0"], ["protocol.reweight.selection=best"], ["q.start=yes"],
                                  ["experiment=protocol_trevision", "protocol.revision.optim.optimizer.lr=-1"],
                                  ["model.dropout=1.5"]])
def test_a_mistake_is_answered_before_torch_and_lightning_are_imported(tmp_path, args):
    """What makes it quick (README: under a second where a run's imports take ten): exit 2 with torch,
    Lightning, W&B, matplotlib and pandas never imported."""
    assert _answered(args, tmp_path) == "exit 2 heavy []"


@pytest.mark.parametrize("args", [["model=mlp", "model.hidden=128"], ["model=lenet5", "+model.width=2"],
                                  ["protocol.q_optimizer=rmsprop"], ["q=volmin", "q.optimizer=rmsprop"],
                                  ["noise=outlier", "q=anchor"], ["+q.foo=1"], ["noise=none", "level=0.3"],
                                  ["data.name=nope"], ["optim=adagrad", "+optim.optimizer.momentum=0.9"]])
def test_a_mistake_of_the_network_the_noise_or_q_is_answered_before_lightning_is_imported(tmp_path, args):
    """The network's keys (built on the meta device), Q's optimiser, the noise model's and the estimator's keys
    and an optimiser without a schedule need torch only: config.check asks them before what needs Lightning
    (a schedule, the trainer), and the command line checks before it imports the training."""
    assert _answered(args, tmp_path) == "exit 2 heavy ['torch']"


def _answered(args: list[str], run_dir) -> str:
    """How the command line ended for args: its exit status and which heavy libraries it had imported."""
    code = ("import sys\nfrom noisy_convnet.cli import entry\nsys.argv = ['train.py', *sys.argv[1:]]\n"
            "try:\n    entry()\nexcept SystemExit as e:\n"
            "    heavy = [m for m in ('torch', 'pytorch_lightning', 'wandb', 'matplotlib', 'pandas')"
            " if m in sys.modules]\n"
            "    print('exit', e.code, 'heavy', heavy)\n")
    p = subprocess.run([sys.executable, "-c", code, *args, f"hydra.run.dir={run_dir}"], capture_output=True,
                       text=True, timeout=120)
    assert p.stdout.strip(), p.stderr
    return p.stdout.strip().splitlines()[-1]
