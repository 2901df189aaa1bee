"""Tables and figures from a sweep: ``python -m noisy_convnet.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--wandb]``.

Reads every ``results.json`` under SWEEP_DIR (without any, its ``runs.jsonl``; several SWEEP_DIRs or
runs.jsonl files join, a run found twice kept from the first) into a pandas DataFrame (one row per run; the record's
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

import pandas as pd

from ..errors import UserError
from ..files import user_path, write_atomic
from ..record import RESULTS_FILE
from . import figures as drawing
from . import peers
from .comparison import by_seed, comparison, paired, stages, wide, wide_paired
from .load import RUNS_FILE, load_sweep
from .tables import markdown, table


def log_to_wandb(paths: list[Path], root: Path, t: pd.DataFrame) -> None:
    """The sweep's table (one row per cell) and every figure, to one summary run of the sweep's W&B group;
    offline without a key or a server (loggers.start_wandb)."""
    import wandb

    from ..loggers import start_wandb

    def start(offline: bool):
        return wandb.init(project="noisy-convnet", job_type="report", name=f"report {root.name}", group=root.name,
                          mode="offline" if offline else "online", dir=str(root))

    with start_wandb(start) as run:
        run.log({"results": wandb.Table(dataframe=t), **{p.stem: wandb.Image(str(p)) for p in paths}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noisy_convnet.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", nargs="+", help="a sweep directory (searched recursively for results.json; "
                    "without any, its runs.jsonl) or a report's runs.jsonl; several join, a run found twice kept "
                    "from the first")
    ap.add_argument("--out", help="where to write tables and figures (default: the first SWEEP_DIR, or its folder)")
    ap.add_argument("--wandb", action="store_true", help="also log the figures to W&B")
    ap.add_argument(
        "--titles",
        action="store_true",
        help="draw the 'Fig. 2b: ...' titles on the figures (a paper puts them in the caption)",
    )
    args = ap.parse_args(argv)
    try:
        sources = [Path(user_path(s, "sweep_dir")) for s in args.sweep_dir]
        args.out = None if args.out is None else Path(user_path(args.out, "--out"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    drawing.TITLES = args.titles
    for s in sources:
        if not s.exists():
            print(f"error: sweep_dir: '{s}' does not exist", file=sys.stderr)
            return 2
        if not s.is_dir() and not (s.is_file() and s.suffix == ".jsonl"):
            print(f"error: sweep_dir: '{s}' is neither a directory nor a report's .jsonl ({RUNS_FILE})",
                  file=sys.stderr)
            return 2
    root = (sources[0] if sources[0].is_dir() else sources[0].parent).resolve()
    out = args.out or root
    key = "--out" if args.out else "sweep_dir (the report's default place: give --out)"
    why = _unwritable(out)
    if why:  # before any work: nothing is read or written
        print(f"error: {key}: cannot write in '{out}' ({why}); give a folder that can be created and written "
              "(--out DIR)", file=sys.stderr)
        return 2
    df, problems = load_sweep(*sources)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    own = (out / RUNS_FILE).resolve()
    if own in df.attrs["left_out"]:  # rewriting it would lose the lines left out above: their only copy
        print(f"error: {key}: its {RUNS_FILE} is read and some of its lines are left out (above): writing the "
              "report there would drop them; give another folder (--out DIR)", file=sys.stderr)
        return 2
    if df.empty:
        where = ", ".join(f"'{s}'" for s in sources)
        print(f"error: sweep_dir: no runs ({RESULTS_FILE} or {RUNS_FILE}) in {where}", file=sys.stderr)
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
    paths = drawing.draw(df, out)
    by_stage = stages(df)
    if len(by_stage):  # estimators that record their stages' test errors (T-Revision's reweighting, ...)
        write_atomic(out / "stages.md", by_stage.to_markdown(index=False, disable_numparse=True) + "\n")
    seeds = by_seed(df)
    if len(seeds):  # several seeds: each one's numbers, for differences paired by seed
        write_atomic(out / "seeds.md", seeds.to_markdown(index=False, disable_numparse=True) + "\n")
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
            log_to_wandb(paths, root, t)
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
