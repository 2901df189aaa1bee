"""The errors of Hydra, OmegaConf and submitit that stand for a user's mistake, as the one line naming the
key (``user_error``): an unknown option or key, a value of the wrong type, an output folder Hydra cannot
write, a request SLURM refuses. Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import os

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .config import GROUPS, _allowed, group_options
from .errors import UserError


def user_error(e: Exception, overrides: list[str] | tuple[str, ...] = ()) -> UserError | None:
    """The one line for an error of Hydra or OmegaConf that stands for a user's mistake; None for others
    (a bug keeps its traceback). A UserError raised inside a job comes wrapped in Hydra's job error."""
    for inner in (e, e.__cause__, e.__context__):
        if isinstance(inner, UserError):
            return inner
    if isinstance(e, ValueError) and str(e).startswith("Config group override must be"):  # group=null
        nulls = [o.split("=")[0] for o in overrides if o.split("=")[0] in GROUPS and o.split("=", 1)[-1] == "null"]
        group = nulls[0] if nulls else "overrides"
        return UserError(f"{group}: null is not an option; allowed: {_allowed(group_options(group))}")
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        return UserError(f"{group or 'config'}: unknown option '{option}'; allowed: {_allowed(e.options)}")
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            return UserError(f"{cause.full_key}: unknown key (to add a new one, write +{cause.full_key}=...)")
        return UserError(f"{cause.full_key}: {str(cause.msg).splitlines()[0]}")
    tilde = [o for o in overrides if "=" in o and "~" in o.split("=", 1)[1]]
    if isinstance(e, OverrideParseException) and tilde:  # Hydra's grammar has no unquoted ~
        key, value = tilde[0].split("=", 1)
        return UserError(f"{key.lstrip('+~')}: Hydra reads ~ only inside quotes; write \"{key}='{value}'\" (expanded "
                         "to your home folder) or give the full path")
    if isinstance(e, (ConfigCompositionException, OverrideParseException, OmegaConfBaseException)):
        return UserError(f"overrides: {str(e).splitlines()[0]}")
    if type(e).__name__ == "FailedJobError" and "sbatch: error:" in str(e):  # submitit: SLURM refused the jobs
        return _sbatch_refused(str(e))
    oserror = next((x for x in (e, e.__cause__) if isinstance(x, OSError) and x.filename), None)
    if oserror is not None and _raised_by_hydra(e):  # making its output folder, its log file, .hydra/
        key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(overrides) else "hydra.run.dir"
        return UserError(f"{key}: cannot write '{oserror.filename}' ({oserror.strerror}); give a directory that "
                         "can be created and written")
    return None


# sbatch's refusals, by the words of its message, and the hydra.launcher key that asked for it
SBATCH_KEYS = (("partition", "partition"), ("gres", "gpus_per_node"), ("gpu", "gpus_per_node"),
               ("memory", "mem_gb"), ("time limit", "timeout_min"), ("cpu", "cpus_per_task"))


def _sbatch_refused(message: str) -> UserError:
    errors = [line.split("sbatch: error:", 1)[1].strip() for line in message.splitlines() if "sbatch: error:" in line]
    said = next((e for e in errors if not e.startswith("Batch job submission failed")), errors[0])
    key = next((k for words, k in SBATCH_KEYS if words in said.lower()), None)
    return UserError(f"hydra.launcher.{key or '*'}: SLURM refused the cells' jobs ({said}); ask for what the cluster "
                     "has (sinfo -N -l shows its partitions and nodes)")


def _raised_by_hydra(e: Exception) -> bool:
    """The error comes from Hydra's own code (its output folder, its log file), not from a run of this
    package (whose errors are bugs, or UserErrors of their own): no frame of this package but the entry."""
    import traceback

    files = [f.filename for f in traceback.extract_tb(e.__traceback__)]
    ours = [f for f in files if f"{os.sep}noisy_convnet{os.sep}" in f and not f.endswith(f"{os.sep}cli.py")]
    return any(f"{os.sep}hydra{os.sep}" in f for f in files) and not ours
