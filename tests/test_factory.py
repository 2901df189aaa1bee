"""The training factory (factory.py): shared stages reused only for equal inputs, warm starts, features."""

import itertools
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from noisy_convnet import config, datasets
from noisy_convnet.factory import Trainers
from noisy_convnet.fitting import Start
from noisy_convnet.layers import NoiseLayer
from noisy_convnet.protocol import Spec

from .test_layers import learned

RUNS = itertools.count()


def _setup(make_cfg, tmp_path, *overrides, epochs=2):
    """(factory, train, val) as train.run builds them: digits, uniform noise 0.5, stages under tmp_path."""
    cfg = config.validate(make_cfg("noise.matrix=uniform", f"trainer.max_epochs={epochs}", "threads=1", *overrides))
    torch.set_num_threads(1)
    ds = datasets.load(cfg.data.name)
    noisy = instantiate(cfg.noise).apply(ds, cfg.data, cfg.level, cfg.seed)
    train, val = datasets.holdout(noisy.train, cfg.data.val_fraction)
    run_dir = tmp_path / f"run{next(RUNS)}"  # a run folder each (its trainings' checkpoints); one stages folder
    factory = Trainers(Spec.of(cfg), ds.shape, noisy.test, noisy.q_true, noisy.num_classes, run_dir,
                       stages_dir=tmp_path / "stages")
    return factory, train, val


def _plain(factory, train, val):
    return factory.fit(NoiseLayer(10), train, val, early_stopping=True, predict=train, stage="plain")


def test_a_stage_is_trained_once_and_reused_only_for_equal_inputs(make_cfg, tmp_path):
    threads = torch.get_num_threads()
    try:
        factory, train, val = _setup(make_cfg, tmp_path)
        first = _plain(factory, train, val)
        assert first.stage.trained and factory.count == 1
        again, train2, val2 = _setup(make_cfg, tmp_path)  # another run with the same inputs: reused
        reused = _plain(again, train2, val2)
        assert not reused.stage.trained and reused.stage.key == first.stage.key and again.count == 0
        assert (reused.test.test_error, reused.val_nll, reused.epochs) == (first.test.test_error, first.val_nll,
                                                                           first.epochs)
        assert np.array_equal(reused.probs, first.probs) and np.array_equal(reused.test.confusion, first.test.confusion)
        for a, b in zip(first.module.net.state_dict().values(), reused.module.net.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        keys = {first.stage.key}
        for changed in (("seed=1",), ("model.hidden=64",), ("optim.optimizer.lr=0.001",)):  # any input changed
            other, tr, va = _setup(make_cfg, tmp_path, *changed)
            t = _plain(other, tr, va)
            assert t.stage.trained and t.stage.key not in keys, changed
            keys.add(t.stage.key)
        y = train.y.clone()
        y[0] = (y[0] + 1) % 10  # one noisy label moved (a noise file whose content changed)
        moved = _plain(_setup(make_cfg, tmp_path)[0], train.relabel(y), val)
        assert moved.stage.trained and moved.stage.key not in keys
        unstopped = factory.fit(NoiseLayer(10), train, val, early_stopping=False, stage="plain")  # another protocol
        assert unstopped.stage.trained and unstopped.stage.key not in keys | {moved.stage.key}
        assert [u.trained for u in factory.used] == [True, True]  # what the record's "stages" lists
    finally:
        torch.set_num_threads(threads)


def test_a_warm_start_starts_from_the_first_trainings_weights(make_cfg, tmp_path):
    """With a learning rate too small to move anything, a training warm-started from a first one ends at the
    first's validation loss (and, with init_noise, its Q); a fresh one stays at chance."""
    factory, train, val = _setup(make_cfg, tmp_path, epochs=3)
    first = factory.fit(learned(10), train, val)
    still, _, _ = _setup(make_cfg, tmp_path, "optim.optimizer.lr=1e-12", "q.lr=1e-12", epochs=1)
    warm = still.fit(learned(10, lr=1e-12), train, val, init=first, init_noise=True)
    fresh = still.fit(learned(10, lr=1e-12), train, val)
    net_only = still.fit(learned(10, lr=1e-12), train, val, init=first)
    assert first.val_nll < math.log(10) - 0.3  # the first training learned something
    assert abs(warm.val_nll - first.val_nll) < 0.02
    assert fresh.val_nll > first.val_nll + 0.3
    q_first, q_start = first.module.noise.q().detach(), fresh.module.noise.q().detach()
    assert (q_first - q_start).abs().max() > 0.01  # Q moved in the first training
    assert torch.allclose(warm.module.noise.q().detach(), q_first, atol=1e-4)  # init_noise: its Q too
    assert torch.allclose(net_only.module.noise.q().detach(), q_start, atol=1e-4)  # without: a fresh Q


def test_features_are_the_penultimate_layer_on_the_images_asked_in_their_order(make_cfg, tmp_path):
    factory, train, val = _setup(make_cfg, tmp_path, epochs=1)
    idx = np.arange(50)[::-1].copy()
    t = factory.fit(NoiseLayer(10), train, val, predict=train.take(idx), outputs=("probs", "features"))
    assert t.features.shape == (50, 128) and t.probs.shape == (50, 10)  # model.hidden = 128
    forward = factory.fit(NoiseLayer(10), train, val, predict=train.take(idx[::-1].copy()), outputs=("features",))
    assert forward.probs is None and np.allclose(forward.features, t.features[::-1], atol=1e-6)  # their order
    last = t.module.net.head[-1]  # the features are the input of the last linear layer: they give the probs
    with torch.no_grad():
        probs = torch.softmax(last(torch.as_tensor(t.features)), dim=1).double().numpy()
    assert np.allclose(probs, t.probs, atol=1e-5)
    with pytest.raises(ValueError, match="outputs"):
        factory.fit(NoiseLayer(10), train, val, predict=train, outputs=("logits",))


def _key(make_cfg, tmp_path, *overrides, layer=None, role="plain", early_stopping=True, val_rows=None):
    """The stage key train.run's factory computes for the plain net, no training."""
    from noisy_convnet.stages import stage_key

    factory, train, val = _setup(make_cfg, tmp_path, *overrides)
    val = val if val_rows is None else val.take(np.arange(val_rows))
    layer = layer or NoiseLayer(10)
    state = factory._check_call(layer, ("probs",), None, False, "plain")
    settings = factory.settings(role, early_stopping)
    return stage_key("plain", factory._stage_inputs(state, train, val, settings, Start()))


def test_the_stage_key_is_one_for_equal_inputs_and_another_for_each_changed_input(make_cfg, tmp_path):
    """Every input that decides a stage's weights and test numbers changes its key; what does not decide them
    (where it logs, what it prints, the run's folder) keeps it: a stage is reused only for equal inputs."""
    base = _key(make_cfg, tmp_path)
    assert _key(make_cfg, tmp_path) == base  # equal inputs, another factory
    same = [("logger=csv",), ("verbose=true",), ("trainer.enable_progress_bar=true",), ("q=anchor",)]
    for overrides in same:
        assert _key(make_cfg, tmp_path, *overrides) == base, overrides
    changed = [("seed=1",), ("level=0.3",), ("data.batch_size=17",), ("data.shift=3",), ("selection=accuracy",),
               ("patience=3",), ("trainer.max_epochs=3",), ("model.hidden=64",), ("optim.optimizer.lr=0.001",),
               ("protocol.plain.epochs=5",), ("data.val_fraction=0.2",)]
    keys = {base}
    for overrides in changed:
        key = _key(make_cfg, tmp_path, *overrides)
        assert key not in keys, overrides
        keys.add(key)
    assert _key(make_cfg, tmp_path, early_stopping=False) not in keys  # the estimator's choice of early stopping
    assert _key(make_cfg, tmp_path, val_rows=20) not in keys  # other validation images
    assert _key(make_cfg, tmp_path, layer=learned(10)) not in keys  # another noise layer
