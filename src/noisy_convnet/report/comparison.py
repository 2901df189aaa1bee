"""The estimators compared on the same noisy labels (make estimators-cpu): per noise setting, each
estimator's test error (mean and sd over seeds) and q_error, paired differences of the test error against
a reference on the same seed, a bar figure of both and Q heatmaps per estimator (Q* first). Reads the frame
of ``load.load_sweep`` (its docstring names the columns: curve, method, seed, test_error, q_error, ...).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..estimators import NAMES


def _setting(df: pd.DataFrame) -> pd.Series:
    """The noise a run was trained under, as a column label: e.g. "uniform 0.5", "instance 0.2" (the noise
    model's name where Q* has no kind)."""
    kind = df["matrix"].where(df["matrix"].notna(), df["noise"]) if "noise" in df else df["matrix"]
    return kind.astype(str) + " " + df["level"].map("{:g}".format)


def comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Per noise setting and estimator: test error (%, mean and sd over seeds, the seed count) and q_error."""
    d = df.assign(setting=_setting(df))
    t = d.groupby(["setting", "method"]).agg(
        test_error=("test_error", "mean"),
        sd=("test_error", "std"),
        seeds=("seed", "nunique"),
        q_error=("q_error", "mean"),
    )
    t[["test_error", "sd"]] = (100 * t[["test_error", "sd"]]).round(1)
    t["q_error"] = t["q_error"].round(3)
    return t.reset_index()


def paired(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per noise setting and estimator: the difference of its test error and ``reference``'s (a curve of
    report.curve: "fixed", "none+es") on the same noisy labels (same seed), in points: mean and sd over the
    seeds. Negative: better."""
    if not (df["curve"] == reference).any():
        return pd.DataFrame()
    reference = df.loc[df["curve"] == reference, "method"].iloc[0]  # its label names the table's column
    d = df.assign(setting=_setting(df))
    wide = d.pivot_table(index=["setting", "seed"], columns="method", values="test_error", aggfunc="mean")
    if reference not in wide:
        return pd.DataFrame()
    diff = 100 * wide.sub(wide[reference], axis=0).drop(columns=reference)
    long = diff.stack().rename("diff").reset_index()
    t = long.groupby(["setting", "method"])["diff"].agg(["mean", "std", "count"]).round(1)
    t.columns = [f"vs {reference}: mean", "sd", "seeds"]
    return t.reset_index()


# The rows of the wide tables, by curve (report.curve): estimators.ESTIMATORS' order (the baselines first,
# then the estimators as the literature added them), the early-stopped plain net right after the plain net;
# a curve not listed (your own estimator) follows, by name.
ORDER = (NAMES[0], f"{NAMES[0]}+es", *NAMES[1:])


def _rows(curves) -> list[str]:
    """The curves in ORDER (a data set's suffix "@mnist" and a protocol's "#volmin" aside), then the others by
    name."""
    rank = {c: i for i, c in enumerate(ORDER)}

    def key(c: str) -> tuple[int, str]:
        base = re.split("[@#]", c)[0]
        return rank.get(base, rank.get(base.removesuffix("+es"), len(ORDER))), c

    return sorted(set(curves), key=key)


def _labelled(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(curve, its label) of every curve of df, in the tables' order."""
    labels = df.groupby("curve")["method"].first()
    return [(c, labels[c]) for c in _rows(df["curve"])]


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per estimator, one column per noise setting: "test error mean +- sd (q_error)" over the
    seeds (% of the clean test set; sd with two seeds or more): the table to paste into a paper."""
    d = df.assign(setting=_setting(df))
    g = d.groupby(["curve", "setting"])
    t = pd.DataFrame({"mean": 100 * g["test_error"].mean(), "sd": 100 * g["test_error"].std(),
                      "q": g["q_error"].mean()})
    cell = t.apply(lambda r: f"{r['mean']:.1f}" + ("" if np.isnan(r["sd"]) else f" +- {r['sd']:.1f}")
                   + ("" if np.isnan(r["q"]) else f" ({r['q']:.2f})"), axis=1)  # one seed: no sd
    out = cell.unstack("setting").reindex(_rows(d["curve"]))
    out.index = out.index.map(d.groupby("curve")["method"].first())
    return out.fillna("").rename_axis(index="estimator", columns=None).reset_index()


def wide_paired(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """``paired`` as one row per estimator, one column per setting: "mean +- sd" of the per-seed differences
    in points against ``reference`` (a curve; the mean alone for one seed); empty without it."""
    p = paired(df, reference)
    if not len(p):
        return p
    mean = p.columns[2]
    p = p[p["seeds"] > 0]  # a setting without the reference's runs (yet): left blank
    sd = p["sd"].map(lambda v: "" if pd.isna(v) else f" +- {v:.1f}")  # one seed: no spread to show
    p = p.assign(cell=p[mean].map("{:+.1f}".format) + sd)
    out = p.pivot(index="method", columns="setting", values="cell")
    order = [label for _, label in _labelled(df) if label in out.index]
    return (
        out.reindex(index=order, columns=sorted(_setting(df).unique()))
        .fillna("")
        .rename_axis(index=mean.replace(": mean", ""), columns=None)
        .reset_index()
    )


def _runs_of_a_row(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """df with its ``setting`` and the other axes a table row of stages and seeds must hold apart (the
    training size, the outlier ratio: where the sweep varies them), and those axes' names."""
    d = df.assign(setting=_setting(df))
    axes = [k for k in ("train_size", "outlier_ratio") if k in d and d[k].nunique(dropna=True) > 1]
    return d, ["setting", *axes]


def _table_rows(d: pd.DataFrame, axes: list[str], fill) -> pd.DataFrame:
    """One row per value of ``axes`` and curve, in the tables' order: its axes, its estimator's label, and
    ``fill(runs)``'s columns."""
    order = _rows(d["curve"])
    out = []
    for values, g in d.groupby([*axes, "curve"], dropna=False):
        *at, curve = values
        row = {**dict(zip(axes, at, strict=True)), "estimator": g["method"].iloc[0], **fill(g)}
        out.append(((*at, order.index(curve)), row))
    return pd.DataFrame([r for _, r in sorted(out, key=lambda t: t[0])])


def stages(df: pd.DataFrame) -> pd.DataFrame:
    """Per noise setting and estimator, the clean test error (%, mean +- sd over seeds) of each stage an
    estimator records (``<stage>_test_error``: T-Revision's plain net, its reweighting; the plain net of the
    anchor family) beside the tested one's; empty when no run records a stage."""
    cols = [c for c in df.columns if c.endswith("_test_error") and pd.api.types.is_numeric_dtype(df[c])]
    d, axes = _runs_of_a_row(df)
    d = d[d[cols].notna().any(axis=1)] if cols else d.iloc[:0]
    if d.empty:
        return pd.DataFrame()

    def fill(g: pd.DataFrame) -> dict:
        row = {}
        for c in [*cols, "test_error"]:
            v = 100 * g[c].dropna()
            name = "tested" if c == "test_error" else c.removesuffix("_test_error")
            row[name] = "" if v.empty else f"{v.mean():.1f}" + (f" +- {v.std():.1f}" if len(v) > 1 else "")
        return row

    return _table_rows(d, axes, fill)


def by_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Per noise setting and estimator, each seed's clean test error % and its q_error: the runs behind a
    mean +- sd, side by side for differences paired by seed; empty when the sweep has one seed. Two runs of
    one seed in one row (the same cell in two folders) show their mean and "[2 runs]"."""
    seeds = sorted(df["seed"].unique())
    if len(seeds) < 2:
        return pd.DataFrame()
    d, axes = _runs_of_a_row(df)

    def cell(run: pd.DataFrame) -> str:
        if run.empty:
            return ""
        q = run["q_error"].mean() if "q_error" in run else float("nan")
        return (f"{100 * run['test_error'].mean():.1f}" + ("" if pd.isna(q) else f" ({q:.2f})")
                + (f" [{len(run)} runs]" if len(run) > 1 else ""))

    return _table_rows(d, axes, lambda g: {f"seed {seed}": cell(g[g["seed"] == seed]) for seed in seeds})


def estimators_figure(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    from ..plots import colour

    t = comparison(df)
    settings = sorted(t["setting"].unique())
    curves = _labelled(df)  # in the tables' order, each estimator in its colour of every figure
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.8 / len(curves)
    for m_i, (c, label) in enumerate(curves):
        sub = t[t["method"] == label].set_index("setting").reindex(settings)
        x = np.arange(len(settings)) + (m_i - (len(curves) - 1) / 2) * width
        color, early_stopped = colour(c)
        style = {"color": color, "hatch": "//" if early_stopped else None, "edgecolor": "white"}
        yerr = sub["sd"] if (sub["seeds"] > 1).any() else None  # one seed: no spread to draw
        axes[0].bar(x, sub["test_error"], width, yerr=yerr, label=label, capsize=2, **style)
        axes[1].bar(x, sub["q_error"], width, **style)
    for ax, ylabel in zip(axes, ("clean test error (%), mean +- 1 sd over seeds", "q_error (mean over seeds)"),
                          strict=True):
        ax.set_xticks(range(len(settings)), settings)
        ax.set_xlabel("noise (Q* kind, level)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def estimator_q_heatmaps(df: pd.DataFrame):
    """Q* then each estimator's Q (the lowest seed), one row per noise setting; None when no run has a Q."""
    import matplotlib.pyplot as plt

    d = df.assign(setting=_setting(df))
    with_q = d[d["_record"].map(lambda r: r.get("Q") is not None)]
    if with_q.empty:
        return None
    settings, methods = sorted(with_q["setting"].unique()), [label for _, label in _labelled(with_q)]
    fig, axes = plt.subplots(len(settings), len(methods) + 1, figsize=(1.9 * (len(methods) + 1) + 0.8,
                             1.9 * len(settings) + 0.4), squeeze=False)
    im = None
    for r_i, s in enumerate(settings):
        rows = with_q[with_q["setting"] == s].sort_values("seed")
        panels = [("Q*", rows.iloc[0]["_record"]["Q_true"])]
        panels += [
            (m, rows[rows["method"] == m].iloc[0]["_record"]["Q"]) for m in methods if (rows["method"] == m).any()
        ]
        for c_i, ax in enumerate(axes[r_i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c_i >= len(panels):
                ax.axis("off")
                continue
            name, m = panels[c_i]
            im = ax.imshow(np.asarray(m), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(name, fontsize=7)
        axes[r_i][0].set_ylabel(s, fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="q_ji = p(noisy j | true i)")
    return fig
