"""Label-noise models: the true transition matrix Q* and label corruption (paper, Eq. 1 and Eq. 8).

Every matrix here is column-stochastic in the paper's layout, ``Q[j, i] = p(noisy = j | true = i)``:
column i is the distribution of the label an image of class i receives. NumPy only, so that it can be
read against the paper and tested alone.

Expected behaviour: ``corrupt(y, Q, rng)`` flips a fraction of labels close to the mean off-diagonal
mass of Q's columns (weighted by class frequency), e.g. ~0.50 for ``matrix("uniform", 10, 0.5)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .errors import UserError


class NoColumn(UserError):
    """A label file without the column asked for (or with several and none asked): ``noise.column``."""

MATRIX_KINDS = ("uniform", "pair", "random")
# Column sums may differ from 1 by this much in a user's file (CSV round-off).
STOCHASTIC_TOL = 1e-4


def uniform(k: int, level: float) -> np.ndarray:
    """1 - level on the diagonal, level / (K - 1) everywhere else (symmetric flip noise)."""
    q = np.full((k, k), level / (k - 1))
    np.fill_diagonal(q, 1.0 - level)
    return q


def pair(k: int, level: float) -> np.ndarray:
    """Class i keeps its label with 1 - level and becomes (i + 1) mod K with probability level."""
    q = (1.0 - level) * np.eye(k)
    q[(np.arange(k) + 1) % k, np.arange(k)] += level
    return q


def random(k: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """1 - level on the diagonal; the mass ``level`` of each column spread over its other rows with
    Dirichlet(1) weights, like the random Q* of the paper's SVHN/CIFAR experiments (Fig. 2c)."""
    q = np.zeros((k, k))
    for i in range(k):
        others = [j for j in range(k) if j != i]
        q[others, i] = level * rng.dirichlet(np.ones(k - 1))
        q[i, i] = 1.0 - level
    return q


def from_file(path: str | Path, k: int) -> np.ndarray:
    """A user's K x K matrix (.npy, or .csv of numbers), checked to be column-stochastic."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"noise.matrix: file '{path}' does not exist; give uniform, pair, random or a .npy/.csv path")
    try:
        q = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
        q = np.asarray(q, dtype=np.float64)
    except (ValueError, OSError, EOFError) as e:  # EOFError: an empty or truncated .npy
        raise UserError(f"noise.matrix: cannot read '{path}' as a numeric matrix ({str(e) or 'empty file'})") from None
    check_stochastic(q, k, "noise.matrix", f"'{path}'")
    return q


def check_stochastic(q: np.ndarray, k: int, key: str, what: str = "Q") -> None:
    """Raise a UserError naming ``key`` unless q is a K x K column-stochastic matrix."""
    if q.shape != (k, k):
        raise UserError(f"{key}: {what} has shape {q.shape}; the data set has {k} classes, so ({k}, {k}) is needed")
    if not np.all(np.isfinite(q)) or (q < 0).any():
        raise UserError(f"{key}: {what} has entries that are negative or not finite; all must be >= 0")
    sums = q.sum(axis=0)
    if np.abs(sums - 1.0).max() > STOCHASTIC_TOL:
        raise UserError(
            f"{key}: {what} columns must sum to 1 (q_ji = p(noisy=j|true=i)); column sums are {np.round(sums, 4)}"
        )


def matrix(kind: str, k: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Q* by name (``uniform``, ``pair``, ``random``) or from a file path."""
    if kind == "uniform":
        return uniform(k, level)
    if kind == "pair":
        return pair(k, level)
    if kind == "random":
        return random(k, level, rng)
    return from_file(kind, k)


def outlier(k: int, alpha: float, inliers: np.ndarray | None = None) -> np.ndarray:
    """Eq. 8: the (K+1) x (K+1) Q* for outlier noise. Inliers keep their label (or follow ``inliers``, a
    K x K flip matrix, when flip noise is added); an outlier (column K) carries a uniform label over the
    K classes with total mass 1 - alpha, and label K+1 with alpha, the fraction of outliers that were
    given the explicit outlier label. Singular when alpha = 0."""
    q = np.zeros((k + 1, k + 1))
    q[:k, :k] = np.eye(k) if inliers is None else inliers
    q[:k, k] = (1.0 - alpha) / k
    q[k, k] = alpha
    return q


def is_singular(q: np.ndarray) -> bool:
    # Condition number rather than det: det of a 10x10 near-uniform matrix is tiny but exact-zero
    # tests miss float round-off (uniform at (K-1)/K has cond ~1e16).
    return bool(np.linalg.cond(q) > 1e8)


def corrupt(y: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw each noisy label from column y of Q (inverse-CDF sampling, one uniform per label), so the
    same generator state gives the same noisy labels."""
    cdf = np.cumsum(q, axis=0)[:, y]  # (K, N): CDF of each image's label distribution
    u = rng.random(len(y))
    noisy = (u[None, :] > cdf).sum(axis=0)
    return np.minimum(noisy, q.shape[0] - 1).astype(np.int64)  # round-off at the top of the CDF


def instance_rates(n: int, level: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Per-image flip rates (Xia et al. 2020, "Part-dependent label noise", tools.py): q_i drawn from a
    normal of mean ``level`` and sd ``sd`` truncated to [0, 1]."""
    from scipy.stats import truncnorm

    return truncnorm.rvs((0.0 - level) / sd, (1.0 - level) / sd, loc=level, scale=sd, size=n, random_state=rng)


def instance_flip(x: np.ndarray, y: np.ndarray, k: int, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Instance-dependent noisy labels (Xia et al. 2020): one draw from each row of instance_transition."""
    p = instance_transition(x, y, k, rates, rng)
    u = rng.random(len(y))
    return np.minimum((p.cumsum(axis=1) < u[:, None]).sum(axis=1), k - 1).astype(np.int64)


def instance_transition(x: np.ndarray, y: np.ndarray, k: int, rates: np.ndarray, rng: np.random.Generator
                        ) -> np.ndarray:
    """p(noisy = j | image i) of Xia et al.'s generator: W ~ N(0, 1) of shape (K, d, K), one projection per
    true class; for image x (flattened, as given: raw 0..255 pixels in the authors' code) with label y,
    softmax(x W[y]) over the other classes, scaled by its rate q_i, and 1 - q_i on y. The flip probability
    of each image is exactly its rate; which class it flips to depends on the image."""
    n, d = x.shape
    w = rng.standard_normal((k, d, k)).astype(np.float32)
    logits = np.empty((n, k), dtype=np.float64)
    for c in range(k):
        rows = np.flatnonzero(y == c)
        if len(rows):
            logits[rows] = x[rows].astype(np.float32) @ w[c]
    logits[np.arange(n), y] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p *= (rates / p.sum(axis=1))[:, None]
    p[np.arange(n), y] += 1.0 - rates
    return p


def realised(y_true: np.ndarray, y_noisy: np.ndarray, k: int) -> np.ndarray:
    """The empirical transition matrix of a corruption, same layout as Q (columns = true class)."""
    counts = np.zeros((k, k))
    np.add.at(counts, (y_noisy, y_true), 1.0)
    return counts / np.maximum(counts.sum(axis=0, keepdims=True), 1.0)


def q_error(q: np.ndarray, q_true: np.ndarray) -> float:
    """Mean over columns of the L1 distance between two transition matrices (0 = equal, 2 = disjoint)."""
    return float(np.abs(q - q_true).sum(axis=0).mean())


def load_pt_labels(path: Path):
    """A .pt file of labels (CIFAR-N's dict of numpy arrays, a tensor, a list) read without running code:
    torch.load(weights_only=True), with numpy's array and dtype reconstruction allowed and nothing else."""
    import torch

    core = getattr(np, "_core", None) or np.core  # numpy >= 2 moved it; files pickled by numpy 1 name numpy.core
    allowed = [np.ndarray, np.dtype, *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, name)
        allowed += [fn, (fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True, map_location="cpu")


def labels_from_file(
    path: str | Path, column: str | None, n: int, k: int, pool: np.ndarray | None = None
) -> np.ndarray:
    """One noisy label per pool image, in the pool's order: a .npy vector, a .csv (one column, or the
    column named ``column``), or the .pt dict of CIFAR-10N/CIFAR-100N's human labels (``column`` picks
    e.g. aggre_label, worse_label, random_label1). A file with a ``clean_label`` column (CIFAR-N's) must
    hold the ``pool``'s labels there, in order: else it belongs to another order or data set, refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"noise.file: '{path}' does not exist; give a .npy, .csv or .pt file of noisy labels")
    if path.suffix not in (".npy", ".pt", ".csv"):
        raise UserError(f"noise.file: '{path}' is not a .npy, .csv or .pt file")
    try:
        if path.suffix == ".npy":
            table = {None: np.load(path)}
        elif path.suffix == ".pt":
            import torch

            obj = load_pt_labels(path)
            if not isinstance(obj, (dict, torch.Tensor, np.ndarray, list, tuple)):
                raise ValueError(f"it holds a {type(obj).__name__}; a vector of labels or a dict of them is needed")
            table = dict(obj) if isinstance(obj, dict) else {None: np.asarray(obj)}  # CIFAR-N's dict, or one vector
        else:
            import pandas as pd

            table = dict(pd.read_csv(path).items())
    except (ValueError, OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:  # RuntimeError: torch.load's
        if "weights_only" in str(e) or "Unsupported global" in str(e):  # a pickle that asks for more than data
            raise UserError(f"noise.file: '{path}' holds objects other than arrays of labels; refused (reading it "
                            "would run code from the file)") from None
        raise UserError(f"noise.file: cannot read '{path}' ({str(e) or 'empty file'})") from None
    if column is None and len(table) != 1:
        raise NoColumn(f"noise.column: '{path}' has several columns; choose one of {', '.join(map(str, table))}")
    if column is not None and column not in table:
        raise NoColumn(f"noise.column: '{column}' is not in '{path}'; choose one of {', '.join(map(str, table))}")
    if path.suffix == ".csv" and any(str(c).strip().lstrip("-").isdigit() for c in table):
        raise UserError(f"noise.file: '{path}' has no header row (its first line reads as a label); start it with "
                        "a column name, e.g. 'label'")
    y = np.asarray(table[column] if column is not None else next(iter(table.values())))
    if y.ndim != 1 and not (y.ndim == 2 and 1 in y.shape):
        raise UserError(f"noise.file: '{path}' holds an array of shape {y.shape}; one label per pool image, a vector")
    y = y.reshape(-1)
    if len(y) != n:
        raise UserError(f"noise.file: {len(y)} labels in '{path}', but the training pool has {n} images")
    clean = table.get("clean_label")
    if pool is not None and clean is not None and column != "clean_label":
        clean = np.asarray(clean).reshape(-1)
        differ = int((clean != pool).sum()) if clean.shape == pool.shape else len(pool)
        if differ:
            raise UserError(f"noise.file: the clean_label column of '{path}' differs from the pool's labels at "
                            f"{differ} of {n} images: the file is in another order than the pool (or of another "
                            "data set); refused")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise UserError(f"noise.file: labels must be integers in [0, {k - 1}]")
    return y.astype(np.int64)
