"""A whole run: results.json and its fields, reproducibility, and the paper's claims at small scale."""

import json
import os

import numpy as np
import pytest

from noisy_convnet import noise
from noisy_convnet.train import run

from .conftest import run_cli

FIELDS = {
    "dataset", "num_classes", "train_size", "noise", "matrix", "level", "q", "seed", "epochs", "test_error",
    "actual_noise", "Q_true", "Q", "q_error", "confusion", "train_images_per_s", "wall_s", "trainings", "q_label",
}


def test_cli_run_writes_results_with_every_field(tmp_path):
    run_dir = tmp_path / "run"
    p = run_cli(
        "data=digits", "noise=flip", "level=0.5", "q=learned", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
    )
    assert p.returncode == 0, p.stderr
    assert "test error" in p.stdout and str(run_dir / "results.json") in p.stdout
    r = json.loads((run_dir / "results.json").read_text())
    assert FIELDS <= r.keys()
    assert (r["dataset"], r["num_classes"], r["q"], r["level"], r["epochs"]) == ("digits", 10, "learned", 0.5, 2)
    assert r["test_error"] < 0.6  # 2 epochs on the digits at 0.5 noise learn (chance: 0.9)
    q, q_true, conf = (np.array(r[k]) for k in ("Q", "Q_true", "confusion"))
    assert q.shape == q_true.shape == conf.shape == (10, 10)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(conf.sum(0), 1.0, atol=1e-4)  # Eq. 4: columns are mean softmax outputs
    assert r["q_error"] == pytest.approx(noise.q_error(q, q_true), abs=1e-4)
    assert 0.4 < r["actual_noise"] < 0.6
    assert (run_dir / "Q.png").stat().st_size > 1000
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert r["provenance"]["torch"] and len(r["provenance"]["commit"] or "") in (0, 40)  # None outside a checkout
    assert r["provenance"]["cpu"] and r["provenance"]["cpu_capability"]  # numbers are exact per machine
    assert r["threads"] >= 1 and isinstance(r["channels_last"], bool)
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert not list(run_dir.glob(".results.json.*"))  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (run_dir / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any file it writes


def test_same_config_and_seed_give_the_same_numbers(make_cfg, tmp_path):
    a = run(make_cfg("q=learned", "trainer.max_epochs=2", run_dir=tmp_path / "a"))
    b = run(make_cfg("q=learned", "trainer.max_epochs=2", run_dir=tmp_path / "b"))
    assert a.test_error == b.test_error
    np.testing.assert_array_equal(a.Q, b.Q)
    c = run(make_cfg("q=learned", "trainer.max_epochs=2", "seed=1", run_dir=tmp_path / "c"))
    assert not np.array_equal(a.Q_true, c.Q_true)


def test_noisy_labels_do_not_depend_on_the_q_mode(make_cfg, tmp_path):
    a = run(make_cfg("q=none", run_dir=tmp_path / "a"))
    b = run(make_cfg("q=fixed", run_dir=tmp_path / "b"))
    assert a.actual_noise == b.actual_noise and np.array_equal(a.Q_true, b.Q_true)
    assert a.Q is None and a.q_error is None and b.q_error == pytest.approx(0.0, abs=1e-6)


def test_early_stopping_keeps_the_best_model_and_may_stop_early(make_cfg, tmp_path, monkeypatch):
    """The tested (and saved) weights are the best validation epoch's, not the last epoch's."""
    import shutil

    import torch

    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # keep the checkpoints to compare with
    r = run(make_cfg("q=none", "early_stopping=true", "patience=1", "trainer.max_epochs=30", "level=0.6",
                     "save_model=true"))
    assert r.early_stopping is True and r.epochs < 30
    (ckpts,) = (tmp_path / "run" / "stages").glob("plain-*/checkpoints")  # the shared early-stopped plain net
    (best,) = ckpts.glob("best-*.ckpt")
    best, last = (torch.load(p, weights_only=False) for p in (best, ckpts / "last.ckpt"))
    (watch,) = [v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint") and v["monitor"]]
    assert r.val_nll == pytest.approx(float(watch["best_model_score"]))
    saved = torch.load(tmp_path / "run" / "model.pt")
    assert all(torch.equal(v, best["state_dict"][f"net.{k}"]) for k, v in saved.items())
    assert not all(torch.equal(v, last["state_dict"][f"net.{k}"]) for k, v in saved.items())


def test_fixed_q_beats_no_noise_layer_and_learned_q_moves_toward_q_true(make_cfg, tmp_path):
    """The paper's claims on the 8x8 digits at 50% random flip noise, 20 epochs (~3 s each). Measured:
    none 17.3%, fixed 7.3%, learned 5.0% test error; learned Q goes from q_error 0.39 at its start to 0.20."""
    common = ["noise.matrix=random", "level=0.5", "trainer.max_epochs=20"]
    none = run(make_cfg("q=none", *common, run_dir=tmp_path / "none"))
    fixed = run(make_cfg("q=fixed", *common, run_dir=tmp_path / "fixed"))
    learned = run(make_cfg("q=learned", *common, run_dir=tmp_path / "learned"))
    assert fixed.test_error < none.test_error - 0.05
    start = noise.q_error(np.eye(10) * 0.5 + 0.5 / 9 * (1 - np.eye(10)), np.array(learned.Q_true))
    assert learned.q_error < start - 0.15
    assert learned.test_error <= fixed.test_error + 0.03


def test_balance_term_keeps_every_class_alive_at_high_noise(make_cfg, tmp_path):
    """8x8 digits, random Q* at 0.7, 20 epochs (~4 s each). Without the balance term the learned model
    merges classes and leaves base outputs dead (measured: 4 outputs with <= 0.2% of the test images' mass,
    66% test error); with it every output is used (>= 7.6%) and the test error is 44%."""
    common = ["q=learned", "noise.matrix=random", "level=0.7", "trainer.max_epochs=20"]
    on = run(make_cfg(*common, run_dir=tmp_path / "on"))
    off = run(make_cfg(*common, "q.balance_weight=0", run_dir=tmp_path / "off"))
    mass = {name: np.array(r.confusion).mean(axis=1) for name, r in (("on", on), ("off", off))}  # per output
    assert mass["on"].min() >= 0.05 and mass["off"].min() < 0.01
    assert on.test_error <= off.test_error - 0.1


def test_a_crash_after_training_keeps_the_trained_net_for_the_rerun(make_cfg, tmp_path, monkeypatch):
    """A failure after the epochs (here: in testing) leaves the trained net's checkpoint and no results.json;
    the rerun tests it without training again and records what an uncrashed run records."""
    from noisy_convnet.module import NoisyLabelModule

    steps = []
    train_step = NoisyLabelModule.training_step
    monkeypatch.setattr(NoisyLabelModule, "training_step", lambda self, *a: steps.append(1) or train_step(self, *a))
    test_step = NoisyLabelModule.test_step

    def broken(self, *a):
        raise OSError("disk gone while testing")

    monkeypatch.setattr(NoisyLabelModule, "test_step", broken)
    cfg = ["q=learned", "trainer.max_epochs=3"]
    with pytest.raises(OSError, match="disk gone"):
        run(make_cfg(*cfg))
    assert (tmp_path / "run" / "checkpoints" / "training1" / "last.ckpt").is_file() and steps
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.setattr(NoisyLabelModule, "test_step", test_step)
    steps.clear()
    resumed = run(make_cfg(*cfg))
    assert not steps and not (tmp_path / "run" / "checkpoints").exists()  # no training step ran again
    fresh = run(make_cfg(*cfg, run_dir=tmp_path / "fresh"))
    assert (resumed.test_error, resumed.epochs) == (fresh.test_error, fresh.epochs)
    np.testing.assert_array_equal(resumed.Q, fresh.Q)


@pytest.mark.slow
def test_reference_numbers_mnist5k_random_level_half(make_cfg, tmp_path):
    """The README's table: MNIST-5k, random Q* at 0.5, 4,000 images, seed 0, defaults (~2 minutes)."""
    common = ["data=mnist5k", "noise=flip", "noise.matrix=random", "level=0.5", "data.train_size=4000", "seed=0"]
    common += ["logger=none", "trainer.enable_progress_bar=false"]
    r = {q: run(make_cfg(f"q={q}", *common, fast=False, run_dir=tmp_path / q)) for q in ("none", "fixed", "learned")}
    err = {q: x.test_error for q, x in r.items()}
    assert err["fixed"] <= 0.10
    assert err["fixed"] <= err["none"] - 0.15
    assert abs(err["learned"] - err["fixed"]) <= 0.03
    assert r["learned"].q_error <= 0.3


@pytest.mark.parametrize("logger, pattern", [("csv", "csv/metrics.csv"), ("tensorboard", "tensorboard/events.*"),
                                             ("wandb", "wandb/offline-run-*")])
def test_each_logger_writes_under_the_run_dir(make_cfg, tmp_path, monkeypatch, logger, pattern):
    # No API key and no ~/.netrc: W&B must fall back to offline instead of asking for a login.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    run(make_cfg(f"logger={logger}"))
    assert list((tmp_path / "run").glob(pattern)), sorted(p.name for p in (tmp_path / "run").rglob("*"))


def test_listed_candidates_are_chosen_by_the_noisy_validation_nll(make_cfg):
    r = run(make_cfg("q=learned", "trainer.max_epochs=2", "q.reg_weight=[0.5,0.1]", "q.init_flip=[0.01,0.5]"))
    sel = r.fields["selection"]
    assert len(sel) == 4 and {(c["reg_weight"], c["init_flip"]) for c in sel} == {
        (0.5, 0.01),
        (0.5, 0.5),
        (0.1, 0.01),
        (0.1, 0.5),
    }
    best = min(sel, key=lambda c: c["val_nll"])
    assert r.fields["q_choice"] == {"reg_weight": best["reg_weight"], "init_flip": best["init_flip"]}
    assert r.fields["reg_weight"] == best["reg_weight"] and r.val_nll == pytest.approx(best["val_nll"], abs=1e-5)
    assert r.test_error == pytest.approx(best["test_error"], abs=1e-5)
    assert r.trainings == 4


@pytest.mark.parametrize("noise_model", ["none", "flip", "labels", "outlier"])
def test_every_estimator_runs_with_every_noise_model_at_its_defaults(make_cfg, tmp_path, noise_model):
    """One epoch of q=none|fixed|learned on each noise model with its defaults (the outlier model sizes its
    inliers to what the 8x8 digits give: at ratio 1, as many as the outlier classes hold, less 50 labelled)."""
    from noisy_convnet import datasets

    extra, y = [], datasets.load("digits").pool.y.numpy()
    if noise_model == "labels":  # a label file in the pool's order: every 4th label moved to the next class
        np.save(tmp_path / "labels.npy", np.where(np.arange(len(y)) % 4 == 0, (y + 1) % 10, y))
        extra = [f"noise.file={tmp_path / 'labels.npy'}"]
    for q in ("none", "fixed", "learned"):
        r = run(make_cfg(f"noise={noise_model}", f"q={q}", *extra, run_dir=tmp_path / q))
        assert (r.q, r.noise, r.trainings, r.epochs) == (q, noise_model, 1, 1)
        k = r.num_classes + (noise_model == "outlier")  # the outlier model's K+1-th class
        assert np.array(r.Q_true).shape == (k, k)
        assert (r.Q is None) == (q == "none") and (r.q_error is not None and r.q_error < 1e-6) == (q == "fixed")
        assert r.actual_noise == pytest.approx(
            {"none": 0.0, "flip": 0.5, "labels": 0.25}.get(noise_model, 0.5), abs=0.05
        )
        if noise_model == "outlier":
            n_in = min((y < 5).sum(), (y >= 5).sum() - 50)
            assert r.train_size == r.fields["n_in"] == r.fields["n_out"] == n_in
            assert r.inlier_ap is not None


def test_run_works_on_a_config_composed_in_python_without_hydra(tmp_path, monkeypatch):
    """The README's Python entry: compose, run; the default run directory is unique per run."""
    from noisy_convnet.config import compose

    monkeypatch.chdir(tmp_path)
    r = run(compose(["data=digits", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false"]))
    runs = list((tmp_path / "outputs" / "runs").glob("*/*/results.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["test_error"] == pytest.approx(r.test_error, abs=1e-6)


def test_every_logger_gets_the_config_and_the_learning_rate(make_cfg, tmp_path, monkeypatch):
    """'logger=[csv,tensorboard,wandb]' logs to all three; each holds the keys a dashboard groups runs by
    (level, q, seed, data.train_size), W&B (offline: no key here) its metrics and learning rates too."""
    import yaml

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    run(make_cfg("logger=[csv,tensorboard,wandb]", "q=learned", "level=0.3", "seed=2", "trainer.max_epochs=2"))
    d = tmp_path / "run"
    hparams = yaml.safe_load((d / "csv" / "hparams.yaml").read_text())
    assert (hparams["level"], hparams["q"], hparams["seed"], hparams["data.train_size"]) == (0.3, "learned", 2, None)
    assert "lr-AdamW" in (d / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert list((d / "tensorboard").glob("events.*")) and (d / "tensorboard" / "hparams.yaml").is_file()
    (run_dir,) = (d / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")  # offline: config, metrics and images are records in this file
    data = records.read_bytes()
    for key in (b"level", b"seed", b"data.train_size", b"learned", b"lr-AdamW", b"train/q_error", b"val/nll"):
        assert key in data, key
    assert list((run_dir / "files" / "media" / "images").glob("Q_*.png"))  # the Q heatmaps


KILL_AT_EPOCH_5 = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO)  # the project's own lines ("training 1 resumes from ...last.ckpt")
import pytorch_lightning as pl
from noisy_convnet import fitting
from noisy_convnet.config import compose
from noisy_convnet.train import run

class Kill(pl.Callback):  # as a node lost at epoch 5 of 10 would, after epoch 4's checkpoint
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 5:
            os.kill(os.getpid(), signal.SIGKILL)

build = fitting.build_callbacks
if sys.argv[1].startswith("kill:"):  # kill:trainingN (a training of the run) or kill:plain (a shared stage)
    hit = lambda path: any(part.startswith(sys.argv[1][5:]) for part in path.parts[-2:])
    fitting.build_callbacks = lambda *a: build(*a) + ([Kill()] if hit(a[1]) else [])
run(compose(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "q, victim",
    [
        ("q=learned model.dropout=0.3", "training1"),  # dropout: the random generators resume too
        pytest.param("q=anchor", "plain", marks=pytest.mark.slow),
        pytest.param("q.reg_weight=[0.5,0.2]", "training2", marks=pytest.mark.slow),
    ],
)
def test_a_training_killed_at_epoch_5_resumes_there_and_ends_as_an_uninterrupted_one(tmp_path, q, victim):
    """SIGKILL at epoch 5 of 10, then the same command: it resumes from epoch 5 (model, Q, optimiser and
    schedule restored) and ends with the same test error and Q as a run never killed (CPU, exact). anchor
    trains two nets (the kill lands in the first, the early-stopped plain net, a shared stage with its
    checkpoints in its stage folder); with two learned-Q candidates it lands in the second, and the
    finished first keeps its validation NLL for the selection."""
    import subprocess
    import sys

    def go(mode, run_dir, *extra):
        args = ["data=digits", *q.split(), "trainer.max_epochs=10", "threads=1", "logger=none",
                "trainer.enable_progress_bar=false", f"run_dir={run_dir}", *extra]
        return subprocess.run([sys.executable, "-c", KILL_AT_EPOCH_5, mode, *args], capture_output=True, text=True,
                              timeout=300)

    assert go("run", tmp_path / "whole").returncode == 0
    killed = go(f"kill:{victim}", tmp_path / "cut")
    assert killed.returncode == -9 and not (tmp_path / "cut" / "results.json").exists()
    (last,) = [p for p in (tmp_path / "cut").rglob("last.ckpt") if victim in str(p.relative_to(tmp_path))]
    resumed = go("run", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumes from {last}" in resumed.stderr  # restored from there (the project's own line)
    assert not list((tmp_path / "cut").rglob("*.ckpt"))  # a finished run keeps no checkpoint
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    keys = ("test_error", "q_error", "Q", "epochs", "val_nll", "selection")
    assert [a.get(k) for k in keys] == [b.get(k) for k in keys]
    if victim == "training1":  # a killed run's checkpoints serve only the same config: another one starts anew
        assert go(f"kill:{victim}", tmp_path / "cut2").returncode == -9
        assert go("run", tmp_path / "cut2", "seed=1").returncode == 0
        assert go("run", tmp_path / "fresh", "seed=1").returncode == 0
        c, d = (json.loads((tmp_path / x / "results.json").read_text()) for x in ("cut2", "fresh"))
        assert (c["test_error"], c["Q"]) == (d["test_error"], d["Q"])


def test_a_run_prints_no_library_chatter_unless_verbose(tmp_path):
    """No advertising tips, accelerator banners or the libraries' deprecation notices in a default run; the
    project's own lines stay; verbose=true brings the libraries' lines back."""
    args = ["data=digits", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "q=anchor"]  # early-stopped too
    p = run_cli(*args, f"hydra.run.dir={tmp_path / 'quiet'}")
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "test error" in out and "noisy training images" in out, out
    marks = ("Tip:", "available:", "deprecated", "Warning", "warn(", "site-packages")  # a library's warning: its path
    chatter = [line for line in out.splitlines() if any(w in line for w in marks)]
    assert chatter == [], chatter
    loud = run_cli(*args, "verbose=true", f"hydra.run.dir={tmp_path / 'loud'}")
    assert "GPU available:" in loud.stdout + loud.stderr


def test_the_noise_model_and_the_estimator_are_built_once(make_cfg, monkeypatch):
    """config.check builds them to check their keys, and the run uses those very objects (it built both a
    second time before)."""
    from noisy_convnet.estimators.paper import FixedQ
    from noisy_convnet.noise_models import FlipNoise

    built = []

    def counted(init):
        def __init__(self, *args, **kwargs):
            built.append(type(self))
            init(self, *args, **kwargs)

        return __init__

    for cls in (FixedQ, FlipNoise):
        monkeypatch.setattr(cls, "__init__", counted(cls.__init__))
    run(make_cfg("q=fixed"))
    assert sorted(c.__name__ for c in built) == ["FixedQ", "FlipNoise"]
