"""The noise layer of the paper (Fig. 1a, Eq. 2-3): a constrained linear layer Q between the softmax of
the base network and the cost, so the combined model predicts p(noisy = j | x) = sum_i q_ji p(true = i | x).

Plain PyTorch, no Lightning. Three layers, one class each:
  NoiseLayer        -- no Q: ordinary cross entropy on the (noisy) labels (the base of the other two).
  FixedNoiseLayer   -- Q given (Q*, or an estimate), frozen: forward correction.
  LearnedNoiseLayer -- Q trained with the network, kept column-stochastic, with a regulariser that pushes
             Q to diffuse so the noise moves out of the base model and into Q (Sec. "Learning the noise
             distribution"): the paper's trace, reg_weight * trace(Q) / K, or the ridge,
             reg_weight * sum(Q**2) / K (the paper names both; ridge is the default, see REGULARISERS).
Two ways to keep a learned Q a probability matrix: ``param="softmax"`` (free logits, Q = column-wise
softmax; moves with Adam at its own, larger learning rate) and ``param="projected"`` (the paper's: Q
itself is the parameter, projected back onto the simplex after every step).

Everything is computed in log space so zeros in Q or in the softmax never give inf or NaN: the loss of
a sample with noisy label y is -logsumexp_i(log q_yi + log p_i).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PARAMS = ("softmax", "projected")
# The regulariser that makes Q diffuse (paper: "a trace norm or a ridge regression"). trace: tr(Q)/K,
# lowest when the diagonal is empty -- it also rewards relabelling the base model's classes so that Q's
# diagonal lands on small entries. ridge: sum(Q**2)/K, lowest at uniform columns and the same for every
# relabelling, so it pushes Q to diffuse without preferring a permutation.
REGULARISERS = ("trace", "ridge")
# A projected Q stays this far inside the simplex: the gradient of -log q_ji is -1/q_ji, and an entry
# projected to exactly 0 would make the next step explode.
PROJECT_FLOOR = 1e-3
# Added to Q before its log: keeps log finite where q = 0 while the gradient of log(q + EPS) through
# logsumexp stays p_i / p(noisy) -- the exact one -- down to q = 0 (EPS * (1/EPS) cancels).
EPS = 1e-12


def project_simplex(v: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Euclidean projection of every column of v onto {x >= floor, sum x = 1} (the probability simplex
    for floor = 0; sort-based algorithm of Duchi et al., 2008, on the simplex shrunk by the floor)."""
    n = v.shape[0]
    mass = 1.0 - n * floor
    u, _ = torch.sort(v - floor, dim=0, descending=True)
    css = u.cumsum(dim=0) - mass
    ind = torch.arange(1, n + 1, device=v.device, dtype=v.dtype).unsqueeze(1)
    # The condition holds on a prefix of the sort and always for the first entry; clamp guards round-off.
    rho = (u - css / ind > 0).sum(dim=0, keepdim=True).clamp_min(1)
    theta = css.gather(0, rho - 1) / rho.to(v.dtype)
    return (v - floor - theta).clamp_min(0.0) + floor


def noisy_log_prob(log_p: torch.Tensor, log_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(noisy = y_n | x_n) = logsumexp_i(log q[y_n, i] + log p_n[i]) for each sample (Eq. 2).
    Gathers only the observed label's row of Q: O(B K) memory, so K = 1000 is cheap."""
    return torch.logsumexp(log_q[y] + log_p, dim=1)


def balance(logits: torch.Tensor) -> torch.Tensor:
    """KL(mean softmax of the batch || uniform) = log K - H(mean p), in nats: 0 when the base model uses
    its classes equally, log K when it puts every image in one class.

    Why: with Q free, a regulariser that makes Q diffuse also rewards merging two classes into one base
    output (the merged column is more diffuse) and leaving another output dead (its column goes uniform at
    no likelihood cost). Measured on MNIST-5k, random Q* at 0.5, ridge 1.0: 14.7% test error with a dead
    class, 4.4% with this term (weight 1). It assumes roughly balanced true classes."""
    log_p = F.log_softmax(logits.float(), dim=1)
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(len(log_p))
    return (log_mean.exp() * (log_mean + math.log(log_p.shape[1]))).sum()


# A noise layer's own optimiser, by name (NoiseLayer.optimizer; None: a group of the network's optimiser)
LAYER_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class NoiseLayer(nn.Module):
    """No noise layer: the base model's softmax meets the noisy labels directly (cross entropy). The
    interface every noise layer shares with the training loop: ``q()``, ``nll``, ``regulariser``,
    ``project_``, Q's own learning rate ``lr`` (None: the network's) and ``warmup_epochs`` (Q frozen at
    its start for that many epochs, the training sequence of Fig. 1b)."""

    lr: float | None = None
    warmup_epochs: int = 0
    scheduled = True  # Q's learning rate follows the network's schedule (False: constant)
    optimizer: str | None = None  # Q's own optimiser by name (LAYER_OPTIMIZERS); None: the network's

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.frozen = False  # set by the training loop during warm-up

    def q(self) -> torch.Tensor | None:
        """The current Q (K x K, column-stochastic), or None without a noise layer."""
        return None

    def log_q(self) -> torch.Tensor:
        return torch.log(self.q() + EPS)

    def nll(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the noisy labels y under the combined model (Eq. 3)."""
        log_p = F.log_softmax(logits.float(), dim=1)
        if self.q() is None:
            return F.nll_loss(log_p, y)
        return -noisy_log_prob(log_p, self.log_q(), y).mean()

    def regulariser(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The extra loss term of a learned Q (0 for the others)."""
        return torch.zeros((), device=self._device())

    def project_(self) -> None:
        """After an optimizer step: put a directly parametrised Q back on the simplex (a no-op here)."""

    def _device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")


class FixedNoiseLayer(NoiseLayer):
    """Q fixed to a given matrix (Q*, or an estimate of it): frozen, never trained."""

    def __init__(self, q: np.ndarray | torch.Tensor):
        q = torch.as_tensor(np.asarray(q), dtype=torch.float32)
        super().__init__(q.shape[0])
        self.register_buffer("q_fixed", q.clone())

    def q(self) -> torch.Tensor:
        return self.q_fixed


class LearnedNoiseLayer(NoiseLayer):
    """Q trained with the network (paper Sec. 3). ``param="softmax"``: free logits, Q = column softmax;
    ``param="projected"``: Q itself, projected back onto the simplex after every step."""

    def __init__(
        self,
        num_classes: int,
        *,
        param: str,
        init_flip: float,
        lr: float | None,
        reg_weight: float,
        warmup_epochs: int,
        regulariser: str,
        balance_weight: float,
    ):  # no defaults: the recipe's one home is conf/q/learned.yaml
        super().__init__(num_classes)
        if param not in PARAMS:
            raise ValueError(f"param {param!r} not in {PARAMS}")
        if regulariser not in REGULARISERS:
            raise ValueError(f"regulariser {regulariser!r} not in {REGULARISERS}")
        self.regulariser_kind, self.balance_weight = regulariser, float(balance_weight)
        self.param, self.lr = param, lr
        self.reg_weight, self.warmup_epochs = float(reg_weight), int(warmup_epochs)
        k = self.num_classes
        # 1 - init_flip on the diagonal, the rest spread evenly (default 0.5: diffuse, so the base model
        # does not absorb the noise first). Never exactly I: log q = -inf (softmax) or the simplex's
        # corner (projected), where nothing moves.
        q0 = (1.0 - init_flip) * torch.eye(k) + init_flip / max(k - 1, 1) * (1.0 - torch.eye(k))
        self.weight = nn.Parameter(torch.log(q0) if param == "softmax" else q0)

    def q(self) -> torch.Tensor:
        q = F.softmax(self.weight, dim=0) if self.param == "softmax" else self.weight
        return q.detach() if self.frozen else q

    def log_q(self) -> torch.Tensor:
        if self.param == "softmax":
            w = self.weight.detach() if self.frozen else self.weight
            return F.log_softmax(w, dim=0)
        return torch.log(self.q() + EPS)

    def regulariser(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """reg_weight * trace(Q) / K (``trace``) or reg_weight * sum(Q**2) / K (``ridge``) -- lower = more
        diffuse Q; both are 1 for Q = I and 1/K for a uniform Q -- plus, given the base model's logits for
        a batch, ``balance_weight * balance(logits)``."""
        out = torch.zeros((), device=self._device())
        if self.reg_weight and not self.frozen:  # a frozen Q (warm-up) is not regularised
            q = self.q()
            out = out + self.reg_weight * (
                q.square().sum(0).mean() if self.regulariser_kind == "ridge" else torch.diagonal(q).mean()
            )
        if self.balance_weight and logits is not None:  # a term on the base model: applies in warm-up too
            out = out + self.balance_weight * balance(logits)
        return out

    @torch.no_grad()
    def project_(self) -> None:
        if self.param == "projected":
            self.weight.copy_(project_simplex(self.weight, PROJECT_FLOOR))


class VolMinNoiseLayer(NoiseLayer):
    """VolMinNet's Q (Li et al. 2021), in this project's layout (columns sum to 1): Q = column-normalised
    I + sigmoid(W) * (1 - I), W initialised at ``init`` (their -2: off-diagonal entries 0.12 before the
    normalisation), so Q starts diagonally dominant and stays so; the regulariser is their minimum-volume
    term ``vol_weight * log|det Q|`` (their lambda 1e-4), which shrinks Q's simplex while the NLL keeps it
    consistent with the data. Q has its own learning rate ``lr`` at a constant rate (``scheduled``) and,
    given ``optimizer`` ("adam": their MNIST code's), an optimiser of its own beside the network's."""

    def __init__(self, num_classes: int, init: float, vol_weight: float, lr: float, scheduled: bool = False,
                 optimizer: str | None = None):
        super().__init__(num_classes)
        self.vol_weight, self.lr, self.scheduled = float(vol_weight), float(lr), bool(scheduled)
        self.optimizer = optimizer
        self.weight = nn.Parameter(torch.full((num_classes, num_classes), float(init)))

    def q(self) -> torch.Tensor:
        eye = torch.eye(self.num_classes, device=self.weight.device)
        a = eye + torch.sigmoid(self.weight) * (1.0 - eye)
        return a / a.sum(0, keepdim=True)

    def regulariser(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.vol_weight * torch.linalg.slogdet(self.q())[1]


class ImportanceLayer(NoiseLayer):
    """T-Revision's importance reweighting (Xia et al. 2019): the loss is the cross entropy of the base
    model on the noisy label, weighted per image by w = p(y~ | x) / (T^T p(. | x))[y~], where p is the base
    model's softmax and T (row-stochastic, T[i, j] = p(noisy = j | true = i)) an estimate: the clean
    posterior of the noisy label over its noisy posterior. Reweighting (``revise=False``): w is a constant
    (detached). Revision (``revise=True``): T + dT with a slack dT (zero at the start, unconstrained, its own
    constant learning rate ``lr``), and w keeps its gradient, the slack's only signal (the paper's method;
    the authors' code adds dT once per image of a batch, and its batched version detaches w)."""

    scheduled = False  # the slack's learning rate stays constant

    def __init__(self, t: np.ndarray, revise: bool, lr: float | None = None):
        t = torch.as_tensor(np.asarray(t), dtype=torch.float32)
        super().__init__(t.shape[0])
        self.revise = bool(revise)
        self.register_buffer("t_hat", t.clone())
        self.delta = nn.Parameter(torch.zeros_like(t)) if self.revise else None
        self.lr = lr if self.revise else None

    def t(self) -> torch.Tensor:
        """T + dT (T alone when reweighting)."""
        return self.t_hat if self.delta is None else self.t_hat + self.delta

    def q(self) -> torch.Tensor:
        return self.t().T  # this project's layout; T + dT need not stay stochastic

    def nll(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        p = log_p.exp()
        noisy = (p @ self.t()).gather(1, y[:, None]).squeeze(1)  # (T^T p)[y~] = p(noisy = y~ | x)
        w = p.gather(1, y[:, None]).squeeze(1) / noisy.clamp_min(EPS)
        if not self.revise:
            w = w.detach()
        return (w * F.nll_loss(log_p, y, reduction="none")).mean()


def stochastic_rows(t: np.ndarray) -> np.ndarray:
    """A matrix with negative entries clipped to 0 and rows scaled to sum to 1 (a revised T as a transition
    matrix: what q_error compares)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, None)
    sums = t.sum(axis=1, keepdims=True)
    return np.where(sums > 0, t / np.where(sums > 0, sums, 1.0), 1.0 / t.shape[1])
