"""Train one model (or, with -m, a sweep): python train.py noise=flip level=0.5 q=learned

A thin Hydra wrapper over noisy_convnet.train.run. A user error (bad level, unknown data set, malformed
matrix file, ...) ends with one line on stderr naming the key and what is allowed, and exit status 2.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from noisy_convnet.config import check_overrides
from noisy_convnet.errors import UserError
from noisy_convnet.train import run


def _threads_under_joblib(cfg: DictConfig) -> None:
    """Cells run in parallel by the joblib launcher share the cores instead of each taking them all."""
    launcher = HydraConfig.get().launcher
    if cfg.threads is None and "joblib" in str(launcher.get("_target_", "")).lower():
        cores, n_jobs = os.cpu_count() or 1, launcher.get("n_jobs", -1)
        jobs = cores if n_jobs is None or n_jobs < 1 else min(n_jobs, cores)  # joblib: -1 = one per core
        cfg.threads = max(1, cores // jobs)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    _threads_under_joblib(cfg)
    try:
        record = run(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"test error {record['test_error']:.4f}  results: {cfg.run_dir}/results.json")
    return record["test_error"]


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
