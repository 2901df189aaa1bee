"""HOC (Zhu et al., ICML 2021, "Clusterability as an alternative to anchor points"): T from the agreement
of noisy labels among nearest neighbours, with no anchor points and no clean data.

If every image and its two nearest neighbours (by the cosine similarity of a trained net's features) share
their true class, the first-, second- and third-order consensus of their noisy labels are polynomials in T
(row-stochastic, T[i, j] = p(noisy = j | true = i)) and the class prior p:

  c1[j]       = sum_i p_i T_ij
  c2[j, l]    = sum_i p_i T_ij T_il
  c3[j, l, m] = sum_i p_i T_ij T_il T_im

``consensus`` counts them over ``rounds`` random samples of the images; ``fit_t`` finds T and p whose
polynomials match the counts (sum over the three orders of the L2 norm of the difference), T and p
parameterised by softmaxes (T's rows started at softmax(5 I - 1)), by Adam, keeping the lowest-loss
iterate. Pure numpy and torch: no Lightning, no Hydra.
"""

from __future__ import annotations

import numpy as np
import torch


def two_nearest(features: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two nearest other rows by cosine similarity (itself excluded), in blocks of rows."""
    f = torch.as_tensor(features, dtype=torch.float32)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    first, second = [], []
    for start in range(0, len(f), block):
        sim = f[start : start + block] @ f.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -float("inf")  # not itself
        top = sim.topk(2, dim=1).indices
        first.append(top[:, 0])
        second.append(top[:, 1])
    return torch.cat(first).numpy(), torch.cat(second).numpy()


def consensus(features: np.ndarray, labels: np.ndarray, k: int, rounds: int, sample_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c1, c2, c3): the first-, second- and third-order consensus of the noisy labels of each sampled image
    and its two nearest neighbours within the sample, averaged over ``rounds`` samples of ``sample_size``
    images drawn without replacement."""
    c1, c2, c3 = np.zeros(k), np.zeros((k, k)), np.zeros((k, k, k))
    for _ in range(rounds):
        idx = rng.choice(len(labels), size=sample_size, replace=False)
        y = labels[idx]
        nn1, nn2 = two_nearest(features[idx])
        c1 += np.bincount(y, minlength=k) / len(y)
        np.add.at(c2, (y, y[nn1]), 1.0 / len(y))
        np.add.at(c3, (y, y[nn1], y[nn2]), 1.0 / len(y))
    return c1 / rounds, c2 / rounds, c3 / rounds


def polynomials(t: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The consensus a row-stochastic T and a prior p predict."""
    return p @ t, torch.einsum("i,ij,il->jl", p, t, t), torch.einsum("i,ij,il,im->jlm", p, t, t, t)


def fit_t(c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, steps: int, lr: float, seed: int) -> tuple[np.ndarray, float]:
    """(T, its loss): T row-stochastic and p matching the counts, Adam on softmax logits (T's rows from
    softmax(5 I - 1), p from uniform), the lowest-loss iterate of ``steps``."""
    k = len(c1)
    torch.manual_seed(seed)
    targets = [torch.as_tensor(c, dtype=torch.float64) for c in (c1, c2, c3)]
    t_logits = (5.0 * torch.eye(k, dtype=torch.float64) - 1.0).requires_grad_()
    p_logits = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([t_logits, p_logits], lr=lr)
    best, best_loss = None, float("inf")
    for _ in range(steps):
        opt.zero_grad()
        t, p = torch.softmax(t_logits, dim=1), torch.softmax(p_logits, dim=0)
        loss = sum(torch.linalg.vector_norm(c - m) for c, m in zip(targets, polynomials(t, p), strict=True))
        if loss.item() < best_loss:  # a copy: Adam changes the logits in place (the authors' code lost it so)
            best, best_loss = t.detach().clone(), loss.item()
        loss.backward()
        opt.step()
    return best.numpy(), best_loss
