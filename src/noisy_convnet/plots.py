"""Figures shared by a run and the sweep report, drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .estimators import ESTIMATORS  # noqa: E402

# One colour per Q estimator (by its record name, report.curve without "+es"): the same in every figure
# (estimators.ESTIMATORS); the early-stopped variant dashed (lines) or hatched (bars). An estimator not listed
# (your own) takes one of OTHERS by its name, never one of these.
COLOURS = {e.name: e.colour for e in ESTIMATORS}
OTHERS = ("black", "tab:gray", "gold", "navy", "lime", "teal", "maroon", "darkkhaki")


def colour(curve: str) -> tuple[str, bool]:
    """(the colour of a curve, e.g. "anchor", "none+es@mnist" or "volmin+es#volmin", and whether it is
    early-stopped)."""
    base = re.split("[@#]", curve)[0]
    name = base.removesuffix("+es")
    if name not in COLOURS:
        name_hash = int(hashlib.sha256(name.encode()).hexdigest(), 16)
        return OTHERS[name_hash % len(OTHERS)], base.endswith("+es")
    return COLOURS[name], base.endswith("+es")


def q_heatmaps(q_true: np.ndarray, q: np.ndarray | None, title: str = ""):
    """Fig. 2c: the true noise matrix Q* beside the learned (or fixed) Q, same colour scale.
    Rows are the noisy label j, columns the true label i (q_ji)."""
    mats = [("true Q*", q_true)] + ([("Q used at the end", q)] if q is not None else [])
    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats) + 0.8, 3.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], mats, strict=True):
        im = ax.imshow(np.asarray(m), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("true label i")
        ax.set_ylabel("noisy label j")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save(fig, path: str | Path, pdf: bool = False) -> None:
    """PNG (and PDF) at 150 dpi, each written atomically, then close the figure."""
    import io

    from .files import write_atomic

    path = Path(path)
    for suffix, kw in ((".png", {"dpi": 150}), *(((".pdf", {}),) if pdf else ())):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], bbox_inches="tight", **kw)
        write_atomic(path.with_suffix(suffix), buf.getvalue())
    plt.close(fig)


def to_array(fig) -> np.ndarray:
    """An RGB uint8 image of the figure (for loggers that take arrays), then close it."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
