"""cleanlab's confident joint (Northcutt et al. 2021), an optional extra (AGPL-3.0): the library is
called, not ported."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import _ForwardCorrection


def _require_cleanlab() -> None:
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise UserError("q: q=confident calls cleanlab, which is not installed: pip install 'noisy-convnet[cleanlab]'")


def confident_q(probs: np.ndarray, noisy_labels: np.ndarray) -> np.ndarray:
    """cleanlab's confident-joint estimate with its default arguments; its noise_matrix[i, j] =
    p(noisy = i | true = j) is this project's layout already."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    _, noise_matrix, _, _ = estimate_py_and_noise_matrices_from_probabilities(noisy_labels, probs)
    return np.asarray(noise_matrix, dtype=np.float64)


class ConfidentQ(_ForwardCorrection):
    """cleanlab's confident joint (Northcutt et al. 2021) on out-of-fold probabilities: ``folds`` plain nets,
    each trained on the other folds of the training part (stratified by noisy label, seeded) and
    early-stopped on the validation slice, predict their held-out fold."""

    name, label = "confident", "confident joint"

    def __init__(self, folds: int, start: str):
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise UserError(f"q.folds: {folds} must be a whole number >= 2")
        _require_cleanlab()
        self.folds = folds
        self.started(start)

    def estimate(self, noisy, k, train, val, trainers):
        from sklearn.model_selection import StratifiedKFold

        labels = train.y.numpy()
        rarest = int(np.bincount(labels, minlength=k).min())
        if self.folds > rarest:
            raise UserError(f"q.folds: {self.folds} folds need at least as many images of every noisy label; "
                            f"the rarest has {rarest}")
        probs = np.full((len(labels), k), np.nan)
        split = StratifiedKFold(self.folds, shuffle=True, random_state=trainers.context.seed).split(labels, labels)
        errors = []
        for rest, held in split:
            fold = self.plain(k, train.take(rest), val, trainers, predict=train.take(held), stage=None)
            probs[held] = fold.probs
            errors.append(fold.test.test_error)
        return confident_q(probs, labels), probs, {"fold_test_errors": errors}
