"""A cell's identity across the project's history (identity.py): finished work stays finished when the code
around it moves, and a cell is one cell whatever the spelling that named it."""

import shutil
import subprocess
import sys

from noisy_convnet import identity, report
from noisy_convnet.config import compose, schema_defaults
from noisy_convnet.record import RESULTS_FILE

from .conftest import ROOT

# Made by commit 1ffd0f5, the last before the estimators package (issue 30), with SWEEP below; kept: each
# cell's results.json and marker (what decides that a cell is finished), not its arrays and logs.
OLD_SWEEP = ROOT / "tests" / "data" / "sweep_1ffd0f5"
SWEEP = ["-m", "data=digits", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false",
         "q=none,fixed,learned,anchor,hoc,trevision", "seed=0"]


def test_a_sweep_finished_before_the_estimators_package_trains_nothing(tmp_path):
    """The estimators moved into a package of modules; their YAML files name them by the package's public
    name, so a sweep finished by the commit before, rerun with the same command, trains nothing: every cell
    is skipped, no results.json changes, and the report reads them."""
    sweep = tmp_path / "sweep"
    shutil.copytree(OLD_SWEEP, sweep)
    before = {p: p.read_bytes() for p in sweep.glob(f"*/{RESULTS_FILE}")}
    assert len(before) == 6
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), *SWEEP, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (p.stdout + p.stderr).count("already finished, skipped") == 6, p.stdout[-3000:]
    assert not list(sweep.glob("stages")) and not list(sweep.glob("*/model.pt"))  # nothing trained
    assert {q: q.read_bytes() for q in sweep.glob(f"*/{RESULTS_FILE}")} == before
    df, problems = report.load_sweep(sweep)
    assert sorted(df["q"]) == sorted(["none", "fixed", "learned", "anchor", "hoc", "trevision"]) and not problems


def test_one_cell_whatever_its_spelling():
    """A default spelled out, a path spelled another way, a key given in another order: one key; a value
    changed: another."""
    defaults = schema_defaults()

    def key(*overrides):
        cfg = compose(["data=digits", "q=fixed", *overrides])
        from omegaconf import OmegaConf

        return identity.CellKey.of(OmegaConf.to_container(cfg, resolve=True), defaults)

    plain = key()
    assert key("seed=0") == plain  # the default, spelled out
    assert key("data.val_fraction=0.1", "seed=0") == key("seed=0", "data.val_fraction=0.1") == plain
    assert key("seed=1") != plain and key("level=0.3") != plain and key("q=none") != plain
    assert key("logger=csv") == plain and key("verbose=true") == plain  # what a run prints: not its identity
