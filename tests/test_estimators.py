"""The field's Q estimators (the estimators package): each method on oracle probabilities, a run's record against
its saved probabilities, VolMinNet learning toward Q*, bad input."""

import json

import numpy as np
import pytest

from noisy_convnet import config, noise
from noisy_convnet.errors import Diverged, UserError
from noisy_convnet.estimators import anchor_indices, anchor_t, confident_q, count_t
from noisy_convnet.train import run

K = 10
EPS = 0.02  # each oracle row is mixed with this much of a random distribution: at most 2 * EPS off in L1


def _oracle(kind, level, seed=0, eps=EPS):
    """p(noisy | x) = the Q* column of x's true class, mixed with eps of noise; 300 images per class, and
    noisy labels drawn from Q*."""
    rng = np.random.default_rng(seed)
    q = noise.matrix(kind, K, level, rng)
    y = np.repeat(np.arange(K), 300)
    probs = (1 - eps) * q[:, y].T + eps * rng.dirichlet(np.ones(K), len(y))
    return q, y, noise.corrupt(y, q, rng), probs


def _own_anchor(probs, percentile):
    """The anchor rule written out: per column, drop the values at or above the order statistic numpy's
    percentile(method="higher") picks, then take the largest left."""
    t = np.empty((probs.shape[1],) * 2)
    for i in range(probs.shape[1]):
        col = probs[:, i]
        keep = np.ones(len(col), bool)
        if percentile < 100:
            thresh = np.sort(col)[int(np.ceil(percentile / 100 * (len(col) - 1)))]
            keep = col < thresh
        t[i] = probs[np.flatnonzero(keep)[np.argmax(col[keep])]]
    return (t / t.sum(1, keepdims=True)).T  # Q_hat


@pytest.mark.parametrize("kind, level", [("uniform", 0.5), ("pair", 0.45), ("random", 0.5)])
def test_anchor_rule_recovers_q_star_from_oracle_probabilities(kind, level):
    q, y, _, probs = _oracle(kind, level)
    exact = _oracle(kind, level, eps=0.0)[3]
    assert noise.q_error(anchor_t(exact, 100).T, q) < 1e-12  # no filter, no noise: exactly Q*
    # the 97th-percentile filter picks an image of the class whose row is within 2 * EPS of Q*'s column
    assert noise.q_error(anchor_t(probs, 97).T, q) <= 2 * EPS
    before = probs.copy()
    np.testing.assert_allclose(anchor_t(probs, 97).T, _own_anchor(probs, 97), atol=1e-12)
    np.testing.assert_array_equal(probs, before)  # each column filtered on a copy, the input untouched


def test_anchor_rows_are_read_from_unfiltered_probabilities():
    """The reference code zeroes its matrix in place, so a later class's row reads the values an earlier
    column's filter zeroed. Image 2 is class 1's anchor, and its column-0 value (0.6) is above column 0's
    threshold: its row must keep it."""
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])
    assert list(anchor_indices(probs, 50)) == [3, 2]  # col 0: 0.6 and above dropped; col 1: 0.7 and above
    np.testing.assert_allclose(anchor_t(probs, 50), [[0.3, 0.7], [0.6, 0.4]])


@pytest.mark.parametrize("kind, level", [("uniform", 0.5), ("pair", 0.45), ("random", 0.5)])
def test_dual_t_as_published_composes_the_anchor_estimate_with_the_counts(kind, level):
    """Dual-T's T_count is exact on an oracle (its argmax is the true class, so it counts the realised
    noise), but T_anchor of the same probabilities is already T*: as in its reference code, the product
    T_anchor x T_count is then about T* squared, not T* (q_error 0.4-0.5 here). A result, not a bug."""
    q, y, y_noisy, probs = _oracle(kind, level)
    realised = noise.realised(y, y_noisy, K)
    np.testing.assert_allclose(count_t(probs, y_noisy).T, realised, atol=1e-12)
    dual = (anchor_t(probs, 97) @ count_t(probs, y_noisy)).T
    assert noise.q_error(dual, (q.T @ realised.T).T) <= 2 * EPS
    assert noise.q_error(dual, q) > 0.3


@pytest.mark.parametrize("kind, level", [("uniform", 0.5), ("pair", 0.45), ("random", 0.5)])
def test_cleanlab_recovers_the_realised_noise_from_oracle_probabilities(kind, level):
    """The confident joint counts the labels themselves: on an oracle it gives the realised noise matrix
    of the drawn labels to round-off (Q* itself only up to sampling: 300 labels per class)."""
    q, y, y_noisy, probs = _oracle(kind, level)
    q_hat = confident_q(probs, y_noisy)
    assert noise.q_error(q_hat, noise.realised(y, y_noisy, K)) < 1e-6
    assert noise.q_error(q_hat, q) < 0.15


def test_a_run_records_the_q_its_saved_probabilities_give(make_cfg, tmp_path):
    common = ["noise.matrix=uniform", "level=0.4", "trainer.max_epochs=3"]
    for q, trainings in (("anchor", 2), ("dualt", 2), ("confident", 4)):
        r = run(make_cfg(f"q={q}", *common, run_dir=tmp_path / q))
        probs = np.load(tmp_path / q / "probs.npy")
        labels = np.load(tmp_path / q / "noisy_labels.npy")[: len(probs)]  # the training part comes first
        assert probs.shape == (len(labels), K) and r.trainings == trainings
        assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1)
        if q == "anchor":
            expected = _own_anchor(probs, 97)
        elif q == "dualt":
            expected = (_own_anchor(probs, 97).T @ count_t(probs, labels)).T
        else:
            expected = confident_q(probs, labels)
        stored = json.loads((tmp_path / q / "results.json").read_text())
        np.testing.assert_allclose(stored["Q"], expected, atol=1e-6)  # results.json keeps 6 decimals
        assert r.q_error == pytest.approx(noise.q_error(expected, np.array(r.Q_true)), abs=1e-6)
        assert set(stored["stage_s"]) == {"estimate", "forward"} and r.q_estimated


def test_volmin_moves_q_toward_q_star(make_cfg):
    """8x8 digits, uniform Q* at 0.2, 20 epochs: VolMinNet's Q starts at q_error 0.64 (diagonal 0.48) and
    must end well below Q = I's 0.4 (measured: 0.11)."""
    r = run(make_cfg("q=volmin", "noise.matrix=uniform", "level=0.2", "trainer.max_epochs=20"))
    assert noise.q_error(np.eye(K), np.array(r.Q_true)) == pytest.approx(0.4)
    assert r.q_error < 0.2 and r.trainings == 1


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["q=anchor", "q.anchor_percentile=0"], "q.anchor_percentile"),
        (["q=dualt", "q.anchor_percentile=101"], "q.anchor_percentile"),
        (["q=confident", "q.folds=1"], "q.folds"),
        (["q=volmin", "q.lr=-1"], "q.lr"),
        (["q=anchor", "noise=outlier"], "q"),
        (["q=volmin", "noise=outlier"], "q"),
        (["q=anchor", "data.val_fraction=0"], "q"),
    ],
)
def test_bad_estimator_settings_are_refused_before_any_data(make_cfg, overrides, key):
    with pytest.raises(UserError, match=f"^{key}: "):
        config.validate(make_cfg(*overrides))


def test_more_folds_than_the_rarest_class_is_refused_before_training(make_cfg, tmp_path):
    with pytest.raises(UserError, match="^q.folds: 500 folds need"):
        run(make_cfg("q=confident", "q.folds=500"))
    assert not (tmp_path / "run" / "results.json").exists()


def test_confident_without_cleanlab_says_how_to_install_it(make_cfg, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else find_spec(name))
    with pytest.raises(UserError, match=r"^q: q=confident calls cleanlab.*noisy-convnet\[cleanlab\]"):
        config.validate(make_cfg("q=confident"))


def test_a_diverged_training_fails_the_run_and_writes_no_results(make_cfg, tmp_path):
    with pytest.raises(Diverged, match="diverged"):
        run(make_cfg("q=none", "optim.optimizer.lr=1e9", "trainer.max_epochs=2"))
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_example_estimator_runs_through_make(tmp_path):
    """examples/my_estimator.py, selected with q=custom q._target_=... (no other estimator's keys reach it)."""
    import subprocess

    from .conftest import ROOT

    args = f"data=digits data.train_size=1000 trainer.max_epochs=2 logger=none hydra.run.dir={tmp_path / 'run'}"
    p = subprocess.run(["make", "-s", "example-estimator", f"ARGS={args} +q.smoothing=0.5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (r["q"], r["trainings"], r["config"]["q"]) == ("confusion", 2, {
        "_target_": "examples.my_estimator.ConfusionQ", "smoothing": 0.5})
    q_hat = np.array(r["Q"])  # counts + 0.5 each, columns normalised: a stochastic Q with no zero entry
    assert np.allclose(q_hat.sum(0), 1, atol=1e-5) and q_hat.min() > 0
    assert r["q_error"] == pytest.approx(noise.q_error(q_hat, np.array(r["Q_true"])), abs=1e-6)
    bad = subprocess.run(["make", "-s", "example-estimator", f"ARGS={args} +q.smoothing=-1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert "error: q.smoothing: -1" in bad.stderr and "Traceback" not in bad.stderr


def test_a_custom_estimator_needs_its_target(make_cfg):
    with pytest.raises(UserError, match=r"^q._target_: required"):
        config.validate(make_cfg("q=custom"))


def test_hoc_and_trevision_run_and_record_what_they_promise(make_cfg, tmp_path):
    common = ["noise.matrix=uniform", "level=0.4", "trainer.max_epochs=3"]
    h = run(make_cfg("q=hoc", "q.rounds=2", "q.steps=200", *common, run_dir=tmp_path / "hoc"))
    n_train = round(0.9 * len(np.load(tmp_path / "hoc" / "noisy_labels.npy")))
    assert h.fields["sample_size"] == n_train and h.trainings == 2 and [s.name for s in h.stages] == ["plain"]
    assert np.allclose(np.array(h.Q).sum(axis=0), 1.0) and h.q_error == pytest.approx(
        noise.q_error(np.array(h.Q), np.array(h.Q_true)), abs=1e-6)
    t = run(make_cfg("q=trevision", *common, run_dir=tmp_path / "trev"))
    assert t.trainings == 3 and t.q_estimated
    anchor, revised = np.array(t.fields["T_anchor"]), np.array(t.fields["T_revised"])
    assert t.fields["q_error_anchor"] == pytest.approx(noise.q_error(anchor.T, np.array(t.Q_true)), abs=1e-6)
    assert t.fields["q_error_revised"] == pytest.approx(t.q_error, abs=1e-6)
    assert not np.allclose(anchor, revised)  # the slack moved


def test_one_list_of_estimators_that_the_options_presets_and_report_follow():
    """estimators.ESTIMATORS is the one list: conf/q's options (but custom) are its names, each YAML builds its
    class under the package's public name, the estimators_* presets sweep it, the report orders and colours
    by it; a name not in it (a user's estimator) follows the listed ones in a colour none of them has."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from noisy_convnet import config, plots
    from noisy_convnet.estimators import ESTIMATORS, NAMES
    from noisy_convnet.report.comparison import _rows

    assert set(config.group_options("q")) - {"custom"} == set(NAMES)
    for e in ESTIMATORS:
        target = OmegaConf.load(config.CONF_DIR / "q" / f"{e.name}.yaml")["_target_"]
        module, cls = e.cls.split(".")
        assert target == f"noisy_convnet.estimators.{cls}"
        assert get_class(target).name == e.name and get_class(target).__module__.endswith(f".{module}")
    for preset in ("uniform", "pair", "random", "instance", "mnist"):
        params = OmegaConf.load(config.CONF_DIR / "experiment" / f"estimators_{preset}.yaml").hydra.sweeper.params
        assert OmegaConf.to_container(params, resolve=True)["q"] == ",".join(NAMES)
    assert list(plots.COLOURS) == list(NAMES)
    assert plots.colour("my_own")[0] in plots.OTHERS and plots.colour("hoc+es#dualt") == ("tab:cyan", True)
    rows = _rows(["hoc", "my_own", "none+es", "fixed", "none", "anchor"])
    assert rows == ["none", "none+es", "fixed", "anchor", "hoc", "my_own"]
