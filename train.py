"""Train one model (or, with -m, a sweep): python train.py noise=flip level=0.5 q=learned

A thin Hydra wrapper over noisy_convnet.train.run. A user error (bad level, unknown data set or option,
malformed matrix file, ...) ends with one line on stderr naming the key and what is allowed, and exit
status 2; Hydra's own composition errors are turned into that line too (config.user_error).
"""

import os
import sys

os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises composition errors: we print them in one line

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from noisy_convnet.config import user_error  # noqa: E402
from noisy_convnet.errors import Diverged, UserError  # noqa: E402
from noisy_convnet.runtime import share_machine  # noqa: E402
from noisy_convnet.train import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    share_machine(cfg, HydraConfig.get().launcher, os.cpu_count() or 1)
    try:
        record = run(cfg)
    except UserError as e:
        _exit_user_error(e)
    except Diverged as e:  # not a result: fail the run (and a sweep) loudly, without a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"test error {record.test_error:.4f}  results: {record.config['run_dir']}/results.json")
    return record.test_error


def _exit_user_error(e: UserError):
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        err = user_error(e)
        if err is None:
            raise
        _exit_user_error(err)
