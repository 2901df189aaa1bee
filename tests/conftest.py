import os
import subprocess
import sys
from pathlib import Path

# One torch thread in the test process and every process it starts (train.py, sweeps), before torch is
# imported: the tests' nets are tiny, and two threads on two cores busy with anything else spin-wait for each
# other (one training step of the 8x8 digits' net: 0.40 s with two threads against 0.013 s with one, measured
# beside a sweep), which made `make test` take 32 min on a busy machine instead of 13.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from noisy_convnet.config import CONF_DIR, compose  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(CONF_DIR)
# Small and quick: the 8x8 digits, one epoch, no progress bar.
FAST = ["data=digits", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(autouse=True, scope="session")
def data_root(tmp_path_factory):
    """The default data.root (fetch.default_root) in a temporary folder: tests never read or fill the
    user's cache."""
    root = tmp_path_factory.mktemp("data-root")
    before = os.environ.get("NOISY_CONVNET_DATA")
    os.environ["NOISY_CONVNET_DATA"] = str(root)
    yield root
    if before is None:
        os.environ.pop("NOISY_CONVNET_DATA", None)
    else:
        os.environ["NOISY_CONVNET_DATA"] = before


@pytest.fixture
def make_cfg(tmp_path):
    """Compose the real config in-process, as train.py would, with overrides; run_dir under tmp_path."""

    def _make(*overrides, fast=True, run_dir=None):
        return compose([*(FAST if fast else []), f"run_dir={run_dir or tmp_path / 'run'}", *overrides])

    return _make


def run_cli(*args, cwd=None, timeout=300):
    """python train.py ARGS as a user runs it; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout, env=env,
    )
