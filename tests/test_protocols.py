"""The peers' protocols (issue: each estimator under its own paper's protocol): their networks, optimisers,
schedules and selection rules as config choices, per-stage settings, the oracle start through Q*, and the
record that names what each training ran with."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from noisy_convnet import identity, models, noise
from noisy_convnet.config import compose, schema_defaults, validate
from noisy_convnet.errors import UserError
from noisy_convnet.layers import FixedNoiseLayer, ImportanceLayer
from noisy_convnet.module import multi_step
from noisy_convnet.protocol import Spec
from noisy_convnet.train import run


def _weights(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_the_peers_networks_have_their_authors_sizes():
    """LeNet-5 as T-Revision's and VolMinNet's code builds it, the MLP of Patrini et al. and Dual-T."""
    lenet = models.LeNet5((1, 28, 28), 10)
    mlp = models.MLP((1, 28, 28), 10, [128, 128], 0.2)
    assert _weights(lenet) == 61_706 and _weights(mlp) == 118_282
    assert lenet(torch.zeros(3, 1, 28, 28)).shape == mlp(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert [m.p for m in mlp.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    assert models.penultimate(lenet).in_features == 84 and models.penultimate(mlp).in_features == 128


def test_a_multi_step_schedule_steps_at_the_epochs_given():
    """lr x 0.1 once epoch 2 begins and again once epoch 4 begins; 5 batches an epoch; a constant group keeps
    its lr."""
    w, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [q], "lr": 0.5}], lr=0.1)
    sched = multi_step(opt, total_steps=30, epochs=6, milestones=[4, 2], gamma=0.1, constant=(1,))
    seen = []
    for _ in range(30):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        opt.step()
        sched.step()
    per_epoch = [seen[e * 5][0] for e in range(6)]
    np.testing.assert_allclose(per_epoch, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert all(lr == seen[e * 5][0] for e in range(6) for lr, _ in seen[e * 5 : e * 5 + 5])  # constant within
    assert {q_lr for _, q_lr in seen} == {0.5}


def test_symmetric_and_pair_noise_are_the_peers_matrices():
    """symmetric-r: T = (1 - r) on the diagonal, r/9 elsewhere; pair-r: class i to i + 1, 9 to 0 (their
    utils' T is row-stochastic, T[i, j] = p(noisy j | clean i); this project's Q is its transpose)."""
    r = 0.45
    t_sym = np.full((10, 10), r / 9) + (1 - r - r / 9) * np.eye(10)
    t_pair = (1 - r) * np.eye(10)
    for i in range(10):
        t_pair[i, (i + 1) % 10] = r
    np.testing.assert_allclose(noise.uniform(10, r), t_sym.T, atol=1e-15)
    np.testing.assert_allclose(noise.pair(10, r), t_pair.T, atol=1e-15)


def test_the_oracle_start_of_forward_correction_is_the_run_through_q_star(make_cfg, tmp_path):
    """q=anchor q.start=true trains through Q* where the anchor T would be: the same run as q=fixed (same Q,
    same test error), under another name, with no plain net trained."""
    common = ("noise.matrix=pair", "level=0.3", "trainer.max_epochs=3")
    fixed = run(make_cfg("q=fixed", *common, run_dir=tmp_path / "fixed"))
    oracle = run(make_cfg("q=anchor", "q.start=true", *common, run_dir=tmp_path / "oracle"))
    assert oracle.test_error == fixed.test_error and oracle.val_nll == fixed.val_nll
    np.testing.assert_allclose(oracle.Q, fixed.Q, atol=1e-7)  # Q* as float64 vs the float32 layer it trained through
    assert oracle.q == "anchor_oracle" and oracle.q_error == 0.0 and oracle.trainings == 1
    assert not (tmp_path / "oracle" / "probs.npy").exists()


def _blobs(n, k, rng):
    """Well-separated classes: 2-d Gaussians of sd 1 on a circle of radius 8."""
    y = rng.integers(0, k, n)
    angles = 2 * np.pi * np.arange(k) / k
    centres = 8 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return torch.as_tensor(centres[y] + rng.standard_normal((n, 2)), dtype=torch.float32), y


def _train(layer, x, y, net=None, steps=600, lr=0.05):
    torch.manual_seed(0)
    net = net or torch.nn.Linear(2, layer.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        layer.nll(net(x), y).backward()
        opt.step()
    return net


def test_importance_reweighting_through_the_true_t_reaches_forward_correction():
    """Pair noise at 0.4 on well-separated classes, a linear model: reweighting through the true T,
    continuing the plain net as T-Revision does, ends with forward correction's clean test error and learns
    the clean posterior (near 1 on the true class), where the plain net's softmax keeps the noisy one (0.6)."""
    from noisy_convnet.layers import NoiseLayer

    k, rng = 4, np.random.default_rng(0)
    q = noise.pair(k, 0.4)
    x, y = _blobs(4000, k, rng)
    y_noisy = torch.as_tensor(noise.corrupt(y, q, rng))
    x_test, y_test = _blobs(2000, k, rng)
    forward = _train(FixedNoiseLayer(q), x, y_noisy)
    plain = _train(NoiseLayer(k), x, y_noisy)
    p_plain = F.softmax(plain(x_test), 1)[np.arange(len(y_test)), y_test].mean().item()
    reweighted = _train(ImportanceLayer(q.T, revise=False), x, y_noisy, net=plain)
    errors = [(m(x_test).argmax(1).numpy() != y_test).mean() for m in (forward, reweighted)]
    p_clean = F.softmax(reweighted(x_test), 1)[np.arange(len(y_test)), y_test].mean().item()
    assert errors[0] < 0.01 and errors[1] <= errors[0] + 0.005
    assert p_plain < 0.7 and p_clean > 0.9


def test_a_protocol_gives_each_stage_its_own_settings_and_the_record_names_them(make_cfg, tmp_path):
    """T-Revision (the MLP, T from every noisy image) with a plain stage of 2 epochs by SGD, the run's 1 epoch
    for the reweighting (best noisy-validation accuracy: patience null runs every epoch) and a revision stage
    of 1 epoch by Adam: each training runs as its stage says, the revision's learning rate is its
    optimiser's, and the record lists them in order, with the network's settings and the images T is
    estimated on."""
    sgd = "{_target_: torch.optim.SGD, _partial_: true, lr: 0.05, momentum: 0.0, weight_decay: 1e-4}"
    adam = "{_target_: torch.optim.Adam, _partial_: true, lr: 1e-6, weight_decay: 1e-4}"
    plain = f"protocol.plain={{epochs: 2, optim: {{optimizer: {sgd}, scheduler: null}}}}"
    revision = f"protocol.revision={{epochs: 1, early_stopping: false, optim: {{optimizer: {adam}, scheduler: null}}}}"
    r = run(make_cfg("q=trevision", "early_stopping=true", "patience=null", "selection=accuracy",
                     "protocol.name=mine", "protocol.estimate_on=all", "model=mlp", "model.dropout=0.3", plain,
                     revision))
    stages = r.protocol["trainings"]
    assert r.protocol["name"] == "mine" and [s["role"] for s in stages] == ["plain", "reweight", "revision"]
    assert r.protocol["estimate_on"] == "all"
    assert [s["model"] for s in stages] == [{"name": "MLP", "hidden": [128, 128], "dropout": 0.3}] * 3
    assert [s["epochs"] for s in stages] == [2, 1, 1]
    assert [s["optimizer"]["name"] for s in stages] == ["SGD", "AdamW", "Adam"]
    assert [s["tested"] for s in stages] == ["best noisy-validation accuracy"] * 2 + ["last epoch"]
    assert r.config["q"]["revision_lr"] == 1e-6  # the revision stage's optimiser sets dT's rate too
    assert json.loads((tmp_path / "run" / "results.json").read_text())["protocol"] == r.protocol


def test_volmin_can_learn_q_by_an_optimiser_of_its_own(make_cfg):
    """protocol.q_optimizer=adam: VolMinNet's Q trains by Adam (its moments in the checkpointed state) while
    the network trains by the run's SGD; Q moves off its start."""
    r = run(make_cfg("q=volmin", "optim=sgd_step", "protocol.q_optimizer=adam", "noise.matrix=uniform", "level=0.2",
                     "trainer.max_epochs=3"))
    assert r.config["q"]["optimizer"] == "adam" and r.protocol["trainings"][0]["q_optimizer"] == "adam"
    layer_start = np.eye(10) + 0.1192 * (1 - np.eye(10))
    assert np.abs(np.array(r.Q) - layer_start / layer_start.sum(0)).max() > 1e-3


def test_keys_added_at_their_old_behaviour_leave_a_cell_finished():
    """q.start=estimated and q.optimizer=null compute what cells did before the keys existed: a record
    without them is the same cell."""
    old = {"seed": 0, "q": {"_target_": "noisy_convnet.estimators.AnchorQ", "anchor_percentile": 97}}
    new = {"seed": 0, "q": {**old["q"], "start": "estimated"}}
    other = {"seed": 0, "q": {**old["q"], "start": True}}
    defaults = schema_defaults()
    assert identity.CellKey.of(old, defaults, {}) == identity.CellKey.of(new, defaults, {})
    assert identity.CellKey.of(other, defaults, {}) != identity.CellKey.of(new, defaults, {})


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["q=anchor", "q.start=maybe"], "q.start"),
        (["selection=loss"], "selection"),
        (["protocol.plain.selection=best"], "protocol.plain.selection"),
        (["protocol.plain.epochs=0"], "protocol.plain.epochs"),
        (["protocol.estimate_on=val"], "protocol.estimate_on"),
        (["protocol.revision.optim=sgd"], "protocol.revision.optim"),
        (["+protocol.plain.optim.optimizer._target_=torch.optim.Nope"], "protocol.plain.optim.optimizer._target_"),
        (["optim=sgd_step", "optim.scheduler.milestones=[0]"], "optim.scheduler.milestones"),
        (["q=volmin", "q.optimizer=rmsprop"], "q.optimizer"),
        (["patience=0"], "patience"),
    ],
)
def test_bad_protocol_settings_are_one_line_before_any_data(make_cfg, overrides, key):
    from noisy_convnet import config

    with pytest.raises(UserError, match=rf"^{key}:"):
        config.validate(make_cfg(*overrides))


def _table(text: str, header: str) -> dict:
    """{row label: first cell} of the markdown table whose header starts with ``header``."""
    lines = text.split(f"| {header}")[1].split("\n\n")[0].splitlines()[2:]
    return {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in lines)}


def test_the_report_compares_each_estimator_under_its_protocol_with_the_shared_one(make_cfg, tmp_path):
    """A sweep of the shared protocol (2 epochs) and a protocol of one's own ("mine", anchor's: 4 epochs, the
    best noisy-validation accuracy): the report's rows keep the protocols apart, the estimator-minus-shared
    and estimator-minus-anchor tables hold the differences of the records on the same noisy labels, and the
    figure of both protocols is drawn."""
    from noisy_convnet import report

    mine = ("protocol.name=mine", "protocol.estimator=anchor", "early_stopping=true", "selection=accuracy",
            "patience=null", "trainer.max_epochs=4")
    runs = {
        ("shared", "anchor"): ["q=anchor"], ("shared", "fixed"): ["q=fixed"], ("shared", "volmin"): ["q=volmin"],
        ("shared", "none+es"): ["q=none", "early_stopping=true"], ("mine", "anchor"): ["q=anchor", *mine],
        ("mine", "fixed"): ["q=fixed", *mine], ("mine", "volmin"): ["q=volmin", *mine],
        ("mine", "none"): ["q=none", *mine],
    }
    e = {}
    for (protocol, name), overrides in runs.items():
        folder = tmp_path / "sweep" / f"{protocol}-{name}"
        e[protocol, name] = 100 * run(make_cfg("trainer.max_epochs=2", *overrides, run_dir=folder)).test_error
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "comparison.md").read_text()
    rows = _table(text, "estimator")
    assert rows["anchor points + early stopping [mine]"].startswith(f"{e['mine', 'anchor']:.1f}")
    assert rows["anchor points [shared]"].startswith(f"{e['shared', 'anchor']:.1f}")
    shared = _table(text, "minus the shared protocol's")
    assert shared["VolMinNet + early stopping [mine]"] == f"{e['mine', 'volmin'] - e['shared', 'volmin']:+.1f}"
    assert shared["no noise layer + early stopping [mine]"] == f"{e['mine', 'none'] - e['shared', 'none+es']:+.1f}"
    assert len(shared) == 4  # the shared protocol's own runs have no row here
    anchor = _table(text, "minus anchor points'")
    assert anchor["VolMinNet [shared]"] == f"{e['shared', 'volmin'] - e['shared', 'anchor']:+.1f}"
    assert anchor["VolMinNet + early stopping [mine]"] == f"{e['mine', 'volmin'] - e['mine', 'anchor']:+.1f}"
    assert set(anchor) == {"VolMinNet [shared]", "VolMinNet + early stopping [mine]"}
    assert e["mine", "volmin"] != e["shared", "volmin"]  # the protocols differ: the differences are not all 0
    assert (tmp_path / "out" / "peers_error_by_protocol.png").is_file()
    # A variant of the shared protocol (another name, no estimator's own): its tables, no figure of own protocols
    shutil.copytree(tmp_path / "sweep", tmp_path / "variant")
    for path in (tmp_path / "variant").glob("*/results.json"):
        record = json.loads(path.read_text())
        record["protocol"]["estimator"] = None
        path.write_text(json.dumps(record))
    assert report.main([str(tmp_path / "variant"), "--out", str(tmp_path / "out2")]) == 0
    assert "[mine]" in (tmp_path / "out2" / "comparison.md").read_text()
    assert not (tmp_path / "out2" / "peers_error_by_protocol.png").exists()


def _stage(spec, role):
    """(epochs, optimiser, lr, momentum, weight decay, milestones (each x0.1), best epoch kept?, selection)"""
    s = spec.settings(role, spec.early_stopping)
    opt, sched = s.optim["optimizer"], s.optim.get("scheduler") or {}
    assert not sched.get("milestones") or sched.get("gamma") == 0.1
    return (s.epochs, opt["_target_"].rsplit(".", 1)[-1], opt["lr"], opt.get("momentum", 0.0),
            opt.get("weight_decay", 0.0), list(sched.get("milestones") or []), s.early_stopping, s.selection)


@pytest.mark.parametrize("preset, model, stages, q", [
    # Patrini et al.: the MLP with dropout 0.2, AdaGrad lr 0.01, 40 epochs each net, lowest noisy-val loss,
    # T from all the noisy images
    ("patrini", ("MLP", [128, 128], 0.2),
     {"plain": (40, "Adagrad", 0.01, 0.0, 0.0, [], True, "nll"),
      None: (40, "Adagrad", 0.01, 0.0, 0.0, [], True, "nll")},
     {"_target_": "noisy_convnet.estimators.AnchorQ"}),
    # T-Revision: LeNet-5; plain 20 epochs SGD no momentum; reweighting 100 epochs SGD momentum 0.9, x0.1 at
    # 40 and 80; revision 200 epochs Adam 5e-7, the last epoch; wd 1e-4, best noisy-val accuracy
    ("trevision", ("LeNet5", None, None),
     {"plain": (20, "SGD", 0.01, 0.0, 1e-4, [], True, "accuracy"),
      "reweight": (100, "SGD", 0.01, 0.9, 1e-4, [40, 80], True, "accuracy"),
      "revision": (200, "Adam", 5e-7, 0.0, 1e-4, [], False, "accuracy")},
     {"_target_": "noisy_convnet.estimators.TRevisionQ"}),
    # Dual-T: the MLP with dropout 0.5; SGD lr 0.01 without momentum, wd 1e-4, x0.1 every 50 epochs; the plain
    # net 100 epochs, the nets through T 200; best noisy-val accuracy
    ("dualt", ("MLP", [128, 128], 0.5),
     {"plain": (100, "SGD", 0.01, 0.0, 1e-4, [50, 100, 150], True, "accuracy"),
      None: (200, "SGD", 0.01, 0.0, 1e-4, [50, 100, 150], True, "accuracy")},
     {"_target_": "noisy_convnet.estimators.DualTQ"}),
    # VolMinNet: LeNet-5, one training of 60 epochs by SGD lr 0.01 momentum 0.9 wd 1e-4, no decay; T by an Adam
    # of its own at lr 0.01 from W = -2, lambda 1e-4; lowest noisy-val loss
    ("volmin", ("LeNet5", None, None),
     {None: (60, "SGD", 0.01, 0.9, 1e-4, [], True, "nll")},
     {"_target_": "noisy_convnet.estimators.VolMinQ", "init": -2.0, "vol_weight": 1e-4, "lr": 0.01,
      "optimizer": "adam"}),
])
def test_each_peer_preset_runs_its_authors_protocol(preset, model, stages, q):
    """What `experiment=protocol_<peer>` trains (the issue's table, read from the authors' code): full MNIST,
    a 10% noisy validation slice (54,000 / 6,000), batch 128, each stage's net, epochs, optimiser, schedule
    and selection rule, and the estimator's settings."""
    cfg = validate(compose([f"experiment=protocol_{preset}", "noise.matrix=pair", "level=0.45"]))
    spec = Spec.of(cfg)
    assert (cfg.data.name, cfg.data.val_fraction, spec.batch_size, spec.shift) == ("mnist", 0.1, 128, 0)
    assert cfg.data.train_size is None  # every training image (60,000 on MNIST)
    name, hidden, dropout = model
    assert spec.model["_target_"].rsplit(".", 1)[-1] == name
    if hidden is not None:
        assert (list(spec.model["hidden"]), spec.model["dropout"]) == (hidden, dropout)
    assert spec.patience is None  # every epoch trained, the best one tested
    for role, want in stages.items():
        assert _stage(spec, role) == want, role
    assert spec.estimate_on == ("all" if preset == "patrini" else "train")
    assert OmegaConf.to_container(cfg.q, resolve=True).items() >= q.items()
    assert cfg.protocol.name == preset
