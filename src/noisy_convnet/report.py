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
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import peers, plots
from .comparison import _rows as comparison_rows
from .comparison import comparison, estimator_q_heatmaps, estimators_figure, paired, stages, wide, wide_paired
from .config import schema_defaults
from .errors import UserError
from .files import user_path, write_atomic
from .identity import cell_config
from .record import RESULTS_FILE, SAME_AS

# Columns of the record that are not tables of numbers; the matrices stay in results.json.
MATRICES = ("Q_true", "Q", "confusion", "pr_curve")


def curve(row: pd.Series) -> str:
    """The curve a run belongs to, by the record's names: its Q estimator's ``q`` and "+es" when the net was
    early-stopped (figures select and colour curves by this, never by a display label)."""
    return str(row["q"]) + ("+es" if row.get("early_stopping") else "")


def method(row: pd.Series) -> str:
    """How tables and legends name a run's curve: its Q estimator's label, and whether it was early-stopped."""
    label = row.get("q_label")
    name = label if isinstance(label, str) and label else row["q"]
    return name + (" + early stopping" if row.get("early_stopping") else "")


# What the tables read of a record, and of what type (config may be absent: an empty one)
SHAPES = {"q": str, "dataset": str, "noise": str, "seed": int, "level": (int, float), "matrix": (str, type(None)),
          "test_error": (int, float, type(None)), "config": dict}  # fmt: skip
NEEDED = SHAPES.keys() - {"config"}
DEFAULTS = schema_defaults()  # a key at its default is the same cell whether a record has it or not
RUNS_FILE = "runs.jsonl"  # the report's compact copy of every record, beside the figures: redrawn from it


def _records(root: Path):
    """(path, text) of every results.json below root; without any, the lines of root's runs.jsonl."""
    paths = sorted(root.rglob(RESULTS_FILE))
    if paths:
        return [(p, p.read_text) for p in paths]
    runs = root / RUNS_FILE
    lines = runs.read_text().splitlines() if runs.is_file() else []
    return [(runs, line) for line in lines]


def load_sweep(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per finished run, warnings about failed, unfinished or unreadable runs)."""
    root = Path(root)
    rows, problems = [], []
    for path, text in _records(root):
        try:
            r = json.loads(text() if callable(text) else text)
        except (ValueError, OSError) as e:  # malformed JSON, bytes that are not UTF-8, a file gone
            problems.append(f"unreadable result {path}: {e}")
            continue
        missing = sorted(NEEDED - r.keys()) if isinstance(r, dict) else []
        if not isinstance(r, dict) or missing:
            problems.append(f"left out {path}: not a run's record{f' (no {missing})' if missing else ''}")
            continue
        cfg = r.pop("config", {}) or {}
        odd = [k for k, kinds in SHAPES.items() if not isinstance(r[k] if k != "config" else cfg, kinds)]
        if odd:  # a record of another shape (a string config, a q that is not a name): not this project's
            problems.append(f"left out {path}: not a run's record ({', '.join(odd)} of another type)")
            continue
        if not isinstance(r["test_error"], (int, float)) or not np.isfinite(r["test_error"]):
            problems.append(f"left out, test error {r['test_error']} (a diverged run): {path}")
            continue
        if (cfg.get("trainer") or {}).get("fast_dev_run"):
            problems.append(f"left out, a fast_dev_run (one batch, not a result): {path}")
            continue
        r["_cell"] = json.dumps({k: v for k, v in cell_config(cfg, DEFAULTS).items() if k != "seed"}, sort_keys=True)
        row = {k: v for k, v in r.items() if k not in MATRICES}
        row.update({f"cfg.{k}": v for k, v in pd.json_normalize(cfg, sep=".").iloc[0].items()} if cfg else {})
        row["run_dir"] = str(path.parent)
        row["_record"] = r
        row["_config"] = cfg
        rows.append(row)
    for hydra_dir in sorted(root.rglob(".hydra")):
        if not (hydra_dir.parent / RESULTS_FILE).exists() and not (hydra_dir.parent / SAME_AS).exists():
            problems.append(f"failed or unfinished run (no {RESULTS_FILE}): {hydra_dir.parent}")
    df = pd.DataFrame(rows)
    if len(df):
        df["method"] = df.apply(method, axis=1)
        df["curve"] = df.apply(curve, axis=1)
        df["protocol"] = df["_record"].map(lambda r: (r.get("protocol") or {}).get("name") or "shared")
        if df["protocol"].nunique() > 1:  # one curve per protocol: an estimator under two protocols is two rows
            df["method"] = df["method"] + " [" + df["protocol"] + "]"
            df["curve"] = df["curve"] + "#" + df["protocol"]
        if df["dataset"].nunique() > 1:  # one curve per data set: never two data sets joined into one line
            df["method"] = df["method"] + " (" + df["dataset"].astype(str) + ")"
            df["curve"] = df["curve"] + "@" + df["dataset"].astype(str)
        df["_cell"] = df["_record"].map(lambda r: r["_cell"])
        keys = [k for k in ("dataset", "noise", "matrix", "method", "level", "train_size", "outlier_ratio") if k in df]
        for cell, g in df.groupby(keys, dropna=False):
            if g["_cell"].nunique() > 1:  # same row of the table, runs that differ in more than the seed
                problems.append(f"runs that differ in more than their seed share the table's row {cell}: "
                                f"{', '.join(sorted(g['run_dir']))}")  # fmt: skip
    return df, problems


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of test error per cell (method x level x training size), in %."""
    keys = ["dataset", "noise", "matrix", "method", "level", "train_size", "outlier_ratio"]
    keys = [k for k in keys if k in df and df[k].notna().any()]
    agg = {"test_error": ["mean", "std", "count"]}
    for extra in ("q_error", "inlier_ap"):
        if extra in df and df[extra].notna().any():
            agg[extra] = "mean"
    t = df.groupby(keys, dropna=False).agg(agg)
    t.columns = ["test_error_%", "std_%", "seeds", *[c for c in agg if c != "test_error"]]
    t["test_error_%"] = 100 * t["test_error_%"]  # rounded once, where shown: 0.75 is 0.8 in every table
    t["std_%"] = 100 * t["std_%"]
    return t.reset_index()


def markdown(t: pd.DataFrame) -> str:
    """The table for a reader: "mean +- sd (n)" in one cell (the mean alone for one seed), q_error to 3
    digits, inlier AP to 3."""

    def cell(row) -> str:
        n = int(row["seeds"])
        return f"{row['test_error_%']:.1f}" + (f" +- {row['std_%']:.1f} ({n})" if n > 1 else " (1)")

    out = t.drop(columns=["test_error_%", "std_%", "seeds"]).copy()
    out.insert(len([c for c in out.columns if c not in ("q_error", "inlier_ap")]), "test error % (seeds)",
               t.apply(cell, axis=1))  # fmt: skip
    for col in ("q_error", "inlier_ap"):
        if col in out:
            out[col] = out[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    return out.to_markdown(index=False) + "\n"


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
                       vmin=-span if diff else lo, vmax=span if diff else hi)  # fmt: skip
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
                    linewidth=0.9 if seeds > 1 else 1.5, **_style(key))  # fmt: skip
    ax.set_title(f"N_out / N_in = {ratio:g}", fontsize=9)
    ax.set_xlabel("recall (inliers)")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if TITLES:
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
    # the paper's curves over one kind of Q* (a sweep of several kinds, e.g. the estimators', would mix them)
    one_kind = len(flip) and flip["matrix"].nunique(dropna=False) <= 1 and flip["noise"].nunique(dropna=False) <= 1
    paper = flip if one_kind else flip.iloc[:0]
    if len(paper) and paper["train_size"].nunique() > 1:
        save(_curves(paper, "train_size", "level", "training size", "Fig. 2a: test error vs training size", True),
             "fig2a_error_vs_size")  # fmt: skip
    if len(paper) and paper["level"].nunique() > 1:
        save(_curves(paper, "level", "train_size", "noise level", "Fig. 2b: test error vs noise level"),
             "fig2b_error_vs_level")  # fmt: skip
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
    if len(flip) and flip["protocol"].nunique() > 1:  # estimators under their own protocols and the shared one
        save(peers.figure(flip), "peers_error_by_protocol")
    elif len(flip) and flip["method"].nunique() > 4:  # several estimators compared on the same noisy labels
        save(estimators_figure(flip), "estimators_error_and_q_error")
        heatmaps = estimator_q_heatmaps(flip)
        if heatmaps is not None:  # some estimator's Q to draw
            save(heatmaps, "estimators_q_heatmaps")
    return made


def log_to_wandb(paths: list[Path], root: Path, t: pd.DataFrame) -> None:
    """The sweep's table (one row per cell) and every figure, to one summary run of the sweep's W&B group;
    offline without a key or a server (loggers.start_wandb)."""
    import wandb

    from .loggers import start_wandb

    def start(offline: bool):
        return wandb.init(project="noisy-convnet", job_type="report", name=f"report {root.name}", group=root.name,
                          mode="offline" if offline else "online", dir=str(root))  # fmt: skip

    with start_wandb(start) as run:
        run.log({"results": wandb.Table(dataframe=t), **{p.stem: wandb.Image(str(p)) for p in paths}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noisy_convnet.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", help="a sweep directory (searched recursively for results.json)")
    ap.add_argument("--out", default=None, help="where to write tables and figures (default: SWEEP_DIR)")
    ap.add_argument("--wandb", action="store_true", help="also log the figures to W&B")
    ap.add_argument(
        "--titles",
        action="store_true",
        help="draw the 'Fig. 2b: ...' titles on the figures (a paper puts them in the caption)",
    )
    args = ap.parse_args(argv)
    try:
        args.sweep_dir = Path(user_path(args.sweep_dir, "sweep_dir"))
        args.out = None if args.out is None else Path(user_path(args.out, "--out"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    global TITLES
    TITLES = args.titles
    if not args.sweep_dir.is_dir():
        print(f"error: sweep_dir: '{args.sweep_dir}' is not a directory", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    key = "--out" if args.out else "sweep_dir (the report's default place: give --out)"
    why = _unwritable(out)
    if why:  # before any work: nothing is read or written
        print(f"error: {key}: cannot write in '{out}' ({why}); give a folder that can be created and written "
              "(--out DIR)", file=sys.stderr)  # fmt: skip
        return 2
    df, problems = load_sweep(args.sweep_dir)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if df.empty:
        print(f"error: sweep_dir: no {RESULTS_FILE} under '{args.sweep_dir}'", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    shared_only = set(df["protocol"]) == {"shared"}  # a column only where some run has a protocol of its own
    flat = df.drop(columns=["_record", "_cell", "_config", "curve", *(["protocol"] if shared_only else [])])
    write_atomic(out / "results.csv", flat.to_csv(index=False))
    t = table(df)
    write_atomic(out / "results.md", markdown(t))
    runs = [
        {**{k: v for k, v in r.items() if k != "_cell"}, "config": c}
        for r, c in zip(df["_record"], df["_config"], strict=True)
    ]
    write_atomic(out / RUNS_FILE, "".join(json.dumps(r) + "\n" for r in runs))
    paths = figures(df, out)
    by_stage = stages(df)
    if len(by_stage):  # estimators that record their stages' test errors (T-Revision's reweighting, ...)
        write_atomic(out / "stages.md", by_stage.to_markdown(index=False, disable_numparse=True) + "\n")
    if df["method"].nunique() > 4 or not shared_only:  # several estimators, or a peer's protocol (make peers-mnist)
        flip = df[df["outlier_ratio"].isna()] if "outlier_ratio" in df else df
        if flip["protocol"].nunique() > 1:
            parts = [wide(flip), peers.versus_shared(flip), peers.orderings(flip), comparison(flip)]
        else:
            parts = [wide(flip), wide_paired(flip, "none+es"), comparison(flip)]
            parts += [paired(flip, ref) for ref in ("fixed", "none+es")]
        # a table of text cells stays text: "+11.2" keeps its sign
        tables = (p.to_markdown(index=False, disable_numparse=p.select_dtypes("number").empty) for p in parts if len(p))
        write_atomic(out / "comparison.md", "\n\n".join(tables) + "\n")
    print(t.round({"test_error_%": 2, "std_%": 2}).to_string(index=False))
    print(f"{len(df)} runs, {len(problems)} warnings -> {out}/results.csv, results.md, {len(paths)} figures")
    if args.wandb:
        try:
            log_to_wandb(paths, args.sweep_dir, t)
        except UserError as e:  # WANDB_MODE=online and no server: the files above are written, the log is not
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def _unwritable(out: Path) -> str | None:
    """Why the report could not write its files in ``out`` (made if missing), or None: a file there or above
    it, or a folder it may not write in (tried with a temporary file in the nearest existing one)."""
    if out.exists() and not out.is_dir():
        return "a file is there"
    nearest = next(p for p in (out, *out.parents) if p.exists())
    if not nearest.is_dir():
        return f"'{nearest}' is a file"
    try:
        tempfile.TemporaryFile(dir=nearest).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def cli() -> None:
    """The noisy-convnet-report console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
