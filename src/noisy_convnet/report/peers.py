"""The estimators under their own papers' protocols beside the shared one (make peers-mnist): is a ranking
the method's or the harness's?

A run's protocol is its record's ``protocol.name`` ("shared" for the shared one and for records written
before protocols had names); a protocol's ``estimator`` is the method whose paper it is (protocol_patrini:
anchor). On a frame of report.load_sweep with several protocols:
  versus_shared -- each estimator under a protocol minus the same estimator under the shared protocol, on the
                   same noisy labels (same seed and setting), in points: does the protocol move it?
  orderings     -- within each protocol, each estimator minus anchor points on the same noisy labels: do the
                   papers' orderings (T-Revision, VolMinNet and Dual-T above forward correction with the
                   anchor T) hold under that protocol?
  figure        -- per setting, each peer's estimator under its own protocol and the shared one, with fixed Q*
                   under each beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .comparison import _rows, _setting

SHARED = "shared"
REFERENCES = ("fixed", "none")  # not estimators: no row of their own in the orderings


def _base(q: str) -> str:
    return q.removesuffix("_oracle")


def _diffs(df: pd.DataFrame, keys: list[str], against) -> pd.DataFrame:
    """Per-seed differences (points) of each run's test error and its reference run's, the reference chosen
    by ``against(row) -> (protocol, curve)``; mean +- sd per ``keys`` as "+1.2 +- 0.3"."""
    d = df.assign(setting=_setting(df), base=df["curve"].str.split("#").str[0])
    index = d.set_index(["setting", "seed", "protocol", "base"])["test_error"]
    index = index[~index.index.duplicated()]
    rows = []
    for _, r in d.iterrows():
        ref = against(r)
        if ref is None:
            continue
        key = (r["setting"], r["seed"], *ref)
        if key in index.index:
            rows.append(
                {**{k: r[k] for k in keys}, "setting": r["setting"], "diff": 100 * (r["test_error"] - index[key])}
            )
    if not rows:
        return pd.DataFrame()
    g = pd.DataFrame(rows).groupby([*keys, "setting"])["diff"]
    cell = g.mean().map("{:+.1f}".format) + g.std().map(lambda v: "" if np.isnan(v) else f" +- {v:.1f}")
    return cell.unstack("setting").fillna("")


def versus_shared(df: pd.DataFrame) -> pd.DataFrame:
    """One row per estimator and protocol other than the shared one, one column per setting: its test error
    minus the same estimator's under the shared protocol, same seed (points; negative: the protocol helps)."""

    def against(r):  # the shared protocol's estimators are tested at the last epoch; its plain net early-stopped
        return None if r["protocol"] == SHARED else (SHARED, "none+es" if r["q"] == "none" else r["q"])

    t = _diffs(df, ["curve", "method"], against)
    if not len(t):
        return t
    t = t.reindex([c for c in _rows(t.index.get_level_values("curve")) if c in t.index.get_level_values("curve")],
                  level="curve")
    return t.droplevel("curve").rename_axis(index="minus the shared protocol's", columns=None).reset_index()


def orderings(df: pd.DataFrame) -> pd.DataFrame:
    """One row per estimator and protocol, one column per setting: its test error minus anchor points' under
    the same protocol, same seed (points; negative: it beats forward correction with the anchor T)."""

    def against(r):
        if r["q"] in (*REFERENCES, "anchor"):
            return None
        return (r["protocol"], "anchor+es" if r["early_stopping"] else "anchor")

    t = _diffs(df, ["protocol", "curve", "method"], against)
    if not len(t):
        return t
    order = {c: i for i, c in enumerate(_rows(t.index.get_level_values("curve")))}
    t = t.iloc[sorted(range(len(t)), key=lambda i: (t.index[i][0], order[t.index[i][1]]))]
    return t.droplevel(["protocol", "curve"]).rename_axis(index="minus anchor points'", columns=None).reset_index()


def own_protocols(df: pd.DataFrame) -> dict:
    """estimator -> the name of its own paper's protocol, for those the sweep ran under one (none: no figure)."""
    own = {}
    for r in df["_record"]:
        p = r.get("protocol") or {}
        if p.get("estimator"):
            own[p["estimator"]] = p["name"]
    return own


def figure(df: pd.DataFrame):
    """Per setting, a group of bars per estimator that has an own protocol: under its own protocol, fixed Q*
    under that protocol, the estimator under the shared protocol, fixed Q* under the shared one (hatched:
    shared); mean over seeds, error bars 1 sd where there are several."""
    import matplotlib.pyplot as plt

    from ..plots import colour

    d = df.assign(setting=_setting(df), base=df["q"].map(str))
    own_of = own_protocols(d)
    estimators = [q for q in _rows(d["base"]) if _base(q) in own_of]
    settings = sorted(d["setting"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 4.2), squeeze=False, sharey=True)

    def stat(setting, q, protocol):
        rows = d[(d["setting"] == setting) & (d["base"] == q) & (d["protocol"] == protocol)]
        rows = rows[~rows["early_stopping"]] if protocol == SHARED else rows  # not the shared plain net's twin
        e = 100 * rows["test_error"]
        return (e.mean(), e.std() if len(e) > 1 else 0.0) if len(e) else (np.nan, 0.0)

    bars = (("own", False, False), ("own", True, False), (SHARED, False, True), (SHARED, True, True))
    width = 0.2
    for ax, setting in zip(axes[0], settings, strict=True):
        for i, q in enumerate(estimators):
            for j, (which, fixed, hatched) in enumerate(bars):
                protocol = own_of[_base(q)] if which == "own" else SHARED
                mean, sd = stat(setting, "fixed" if fixed else q, protocol)
                label = None
                if i == 0:
                    label = ("fixed Q*" if fixed else "the estimator") + (", shared protocol" if hatched else
                                                                          ", its own protocol")
                ax.bar(i + (j - 1.5) * width, mean, width, yerr=sd or None, capsize=2, label=label,
                       color=colour("fixed" if fixed else q)[0], hatch="//" if hatched else None,
                       edgecolor="white")
        ticks = ["\n".join([_base(q), *(["from Q*"] if q != _base(q) else []), f"({own_of[_base(q)]})"])
                 for q in estimators]  # an oracle start's name on a line of its own: names never run together
        ax.set_xticks(range(len(estimators)), ticks, fontsize=8)
        ax.set_title(f"noise: {setting}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("clean test error (%), mean over seeds")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("each estimator under its own paper's protocol (its name below) and the shared protocol", fontsize=9)
    fig.tight_layout()
    return fig
