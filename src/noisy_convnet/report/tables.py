"""The sweep's table: one row per cell of the paper's axes, the mean and sd of the test error over seeds."""

from __future__ import annotations

import pandas as pd


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
               t.apply(cell, axis=1))
    for col in ("q_error", "inlier_ap"):
        if col in out:
            out[col] = out[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    return out.to_markdown(index=False) + "\n"
