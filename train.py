"""Train one model (or, with -m, a sweep): python train.py noise=flip level=0.5 q=learned

A thin Hydra wrapper over noisy_convnet.train.run. A user error (bad level, unknown data set, malformed
matrix file, ...) ends with one line on stderr naming the key and what is allowed, and exit status 2.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from noisy_convnet.config import check_overrides, share_machine
from noisy_convnet.errors import UserError
from noisy_convnet.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    share_machine(cfg, HydraConfig.get().launcher, os.cpu_count() or 1)
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
