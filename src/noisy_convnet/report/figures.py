"""The paper's figures from a sweep, for whichever axes it varies (``draw``): error vs training size
(Fig. 2a), vs noise level (Fig. 2b), Q* beside the learned Q (Fig. 2c), the noise x size grid (Fig. 3),
outliers (Fig. 4), and the estimators' figures; PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from . import peers
from .comparison import _rows as comparison_rows
from .comparison import estimator_q_heatmaps, estimators_figure


def _style(curve_name: str) -> dict:
    color, early_stopped = plots.colour(curve_name)
    return {"color": color, "linestyle": "--" if early_stopped else "-"}


def _curves_of(df: pd.DataFrame):
    """(curve, its label, its rows), in the order of the labels."""
    return sorted(((c, g["method"].iloc[0], g) for c, g in df.groupby("curve")), key=lambda t: t[1])


def _curves(df: pd.DataFrame, x: str, facet: str, xlabel: str, title: str, logx: bool = False):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    facets = sorted(df[facet].unique())
    # room on the right for the legend
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets) + 2.8, 3.6), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], facets, strict=True):
        sub = df[df[facet] == f]
        for key, name, g in _curves_of(sub):
            s = g.groupby(x)["test_error"].agg(["mean", "std"]).sort_index() * 100
            seeds = g.groupby(x)["seed"].nunique().max()
            label = name + (f" (mean +- 1 sd over {seeds} seeds)" if seeds > 1 else "")
            (line,) = ax.plot(s.index, s["mean"], marker="o", label=label, **_style(key))
            if seeds > 1:  # the band in the line's own colour
                lo, hi = s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0)
                ax.fill_between(s.index, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{facet.replace('_', ' ')} = {f}", fontsize=9)
        if logx:
            ax.set_xscale("log")
            ax.set_xticks(sorted(df[x].unique()))
            ax.xaxis.set_major_formatter(ScalarFormatter())  # 1000, 2000, 4000 rather than 10^3 and 2x10^3
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("clean test error (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    _title(fig, title)
    fig.tight_layout()
    return fig


TITLES = False  # figure titles ("Fig. 2b: ...") belong in a paper's caption; report --titles draws them


def _title(fig, title: str) -> None:
    if TITLES:
        fig.suptitle(title, fontsize=10)


def _fig2c(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    learned = _estimated(df).sort_values(["level", "seed"]).drop_duplicates("level")
    learned = learned[learned["level"] > 0].tail(4)
    fig, axes = plt.subplots(2, len(learned), figsize=(2.9 * len(learned) + 1.0, 5.8), squeeze=False)
    im = None
    for col, (_, row) in enumerate(learned.iterrows()):
        rec = row["_record"]
        for r, (name, m) in enumerate((("Q*", rec["Q_true"]), (row["method"], rec["Q"]))):
            ax, m = axes[r][col], np.asarray(m)
            im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{name}, level {row['level']:g}", fontsize=9)
            ticks = range(0, len(m), max(1, len(m) // 5))
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.tick_params(labelsize=7)
            if r == 1:
                ax.set_xlabel("true class i", fontsize=8)
            if col == 0:
                ax.set_ylabel("noisy label j", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="q_ji = p(noisy j | true i)")
    who = "learned" if (learned["curve"] == "learned").all() else f"estimated by {learned['method'].iloc[0]}"
    _title(fig, f"Fig. 2c: true noise matrix Q* (top) and Q {who} from the noisy data (bottom)")
    return fig


def _estimated(df: pd.DataFrame) -> pd.DataFrame:
    """The runs whose Q was estimated from the data, of one estimator: the paper's learned Q when the sweep has
    it (Fig. 2c is its figure), else the first estimated one in the tables' order."""
    est = df[df["q_estimated"].fillna(False).astype(bool)] if "q_estimated" in df else df.iloc[:0]
    if not len(est):
        return est
    first = comparison_rows(est["curve"])[0]
    return est[est["curve"] == ("learned" if (est["curve"] == "learned").any() else first)]


def _fig3(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    labels = df.groupby("curve")["method"].first()
    plain, learned = labels["none"], labels["learned"]
    grids = {}
    for key in ("none", "learned"):
        g = df[df["curve"] == key].groupby(["level", "train_size"])["test_error"].mean().unstack() * 100
        grids[labels[key]] = g
    grids[f"{plain} - {learned}"] = grids[plain] - grids[learned]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    # one colour scale for both error panels, so one colour means one error
    lo = min(np.nanmin(grids[n].values) for n in (plain, learned))
    hi = max(np.nanmax(grids[n].values) for n in (plain, learned))
    for i, (ax, (name, g)) in enumerate(zip(axes, grids.items(), strict=True)):
        diff = i == 2
        span = np.nanmax(np.abs(g.values)) if diff else None  # a diverging scale centred on 0
        im = ax.imshow(g.values, cmap="RdBu" if diff else "viridis_r", aspect="auto", origin="lower",
                       vmin=-span if diff else lo, vmax=span if diff else hi)
        mid = (lo + hi) / 2
        for (i, j), v in np.ndenumerate(g.values):
            if np.isfinite(v):  # dark text on the light half of the colour scale
                light = abs(v) < 0.6 * span if diff else v < mid
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="k" if light else "w")
        ax.set_xticks(range(g.shape[1]), g.columns)
        ax.set_yticks(range(g.shape[0]), g.index)
        ax.set_xlabel("training size")
        ax.set_ylabel("noise level")
        ax.set_title(name + (" (gain, points)" if diff else " (test error %)"), fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    _title(fig, "Fig. 3: test error over noise level x training size")
    fig.tight_layout()
    return fig


def _fig4a(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4))
    for key, name, g in _curves_of(df):
        for ax, col, scale in ((axes[0], "test_error", 100), (axes[1], "inlier_ap", 1)):
            s = g.groupby("outlier_ratio")[col].agg(["mean", "std"]).sort_index() * scale
            ax.errorbar(s.index, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=name, **_style(key))
    axes[0].set_ylabel("inlier test error (%)")
    axes[1].set_ylabel("inlier average precision")
    for ax in axes:
        ax.set_xlabel("N_out / N_in")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    _title(fig, "Fig. 4a: outlier noise, no noise layer vs the outlier model")
    fig.tight_layout()
    return fig


def _fig4b(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ratio = sorted(df["outlier_ratio"].unique())[len(df["outlier_ratio"].unique()) // 2]  # the middle ratio
    for key, name, g in _curves_of(df[df["outlier_ratio"] == ratio]):
        seeds = len(g)
        for i, (_, row) in enumerate(g.sort_values("seed").iterrows()):  # every seed, thinly when several
            pr = row["_record"]["pr_curve"]
            ap = f"AP {g['inlier_ap'].mean():.3f}" + (f", mean of {seeds} seeds" if seeds > 1 else "")
            ax.plot(pr["recall"], pr["precision"], label=f"{name} ({ap})" if i == 0 else None,
                    linewidth=0.9 if seeds > 1 else 1.5, **_style(key))
    ax.set_title(f"N_out / N_in = {ratio:g}", fontsize=9)
    ax.set_xlabel("recall (inliers)")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if TITLES:
        ax.set_title("Fig. 4b: detecting inliers in the test set", fontsize=10)
    fig.tight_layout()
    return fig


def draw(df: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every figure the sweep has the axes for; return the PNG paths."""
    made = []

    def save(fig, name):
        plots.save(fig, out / name, pdf=True)
        made.append(out / f"{name}.png")

    with_outliers = df["outlier_ratio"].notna() if "outlier_ratio" in df else pd.Series(False, index=df.index)
    flip = df[~with_outliers]
    # the paper's curves over one kind of Q* (a sweep of several kinds, e.g. the estimators', would mix them)
    one_kind = len(flip) and flip["matrix"].nunique(dropna=False) <= 1 and flip["noise"].nunique(dropna=False) <= 1
    paper = flip if one_kind else flip.iloc[:0]
    if len(paper) and paper["train_size"].nunique() > 1:
        save(_curves(paper, "train_size", "level", "training size", "Fig. 2a: test error vs training size", True),
             "fig2a_error_vs_size")
    if len(paper) and paper["level"].nunique() > 1:
        save(_curves(paper, "level", "train_size", "noise level", "Fig. 2b: test error vs noise level"),
             "fig2b_error_vs_level")
    if len(_estimated(paper)) and _estimated(paper)["level"].max() > 0:
        save(_fig2c(paper), "fig2c_q_heatmaps")
    curves = set(paper["curve"]) if len(paper) else set()
    if {"none", "learned"} <= curves and paper["level"].nunique() > 1 and paper["train_size"].nunique() > 1:
        save(_fig3(paper), "fig3_grid")
    outl = df[with_outliers]
    if len(outl) and outl["outlier_ratio"].nunique() > 1:
        save(_fig4a(outl), "fig4a_outliers")
    if len(outl) and outl["_record"].iloc[0].get("pr_curve") is not None:
        save(_fig4b(outl), "fig4b_inlier_pr")
    if len(flip) and flip["protocol"].nunique() > 1 and peers.own_protocols(flip):  # own protocols beside the shared
        save(peers.figure(flip), "peers_error_by_protocol")
    elif len(flip) and flip["method"].nunique() > 4:  # several estimators compared on the same noisy labels
        save(estimators_figure(flip), "estimators_error_and_q_error")
        heatmaps = estimator_q_heatmaps(flip)
        if heatmaps is not None:  # some estimator's Q to draw
            save(heatmaps, "estimators_q_heatmaps")
    return made
