"""Tables and figures from a sweep: ``python -m noisy_convnet.report SWEEP_DIR [--out DIR] [--wandb]``.

Reads every ``results.json`` under SWEEP_DIR into a pandas DataFrame (one row per run; the record's
scalars plus every config field as a ``cfg.<key>`` column), warns about runs that failed or have not
finished (a cell directory with Hydra's ``.hydra/`` but no results.json) and about unreadable files, and
writes ``results.csv``, ``results.md`` and, for whichever axes the sweep varies, the paper's figures as
PNG and PDF: error vs training size (Fig. 2a), error vs noise level (Fig. 2b), Q* beside the learned Q
(Fig. 2c), the noise x size grid for no noise layer and learned Q and their difference (Fig. 3), and,
for outlier sweeps, error and inlier AP vs N_out/N_in (Fig. 4a). With several seeds per cell, curves are
the mean with a band of one standard deviation. Works on a partial sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .results import RESULTS_FILE, write_atomic

# Columns of the record that are not tables of numbers; the matrices stay in results.json.
MATRICES = ("Q_true", "Q", "confusion", "pr_curve")


def method(row: pd.Series) -> str:
    """The curve a run belongs to: its Q estimator's label, and whether the net was early-stopped."""
    label = row.get("q_label")
    name = label if isinstance(label, str) and label else row["q"]
    return name + (" + early stopping" if row.get("early_stopping") else "")


def load_sweep(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per finished run, warnings about failed, unfinished or unreadable runs)."""
    root = Path(root)
    rows, problems = [], []
    for path in sorted(root.rglob(RESULTS_FILE)):
        try:
            r = json.loads(path.read_text())
            cfg = r.pop("config", {}) or {}
        except (json.JSONDecodeError, OSError, AttributeError) as e:
            problems.append(f"unreadable result {path}: {e}")
            continue
        row = {k: v for k, v in r.items() if k not in MATRICES}
        row.update({f"cfg.{k}": v for k, v in pd.json_normalize(cfg, sep=".").iloc[0].items()} if cfg else {})
        row["run_dir"] = str(path.parent)
        row["_record"] = r
        rows.append(row)
    for hydra_dir in sorted(root.rglob(".hydra")):
        if not (hydra_dir.parent / RESULTS_FILE).exists():
            problems.append(f"failed or unfinished run (no {RESULTS_FILE}): {hydra_dir.parent}")
    df = pd.DataFrame(rows)
    if len(df):
        df["method"] = df.apply(method, axis=1)
    return df, problems


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of test error per cell (method x level x training size), in %."""
    keys = [k for k in ("dataset", "method", "level", "train_size", "outlier_ratio") if k in df and df[k].notna().any()]
    agg = {"test_error": ["mean", "std", "count"]}
    for extra in ("q_error", "inlier_ap"):
        if extra in df and df[extra].notna().any():
            agg[extra] = "mean"
    t = df.groupby(keys, dropna=False).agg(agg)
    t.columns = ["test_error_%", "std_%", "seeds", *[c for c in agg if c != "test_error"]]
    t["test_error_%"] = (100 * t["test_error_%"]).round(2)
    t["std_%"] = (100 * t["std_%"]).round(2)
    return t.reset_index()


# One colour per Q mode, dashed when early-stopped: the same in every figure.
COLOURS = {"no noise layer": "tab:red", "fixed Q*": "tab:blue", "learned Q": "tab:green"}


def _style(method_name: str) -> dict:
    base = method_name.replace(" + early stopping", "")
    return {"color": COLOURS.get(base), "linestyle": "--" if base != method_name else "-"}


def _curves(df: pd.DataFrame, x: str, facet: str, xlabel: str, title: str, logx: bool = False):
    import matplotlib.pyplot as plt

    facets = sorted(df[facet].unique())
    # room on the right for the legend
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets) + 2.8, 3.6), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], facets, strict=True):
        sub = df[df[facet] == f]
        for name, g in sorted(sub.groupby("method"), key=lambda t: t[0]):
            s = g.groupby(x)["test_error"].agg(["mean", "std"]).sort_index() * 100
            ax.plot(s.index, s["mean"], marker="o", label=name, **_style(name))
            if g.groupby(x).size().max() > 1:
                ax.fill_between(s.index, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0), alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{facet.replace('_', ' ')} = {f}", fontsize=9)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("clean test error (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _fig2c(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    learned = _estimated(df).sort_values(["level", "seed"]).drop_duplicates("level")
    learned = learned[learned["level"] > 0].tail(4)
    fig, axes = plt.subplots(2, len(learned), figsize=(2.8 * len(learned), 5.6), squeeze=False)
    for col, (_, row) in enumerate(learned.iterrows()):
        rec = row["_record"]
        for r, (name, m) in enumerate((("Q*", rec["Q_true"]), (row["method"], rec["Q"]))):
            axes[r][col].imshow(np.asarray(m), vmin=0, vmax=1, cmap="viridis")
            axes[r][col].set_title(f"{name}, level {row['level']}", fontsize=9)
            axes[r][col].set_xticks([])
            axes[r][col].set_yticks([])
    fig.suptitle("Fig. 2c: true noise matrix Q* (top) and Q learned from the noisy data (bottom)", fontsize=10)
    fig.tight_layout()
    return fig


def _estimated(df: pd.DataFrame) -> pd.DataFrame:
    """The runs whose Q was estimated from the data, of the first such estimator (the learned Q)."""
    est = df[df["q_estimated"].fillna(False).astype(bool)] if "q_estimated" in df else df.iloc[:0]
    return est[est["q"] == est["q"].iloc[0]] if len(est) else est


def _fig3(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    grids = {}
    for name in ("no noise layer", "learned Q"):
        g = df[df["method"] == name].groupby(["level", "train_size"])["test_error"].mean().unstack() * 100
        grids[name] = g
    grids["no noise layer - learned Q"] = grids["no noise layer"] - grids["learned Q"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (name, g) in zip(axes, grids.items(), strict=True):
        diff = name.startswith("no noise layer -")
        span = np.nanmax(np.abs(g.values)) if diff else None  # a diverging scale centred on 0
        im = ax.imshow(g.values, cmap="RdBu" if diff else "viridis_r", aspect="auto", origin="lower",
                       vmin=-span if diff else None, vmax=span)  # fmt: skip
        mid = np.nanmean([np.nanmin(g.values), np.nanmax(g.values)])
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
    fig.suptitle("Fig. 3: test error over noise level x training size", fontsize=10)
    fig.tight_layout()
    return fig


def _fig4a(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4))
    for name, g in sorted(df.groupby("method"), key=lambda t: t[0]):
        for ax, col, scale in ((axes[0], "test_error", 100), (axes[1], "inlier_ap", 1)):
            s = g.groupby("outlier_ratio")[col].agg(["mean", "std"]).sort_index() * scale
            ax.errorbar(s.index, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=name, **_style(name))
    axes[0].set_ylabel("inlier test error (%)")
    axes[1].set_ylabel("inlier average precision")
    for ax in axes:
        ax.set_xlabel("N_out / N_in")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Fig. 4a: outlier noise, no noise layer vs the outlier model", fontsize=10)
    fig.tight_layout()
    return fig


def _fig4b(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    for name, g in sorted(df.groupby("method"), key=lambda t: t[0]):
        row = g.sort_values(["outlier_ratio", "seed"]).iloc[0]
        pr = row["_record"]["pr_curve"]
        ax.plot(pr["recall"], pr["precision"], label=f"{name} (AP {row['inlier_ap']:.3f})", **_style(name))
    ax.set_xlabel("recall (inliers)")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Fig. 4b: detecting inliers in the test set", fontsize=10)
    fig.tight_layout()
    return fig


def figures(df: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every figure the sweep has the axes for; return the PNG paths."""
    made = []

    def save(fig, name):
        plots.save(fig, out / name, pdf=True)
        made.append(out / f"{name}.png")

    with_outliers = df["outlier_ratio"].notna() if "outlier_ratio" in df else pd.Series(False, index=df.index)
    flip = df[~with_outliers]
    if len(flip) and flip["train_size"].nunique() > 1:
        save(_curves(flip, "train_size", "level", "training size", "Fig. 2a: test error vs training size", True),
             "fig2a_error_vs_size")  # fmt: skip
    if len(flip) and flip["level"].nunique() > 1:
        save(_curves(flip, "level", "train_size", "noise level", "Fig. 2b: test error vs noise level"),
             "fig2b_error_vs_level")  # fmt: skip
    if len(_estimated(flip)) and _estimated(flip)["level"].max() > 0:
        save(_fig2c(flip), "fig2c_q_heatmaps")
    methods = set(flip["method"]) if len(flip) else set()
    if {"no noise layer", "learned Q"} <= methods and flip["level"].nunique() > 1 and flip["train_size"].nunique() > 1:
        save(_fig3(flip), "fig3_grid")
    outl = df[with_outliers]
    if len(outl) and outl["outlier_ratio"].nunique() > 1:
        save(_fig4a(outl), "fig4a_outliers")
    if len(outl) and "pr_curve" in outl["_record"].iloc[0]:
        save(_fig4b(outl), "fig4b_inlier_pr")
    return made


def log_to_wandb(paths: list[Path], root: Path) -> None:
    import wandb

    with wandb.init(project="noisy-convnet", job_type="report", name=f"report {root.name}", group=root.name) as run:
        run.log({p.stem: wandb.Image(str(p)) for p in paths})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noisy_convnet.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep directory (searched recursively for results.json)")
    ap.add_argument("--out", type=Path, default=None, help="where to write tables and figures (default: SWEEP_DIR)")
    ap.add_argument("--wandb", action="store_true", help="also log the figures to W&B")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: sweep_dir: '{args.sweep_dir}' is not a directory", file=sys.stderr)
        return 2
    df, problems = load_sweep(args.sweep_dir)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if df.empty:
        print(f"error: sweep_dir: no {RESULTS_FILE} under '{args.sweep_dir}'", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    flat = df.drop(columns=["_record"])
    write_atomic(out / "results.csv", flat.to_csv(index=False))
    t = table(df)
    write_atomic(out / "results.md", t.to_markdown(index=False) + "\n")
    paths = figures(df, out)
    print(t.to_string(index=False))
    print(f"{len(df)} runs, {len(problems)} warnings -> {out}/results.csv, results.md, {len(paths)} figures")
    if args.wandb:
        log_to_wandb(paths, args.sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
