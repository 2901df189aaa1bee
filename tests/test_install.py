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
                        "--target", str(site), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = ["data=digits", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false"]
    where = subprocess.run([sys.executable, "-c", "import noisy_convnet; print(noisy_convnet.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout  # the installed copy, not the checkout
    for i, cmd in enumerate(([str(site / "bin" / "noisy-convnet")], [sys.executable, "-m", "noisy_convnet"])):
        p = subprocess.run([*cmd, *args, f"hydra.run.dir=run{i}"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        record = json.loads((work / f"run{i}" / "results.json").read_text())
        assert record["dataset"] == "digits"
        assert record["provenance"]["locked"] is None  # no lock beside an installed copy: pyproject's ranges
    bad = subprocess.run([*cmd, "data=imagenet9"], cwd=work, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: data: unknown option 'imagenet9'; allowed: cifar10")


def test_the_makefiles_folders_may_hold_spaces():
    """DATA_ROOT and FIGURES with a space reach train.py, fetch and the report as one argument each (they
    split into two before)."""
    import shlex

    for target in ("data", "figures-real", "estimators-mnist", "peers-mnist"):
        p = subprocess.run(["make", "-n", target, "DATA_ROOT=/tmp/my data", "FIGURES=/tmp/my figs", "PEERS=patrini"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        if target == "peers-mnist":  # a shell loop: its line is quoted as the others'
            assert '"data.root=/tmp/my data"' in p.stdout and '--out "/tmp/my figs/peers_mnist"' in p.stdout
            continue
        words = [w for line in p.stdout.splitlines() for w in shlex.split(line)]
        assert "/tmp/my data" in words or "data.root=/tmp/my data" in words, p.stdout
        if target != "data":
            assert "data.root=/tmp/my data" in words and any(w.startswith("/tmp/my figs/") for w in words), p.stdout


def test_the_venv_holds_the_locked_versions():
    """make install (and CI) installs exactly requirements.lock's pins: each locked package is installed at
    its locked version, so a run's provenance says locked: true."""
    from noisy_convnet.record import LOCK_FILE, from_lock

    lock = ROOT / LOCK_FILE
    assert lock.read_text().count("==") > 100 and "--hash=sha256:" in lock.read_text()  # every package, hashed
    assert from_lock(lock) == {"locked": True}


def test_the_record_names_what_differs_from_the_lock(tmp_path):
    """A version other than the lock's, or a locked package missing, makes the run's provenance say so."""
    from importlib.metadata import version

    from noisy_convnet.record import from_lock

    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# comment\nnumpy==0.0.1 \\\n    --hash=sha256:00\nomegaconf=={version('omegaconf')} \\\n"
                    "    --hash=sha256:00\nno-such-package==1.0\n")
    differ = {"numpy": f"0.0.1 locked, {version('numpy')} installed", "no-such-package": "1.0 locked, none installed"}
    assert from_lock(lock) == {"locked": False, "unlocked": differ}
    assert from_lock(tmp_path / "none.lock") == {"locked": None}
