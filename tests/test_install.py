"""The package as a user installs it: configs shipped inside, console scripts, python -m noisy_convnet."""

import json
import os
import subprocess
import sys

from .conftest import ROOT


def test_a_non_editable_install_runs_from_another_directory(tmp_path):
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(ROOT)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = ["data=digits", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false"]
    where = subprocess.run([sys.executable, "-c", "import noisy_convnet; print(noisy_convnet.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout  # the installed copy, not the checkout
    for i, cmd in enumerate(([str(site / "bin" / "noisy-convnet")], [sys.executable, "-m", "noisy_convnet"])):
        p = subprocess.run([*cmd, *args, f"hydra.run.dir=run{i}"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert json.loads((work / f"run{i}" / "results.json").read_text())["dataset"] == "digits"
    bad = subprocess.run([*cmd, "data=imagenet9"], cwd=work, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: data: unknown option 'imagenet9'; allowed: cifar10")
