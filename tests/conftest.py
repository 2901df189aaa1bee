import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisy_convnet.config import CONF_DIR, compose

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
    )  # fmt: skip
