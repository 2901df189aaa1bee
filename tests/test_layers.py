"""The noise layer (layers.py): Eq. 2-3 in log space, projection, regulariser, learning toward Q*."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from noisy_convnet import noise
from noisy_convnet.layers import FixedNoiseLayer, LearnedNoiseLayer, NoiseLayer, balance, project_simplex

K = 5


def learned(k, **kw):
    """A LearnedNoiseLayer with every term off unless given (the layer takes no defaults of its own)."""
    off = {"param": "softmax", "init_flip": 0.5, "lr": None, "reg_weight": 0.0, "warmup_epochs": 0,
           "regulariser": "ridge", "balance_weight": 0.0}
    return LearnedNoiseLayer(k, **(off | kw))


def test_fixed_identity_equals_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(64, K), torch.randint(0, K, (64,))
    fixed = FixedNoiseLayer(np.eye(K)).nll(logits, y)
    none = NoiseLayer(K).nll(logits, y)
    torch.testing.assert_close(fixed, F.cross_entropy(logits, y), atol=1e-5, rtol=0)
    torch.testing.assert_close(none, F.cross_entropy(logits, y))


def test_nll_matches_eq2_in_probability_space():
    torch.manual_seed(0)
    q = torch.as_tensor(noise.random(K, 0.4, np.random.default_rng(0)), dtype=torch.float32)
    logits, y = torch.randn(32, K), torch.randint(0, K, (32,))
    p_noisy = torch.softmax(logits, 1) @ q.T  # p(noisy=j|x) = sum_i q_ji p_i
    expected = -torch.log(p_noisy[torch.arange(32), y]).mean()
    torch.testing.assert_close(FixedNoiseLayer(q).nll(logits, y), expected, atol=1e-5, rtol=1e-5)


def test_zeros_in_q_and_saturated_softmax_give_finite_loss_and_gradients():
    q = torch.eye(K)
    q[:, 0] = 0.0
    q[0, 0] = 1.0  # plenty of exact zeros
    layer = learned(K, param="projected")
    with torch.no_grad():
        layer.weight.copy_(q)
    logits = torch.tensor([[1000.0, -1000, -1000, -1000, -1000]] * 4, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4])  # labels the saturated softmax gives probability exp(-2000) to
    loss = layer.nll(logits, y) + layer.regulariser()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(layer.weight.grad).all()


def test_projection_puts_columns_on_the_simplex_and_keeps_points_there():
    torch.manual_seed(0)
    v = torch.randn(K, 7) * 3
    p = project_simplex(v)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(0), torch.ones(7))
    q = torch.softmax(torch.randn(K, 7), 0)
    torch.testing.assert_close(project_simplex(q), q)


def test_projection_is_the_nearest_point():
    # against a brute-force check: no random simplex point is closer than the projection
    torch.manual_seed(1)
    v = torch.randn(K, 1)
    p = project_simplex(v)
    cands = torch.distributions.Dirichlet(torch.ones(K)).sample((20000,)).T
    assert ((cands - v) ** 2).sum(0).min() >= ((p - v) ** 2).sum() - 1e-6


@pytest.mark.parametrize("param", ["softmax", "projected"])
def test_learned_q_starts_near_identity_and_stays_stochastic(param):
    layer = learned(K, param=param, init_flip=0.01)
    q = layer.q().detach()
    torch.testing.assert_close(q.sum(0), torch.ones(K))
    assert torch.diagonal(q).min() == pytest.approx(0.99, abs=1e-6)


def test_trace_regulariser_lowers_the_diagonal():
    layer = learned(K, reg_weight=1.0, lr=0.1, regulariser="trace")
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        layer.regulariser().backward()
        opt.step()
    assert torch.diagonal(layer.q()).mean() < 0.5


def test_ridge_regulariser_is_the_same_for_every_relabelling_and_lowest_at_uniform():
    """Unlike the trace, the ridge cannot be lowered by permuting the base model's classes (the trace
    of a permuted Q* is lower than Q*'s: a trace-regularised Q drifts toward relabelled solutions)."""
    q_true = torch.as_tensor(noise.random(K, 0.5, np.random.default_rng(0)), dtype=torch.float32)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    for kind in ("ridge", "trace"):
        a = learned(K, reg_weight=1.0, regulariser=kind)
        b = learned(K, reg_weight=1.0, regulariser=kind)
        with torch.no_grad():
            a.weight.copy_(torch.log(q_true))
            b.weight.copy_(torch.log(q_true[:, perm]))
        same = torch.isclose(a.regulariser(), b.regulariser(), atol=1e-6)
        assert bool(same) == (kind == "ridge")
    layer = learned(K, reg_weight=1.0, regulariser="ridge", init_flip=0.5)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        layer.regulariser().backward()
        opt.step()
    torch.testing.assert_close(layer.q().detach(), torch.full((K, K), 1.0 / K), atol=0.01, rtol=0)


def test_balance_is_zero_when_classes_are_used_equally_and_log_k_when_one_takes_all():
    assert float(balance(torch.eye(K) * 50)) == pytest.approx(0.0, abs=1e-6)
    one_class = torch.zeros(16, K)
    one_class[:, 3] = 50.0
    assert float(balance(one_class)) == pytest.approx(np.log(K), abs=1e-4)
    # its gradient moves mass toward an unused class: a dead output comes back to life
    logits = (torch.eye(K)[torch.arange(32) % (K - 1)] * 5).requires_grad_()
    balance(logits).backward()
    assert (logits.grad[:, K - 1] < 0).all()


def test_balance_enters_the_regulariser_of_a_learned_q_only():
    logits = torch.zeros(8, K)
    logits[:, 0] = 10.0
    layer = learned(K, reg_weight=0.0, balance_weight=2.0)
    assert float(layer.regulariser(logits)) == pytest.approx(2.0 * float(balance(logits)), abs=1e-6)
    assert float(layer.regulariser()) == 0.0  # no logits, no balance term
    assert float(FixedNoiseLayer(np.eye(K)).regulariser(logits)) == 0.0


def test_frozen_q_gets_no_gradient():
    y = torch.randint(0, K, (8,))
    for frozen in (True, False):
        layer = learned(K, reg_weight=1.0)
        layer.frozen = frozen
        logits = torch.randn(8, K, requires_grad=True)
        (layer.nll(logits, y) + layer.regulariser()).backward()
        assert logits.grad is not None  # the base model still learns during Q's warm-up
        assert (layer.weight.grad is None) == frozen


@pytest.mark.parametrize(
    "param, opt_cls, lr",
    # Adam steps every entry of a column by about lr alike, which the projection then undoes: projected Q
    # moves with SGD, whose steps scale with the gradient; the softmax parametrisation moves with Adam.
    [("softmax", torch.optim.Adam, 0.05), ("projected", torch.optim.SGD, 0.01)],
)
def test_learned_q_moves_toward_q_true_when_the_base_model_is_right(param, opt_cls, lr):
    """With a perfect, frozen base model (p(true|x) one-hot), the noisy NLL alone drives Q to the
    realised noise matrix: the noise goes into Q."""
    rng = np.random.default_rng(0)
    q_true = noise.random(K, 0.4, rng)
    y = np.repeat(np.arange(K), 400)
    y_noisy = torch.as_tensor(noise.corrupt(y, q_true, rng))
    logits = 20.0 * F.one_hot(torch.as_tensor(y), K).float()
    layer = learned(K, param=param, init_flip=0.01)
    opt = opt_cls(layer.parameters(), lr=lr)
    start = noise.q_error(layer.q().detach().numpy(), q_true)
    for _ in range(300):
        opt.zero_grad()
        layer.nll(logits, y_noisy).backward()
        opt.step()
        layer.project_()
    end = noise.q_error(layer.q().detach().numpy(), q_true)
    assert start > 0.7 and end < 0.1


def _revise(t_start, steps=300, lr=1e-4, seed=0):
    """T-Revision's revision with an oracle net (logits that favour the true class) frozen: only dT learns."""
    from noisy_convnet.layers import ImportanceLayer, stochastic_rows

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = 20_000
    y = rng.integers(0, K, n)
    q = noise.random(K, 0.4, rng)
    y_noisy = torch.as_tensor(noise.corrupt(y, q, rng))
    logits = 0.5 * torch.randn(n, K)
    logits[torch.arange(n), torch.as_tensor(y)] += 3.0
    layer = ImportanceLayer(t_start(q.T), revise=True, lr=lr)
    opt = torch.optim.Adam([layer.delta], lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, n, (128,))
        opt.zero_grad()
        layer.nll(logits[idx], y_noisy[idx]).backward()
        opt.step()
    before = noise.q_error(t_start(q.T).T, q)
    return before, noise.q_error(stochastic_rows(layer.t().detach().numpy()).T, q)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_revision_lowers_the_error_of_an_anchor_t_that_underestimates_the_noise(seed):
    """From T shrunk halfway to the identity (anchors' usual error: too little noise), the revision's
    gradient adds mass where the clean posterior and the noisy label disagree: q_error falls."""
    before, after = _revise(lambda t: 0.5 * t + 0.5 * np.eye(K), steps=500, seed=seed)
    assert after < before - 0.08


def test_the_revision_has_no_minimum_at_the_true_t():
    """Measured, not hoped: started at the true T, the revision moves away from it (its loss falls as T's
    entries grow), which is why it runs at a small learning rate for a bounded number of steps."""
    before, after = _revise(lambda t: t)
    assert before == pytest.approx(0.0) and after > 0.02


def test_reweighting_detaches_the_weight_and_revision_keeps_it():
    from noisy_convnet.layers import ImportanceLayer

    logits, y = torch.randn(16, K, requires_grad=True), torch.randint(0, K, (16,))
    t = noise.uniform(K, 0.3).T
    fixed = ImportanceLayer(t, revise=False)
    assert fixed.delta is None and list(fixed.parameters()) == []
    revised = ImportanceLayer(t, revise=True, lr=1e-3)
    revised.nll(logits, y).backward()
    assert revised.delta.grad is not None and revised.delta.grad.abs().sum() > 0
    with torch.no_grad():  # at dT = 0 both weigh the same cross entropy
        assert torch.allclose(fixed.nll(logits, y), revised.nll(logits, y))
