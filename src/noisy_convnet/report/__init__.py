"""Tables and figures from a sweep: ``python -m noisy_convnet.report SWEEP_DIR [--out DIR] [--wandb]``
(cli.py). Its modules: ``load`` (a sweep into the documented frame), ``tables``, ``figures`` (the paper's),
``comparison`` (the estimators on the same noisy labels), ``peers`` (the peers' protocols beside the
shared one)."""

from .cli import cli, log_to_wandb, main
from .comparison import comparison, estimators_figure, paired, stages, wide, wide_paired
from .figures import _estimated, draw
from .load import RUNS_FILE, curve, load_sweep, method
from .tables import markdown, table

__all__ = ["RUNS_FILE", "cli", "comparison", "curve", "draw", "estimators_figure", "load_sweep", "log_to_wandb", "main",
           "markdown", "method", "paired", "stages", "table", "wide", "wide_paired", "_estimated"]
