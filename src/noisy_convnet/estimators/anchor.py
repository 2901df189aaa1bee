"""Forward correction with anchor points (Patrini et al. 2017) and Dual-T (Yao et al. 2020): their T is
row-stochastic, T[i, j] = p(noisy = j | true = i); this project's Q is its transpose."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import _estimation_images, _ForwardCorrection


def anchor_indices(probs: np.ndarray, percentile: float) -> np.ndarray:
    """Patrini et al.'s anchor of each class i: the image with the highest p(noisy = i | x) once the values
    at or above the column's ``percentile`` (numpy's method="higher") are discarded, each column filtered
    on its own copy; percentile 100 discards nothing (plain argmax)."""
    out = np.empty(probs.shape[1], dtype=np.int64)
    for i in range(probs.shape[1]):
        column = probs[:, i].copy()
        if percentile < 100:
            column[column >= np.percentile(column, percentile, method="higher")] = 0.0
        out[i] = int(np.argmax(column))
    return out


def anchor_t(probs: np.ndarray, percentile: float) -> np.ndarray:
    """T_hat (rows = true class): row i is the prediction at class i's anchor, renormalised to sum to 1."""
    t = probs[anchor_indices(probs, percentile)]
    return t / t.sum(axis=1, keepdims=True)


def count_t(probs: np.ndarray, noisy_labels: np.ndarray) -> np.ndarray:
    """Dual-T's T_count[i, j] = p(noisy = j | predicted = i), counted on the training part; a class never
    predicted gets the identity row (no evidence of a flip)."""
    k = probs.shape[1]
    counts = np.zeros((k, k))
    np.add.at(counts, (probs.argmax(axis=1), noisy_labels), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    return np.where(rows > 0, counts / np.maximum(rows, 1.0), np.eye(k))


def _percentile(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 100:
        raise UserError(f"q.anchor_percentile: {value!r} is outside [1, 100], a percentile (97: the authors'; 100: "
                        "no discarding, plain argmax)")
    return float(value)


class AnchorQ(_ForwardCorrection):
    """Forward correction with anchor points (Patrini et al. 2017): Q_hat = T_hat transposed."""

    name, label = "anchor", "anchor points"

    def __init__(self, anchor_percentile: float, start: str):
        self.percentile = _percentile(anchor_percentile)
        self.started(start)

    def estimate(self, noisy, k, train, val, trainers):
        images = _estimation_images(train, val, trainers)
        plain = self.plain(k, train, val, trainers, predict=images)
        return anchor_t(plain.probs, self.percentile).T, plain.probs, {"plain_test_error": plain.test.test_error}


class DualTQ(AnchorQ):
    """Dual-T (Yao et al. 2020): T_hat = T_anchor x T_count, both from the same early-stopped plain net."""

    name, label = "dualt", "Dual-T"

    def estimate(self, noisy, k, train, val, trainers):
        images = _estimation_images(train, val, trainers)
        plain = self.plain(k, train, val, trainers, predict=images)
        t = anchor_t(plain.probs, self.percentile) @ count_t(plain.probs, images.y.numpy())
        return t.T, plain.probs, {"plain_test_error": plain.test.test_error}
