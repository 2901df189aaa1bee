"""Faults and bad inputs a new user meets (issue 22): each class checked at its root, one test each that
failed before the fix. Values refused by config.validate are in test_config.py."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from noisy_convnet import cell, config, identity, noise, report
from noisy_convnet.errors import Diverged, UserError
from noisy_convnet.estimators import Fitted, NoQ
from noisy_convnet.layers import NoiseLayer
from noisy_convnet.noise_models import FlipNoise
from noisy_convnet.record import RESULTS_FILE
from noisy_convnet.train import run

from .conftest import FAST, ROOT, run_cli


# -- a label file can run code ---------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling it writes the marker file


def test_a_label_file_is_read_without_running_code(make_cfg, tmp_path):
    evil, marker = tmp_path / "labels.pt", tmp_path / "MARKER"
    torch.save({"noisy_label": _Evil(str(marker))}, evil)
    with pytest.raises(UserError, match="^noise.file: .* refused"):
        run(make_cfg("noise=labels", f"noise.file={evil}"))
    assert not marker.exists()


def test_cifar_n_style_label_files_still_load(tmp_path):
    """A dict of numpy arrays, saved by numpy 2 or (as CIFAR-N's files) by numpy 1, whose pickles name
    numpy.core.multiarray."""
    y = np.arange(100) % 10
    torch.save({"clean_label": y, "worse_label": (y + 1) % 10}, tmp_path / "new.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(tmp_path / "new.pt") as src, zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    for name in ("new.pt", "old.pt"):
        got = noise.labels_from_file(tmp_path / name, "worse_label", 100, 10)
        assert np.array_equal(got, (y + 1) % 10)


# -- a failed run must not become a result on rerun ------------------------------------------------------
def test_a_diverged_training_stays_an_error_however_often_it_is_rerun(make_cfg, tmp_path):
    cfg = ("q=none", "optim.optimizer.lr=1e9", "trainer.max_epochs=2")
    for _ in range(2):
        with pytest.raises(Diverged, match="diverged"):
            run(make_cfg(*cfg))
        assert not (tmp_path / "run" / RESULTS_FILE).exists()


def test_a_truncated_checkpoint_is_set_aside_and_the_training_runs_again(make_cfg, tmp_path, caplog):
    overrides = ("q=fixed", "trainer.max_epochs=2", "threads=1")
    fresh = run(make_cfg(*overrides, run_dir=tmp_path / "fresh"))
    cfg = config.validate(make_cfg(*overrides))
    from omegaconf import OmegaConf

    key = identity.CellKey.of(OmegaConf.to_container(cfg, resolve=True), config.schema_defaults())
    cell.claim_checkpoints(tmp_path / "run", key)  # as a run killed while writing its checkpoint leaves it
    cut = tmp_path / "run" / "checkpoints" / "training1" / "last.ckpt"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(b"PK\x03\x04 cut short")
    r = run(cfg)
    assert "cannot be read; set aside" in caplog.text
    assert r.test_error == fresh.test_error and np.array_equal(r.Q, fresh.Q)


# -- your own class, checked like ours ---------------------------------------------------------------------
class ReturnsNone(NoQ):
    def fit(self, noisy, train, val, trainers):
        return None


class _Trains(NoQ):
    def fit(self, noisy, train, val, trainers):
        t = trainers.fit(NoiseLayer(noisy.num_classes), train, val)
        return self.result(t, noisy.num_classes)


class WrongShape(_Trains):
    def result(self, t, k):
        return Fitted(t, np.eye(k + 1))


class NanQ(_Trains):
    def result(self, t, k):
        return Fitted(t, np.full((k, k), np.nan))


class NotStochastic(_Trains):
    def result(self, t, k):
        return Fitted(t, np.ones((k, k)))


class OverwritesTheRecord(_Trains):
    def result(self, t, k):
        return Fitted(t, None, {"test_error": 0.0, "seed": 7})


class LabelsOutOfRange(FlipNoise):
    def apply(self, ds, data, level, seed):
        noisy = super().apply(ds, data, level, seed)
        noisy.train.y[:5] = 99
        return noisy


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["q=custom", "q._target_=tests.test_faults.ReturnsNone"], UserError),
        (["q=custom", "q._target_=tests.test_faults.WrongShape"], UserError),
        (["q=custom", "q._target_=tests.test_faults.NanQ"], Diverged),
        (["q=custom", "q._target_=tests.test_faults.NotStochastic"], UserError),
        (["q=custom", "q._target_=tests.test_faults.OverwritesTheRecord"], UserError),
    ],
)
def test_what_a_custom_estimator_returns_is_checked(make_cfg, tmp_path, overrides, error):
    with pytest.raises(error, match="^q._target_: .*tests.test_faults"):
        run(make_cfg(*overrides))
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
    trained = "ReturnsNone" not in overrides[1]  # refused after it trained: what it wrote stays; before: nothing
    assert (tmp_path / "run" / "noisy_labels.npy").is_file() == trained


def test_what_a_custom_noise_model_returns_is_checked(make_cfg, tmp_path):
    with pytest.raises(UserError, match="^noise._target_: .* outside"):
        run(make_cfg("noise=custom", "noise._target_=tests.test_faults.LabelsOutOfRange", "+noise.matrix=uniform"))


# -- settings that were ignored or misleading ------------------------------------------------------------
def test_an_implausible_label_file_is_refused_unless_allowed(make_cfg, tmp_path):
    from noisy_convnet import datasets

    y = datasets.load("digits").pool.y.numpy()
    np.save(tmp_path / "shuffled.npy", np.random.default_rng(0).permutation(y))  # another order: ~90% "noise"
    with pytest.raises(UserError, match="^noise.file: .* pool's order"):
        run(make_cfg("noise=labels", f"noise.file={tmp_path / 'shuffled.npy'}"))
    r = run(make_cfg("noise=labels", f"noise.file={tmp_path / 'shuffled.npy'}", "noise.allow_implausible=true"))
    assert r.actual_noise > 0.8


@pytest.mark.parametrize("q", ["dualt", "confident", "anchor"])
def test_the_one_batch_check_runs_every_estimator(make_cfg, tmp_path, q):
    r = run(make_cfg("experiment=debug", f"q={q}"))
    assert r.config["trainer"]["fast_dev_run"] is True and r.Q is not None


def test_a_matrix_files_level_is_recorded(make_cfg, tmp_path):
    np.save(tmp_path / "Q.npy", noise.uniform(10, 0.3))
    r = run(make_cfg(f"noise.matrix={tmp_path / 'Q.npy'}", "q=none"))
    assert r.level == pytest.approx(0.3) and r.matrix == str(tmp_path / "Q.npy")


# -- a user's files are theirs ----------------------------------------------------------------------------
def test_a_run_keeps_the_users_own_files_in_its_folder(make_cfg, tmp_path):
    mine = tmp_path / "run" / "checkpoints" / "mine.ckpt"
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's")
    run(make_cfg("q=none"))
    assert mine.read_text() == "the user's"
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / RESULTS_FILE).write_text('{"accuracy": 0.99}')
    with pytest.raises(UserError, match="^run_dir: .* not written by this project"):
        run(make_cfg("q=none", run_dir=foreign))
    assert json.loads((foreign / RESULTS_FILE).read_text()) == {"accuracy": 0.99}


# -- sweeps keep their promises ---------------------------------------------------------------------------
def test_a_diverged_cell_says_so_and_the_others_run(tmp_path):
    """A divergence is not a user mistake: the sweep's exit status is 1 (launch.SweepStatus)."""
    p = run_cli("-m", *FAST, "q=none", "trainer.max_epochs=2", "optim.optimizer.lr=1e9,0.002",
                f"hydra.sweep.dir={tmp_path}")
    assert p.returncode == 1, p.stderr
    assert sum(line.startswith("error: sweep: 1 cell(s) failed") for line in p.stderr.splitlines()) == 1
    assert sum(line.startswith("error: cell ") and "diverged" in line for line in p.stderr.splitlines()) == 1
    assert "Traceback" not in p.stderr
    (done,) = tmp_path.glob(f"*/{RESULTS_FILE}")
    assert "lr=0.002" in done.parent.name


def test_a_one_batch_check_does_not_block_the_real_cell(make_cfg, tmp_path):
    check = run(make_cfg("q=none", "trainer.fast_dev_run=true"))
    real = run(make_cfg("q=none"))
    assert check.epochs <= 1 and real.config["trainer"]["fast_dev_run"] is False


def test_a_changed_image_folder_is_another_cell(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "imgs" / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (100 * c, i, 0)).save(tmp_path / "imgs" / split / f"c{c}" / f"{i}.png")
    cfg = {"data": {"name": "imagefolder", "root": str(tmp_path / "imgs")}, "noise": {}}
    before = identity.input_hashes(cfg)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "imgs" / "train" / "c0" / "0.png")  # content changed
    assert identity.input_hashes(cfg) != before


def test_verified_files_in_another_folder_are_the_same_cell(make_cfg, tmp_path):
    """data.root says where files lie: a cell whose files pass their MD5 check is the same cell read from
    another folder (a cluster's DATA_ROOT, another cache), never trained again; an image folder's root and
    files read unverified stay part of the cell."""
    defaults = config.schema_defaults()

    def key(**data):
        return identity.CellKey.of({"data": {"name": "mnist", **data}, "noise": {}}, defaults, inputs={})

    assert key(root="/a") == key(root="/b") == key()
    assert key(root="/a", verify=False) != key(root="/b", verify=False)
    assert key(name="imagefolder", root="/a") != key(name="imagefolder", root="/b")
    first = run(make_cfg("q=none"))
    moved = run(make_cfg("q=none", f"data.root={tmp_path / 'elsewhere'}"))  # digits: nothing read from it
    assert moved.wall_s == pytest.approx(first.wall_s, abs=1e-5)  # the finished record, not a second training


def test_the_report_draws_one_curve_per_data_set(tmp_path):
    for ds in ("digits", "mnist5k"):
        for size in (1000, 2000):
            d = tmp_path / f"{ds}-{size}"
            d.mkdir()
            rec = {"dataset": ds, "noise": "flip", "matrix": "random", "level": 0.5, "q": "learned", "seed": 0,
                   "q_label": "learned Q", "train_size": size, "test_error": 0.1, "early_stopping": False,
                   "config": {"data": {"name": ds, "train_size": size}}}
            (d / RESULTS_FILE).write_text(json.dumps(rec))
    df, _ = report.load_sweep(tmp_path)
    assert sorted(df["method"].unique()) == ["learned Q (digits)", "learned Q (mnist5k)"]


# -- the Python API and the console script ----------------------------------------------------------------
def test_compose_honours_hydra_run_dir(tmp_path):
    r = run(config.compose([*FAST, "q=none", f"hydra.run.dir={tmp_path / 'here'}"]))
    assert (tmp_path / "here" / RESULTS_FILE).is_file() and r.config["run_dir"] == str(tmp_path / "here")


def test_the_console_script_finds_the_users_module_in_the_current_folder(tmp_path):
    (tmp_path / "my_module.py").write_text("from noisy_convnet.estimators import NoQ as MyQ\n")
    script = Path(sys.executable).parent / "noisy-convnet"  # the console script installed beside this Python
    p = subprocess.run([str(script), *FAST, "q=custom", "q._target_=my_module.MyQ", f"hydra.run.dir={tmp_path / 'r'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / RESULTS_FILE).is_file()


def test_a_run_touches_no_folder_of_the_users_in_its_folder(make_cfg, tmp_path):
    """A checkpoints/ folder without this project's fingerprint (even with a training-like name) and a
    stages/ folder that was there before are left as they are."""
    mine = tmp_path / "run" / "checkpoints" / "training_v1" / "w.ckpt"
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's")
    notes = tmp_path / "run" / "stages" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("the user's")
    run(make_cfg("q=none", "early_stopping=true"))  # trains a stage in the run's stages/
    assert mine.read_text() == "the user's" and notes.read_text() == "the user's"


def test_a_file_where_a_run_writes_a_folder_is_one_line(make_cfg, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file")
    with pytest.raises(UserError, match="^run_dir: .*checkpoints' is a file"):
        run(make_cfg("q=none"))


def test_hoc_reads_a_feature_file_in_the_pools_order_and_a_changed_one_is_another_cell(make_cfg, tmp_path):
    from noisy_convnet import datasets

    pool = datasets.load("digits").pool
    features = np.eye(10)[pool.y.numpy()] + 0.01 * np.random.default_rng(0).standard_normal((len(pool), 10))
    np.save(tmp_path / "f.npy", features)
    r = run(make_cfg("q=hoc", f"q.features={tmp_path / 'f.npy'}", "q.rounds=1", "q.steps=300",
                     "noise.matrix=uniform", "level=0.3"))
    assert r.stages == [] and r.trainings == 1  # no plain net: the file's features
    assert r.q_error < 0.3  # clean clusters: HOC finds T from the features of the right images
    np.save(tmp_path / "short.npy", features[:100])
    with pytest.raises(UserError, match="^q.features: 100 rows"):
        run(make_cfg("q=hoc", f"q.features={tmp_path / 'short.npy'}", run_dir=tmp_path / "short"))
    np.save(tmp_path / "long.npy", np.concatenate([features, features[:5]]))  # another data set's: more rows
    with pytest.raises(UserError, match=rf"^q.features: {len(pool) + 5} rows; one per image of the data set's pool "
                       rf"\({len(pool)} images"):
        run(make_cfg("q=hoc", f"q.features={tmp_path / 'long.npy'}", run_dir=tmp_path / "long"))
    cfg = {"q": {"features": str(tmp_path / "f.npy")}, "noise": {}}
    before = identity.input_hashes(cfg)
    np.save(tmp_path / "f.npy", features + 1)
    assert identity.input_hashes(cfg) != before


@pytest.mark.parametrize("key", ["data.root", "noise.file", "q.features", "noise.outlier_source"])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(make_cfg, key):
    """An unset variable (data.root=$DATA_ROOT with none set) must not fetch into, or read from, '.'."""
    extra = {"noise.file": ["noise=labels"], "q.features": ["q=hoc"], "noise.outlier_source": ["noise=outlier"]}
    with pytest.raises(UserError, match=rf"^{key}: an empty path"):
        config.validate(make_cfg(*extra.get(key, []), f"{key}="))


def test_a_path_is_expanded_and_spelled_one_way(make_cfg, tmp_path):
    """'~' is the home folder; DIR/./lab.npy and DIR//lab.npy are DIR/lab.npy: one cell, not three."""
    from noisy_convnet.config import schema_defaults

    labels = tmp_path / "lab.npy"
    np.save(labels, np.zeros(10, dtype=np.int64))
    keys = set()
    for spelled in (f"{tmp_path}/./lab.npy", f"{tmp_path}//lab.npy", str(labels)):
        cfg = OmegaConf.to_container(config.validate(make_cfg("noise=labels", f"noise.file={spelled}")), resolve=True)
        assert cfg["noise"]["file"] == str(labels)
        keys.add(identity.CellKey.of(cfg, schema_defaults()))
    assert len(keys) == 1
    home = config.validate(make_cfg("data=mnist", "data.root='~/somewhere'"))
    assert home.data.root == os.path.join(os.path.expanduser("~"), "somewhere")


def test_an_unquoted_tilde_says_how_to_write_it(tmp_path):
    p = run_cli("data.root=~/x", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: data.root: Hydra reads ~ only inside quotes; write \"data.root='~/x'\" (expanded to your home "
        "folder) or give the full path"
    ], p.stderr


def test_the_report_refuses_an_empty_out_and_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "results.md").write_text("the user's own")
    monkeypatch.chdir(tmp_path)
    assert report.main([str(ROOT / "outputs" / "figures" / "fig2b_cpu"), "--out", ""]) == 2
    assert (tmp_path / "results.md").read_text() == "the user's own" and len(list(tmp_path.iterdir())) == 1


def test_a_single_run_finished_after_a_kill_leaves_no_stages_behind(make_cfg, tmp_path):
    """A single run killed while training its shared stage, run again: once its record is written its
    stages folder goes, as an uninterrupted run's does."""
    killed = tmp_path / "run" / "stages" / f"plain-{'0123' * 16}" / "checkpoints"
    killed.mkdir(parents=True)
    (killed / "last.ckpt").write_bytes(b"cut")
    run(make_cfg("q=anchor"))
    assert (tmp_path / "run" / RESULTS_FILE).is_file() and not (tmp_path / "run" / "stages").exists()
