"""Faults of the places a run reads and writes, as a user without root meets them (issue 32): a label or
matrix file the user may not read, a run or sweep folder it may not write, a report's read-only output
place, and a W&B server that answers but is not W&B. Each ends in one line naming the key, exit 2, nothing
half-written; each test failed before its fix (but the report's, which held already and had no test as a
user without root).

Root reads and writes anything whatever the permissions (its capabilities CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH), so as root (CI) the commands run without those two: root then meets permissions as the
owner of its files does; as another user, as that user."""

import ctypes
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from noisy_convnet.errors import UserError

from .conftest import FAST, ROOT

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # linux/prctl.h, linux/capability.h


def _without_root_powers() -> None:  # in the child, before exec: its root no longer ignores permissions
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_user(args: list[str], cwd: Path, timeout: int = 300):
    """``python ARGS`` as a user whom permissions bind; the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    drop = _without_root_powers if os.geteuid() == 0 else None
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout, preexec_fn=drop)


@pytest.fixture
def place(tmp_path):
    """tmp_path, whose read-only folders are made writable again afterwards (pytest removes it)."""
    yield tmp_path
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


def _one_line(p: subprocess.CompletedProcess, starts: str) -> None:
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(starts), p.stderr[-2000:]


@pytest.mark.parametrize("kind", ["noise.file", "noise.matrix"])
def test_an_unreadable_input_file_is_one_line(place, kind):
    path = place / ("labels.npy" if kind == "noise.file" else "q.npy")
    np.save(path, np.zeros(1797, dtype=np.int64) if kind == "noise.file" else np.eye(10))
    path.chmod(0)
    given = [f"noise.file={path}", "noise=labels"] if kind == "noise.file" else [f"noise.matrix={path}"]
    p = _as_user([str(ROOT / "train.py"), *FAST, "q=none", f"hydra.run.dir={place / 'run'}", *given], place)
    _one_line(p, f"error: {kind}: cannot read '{path}' (Permission denied)")
    assert not (place / "run" / "results.json").exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_a_read_only_run_or_sweep_folder_is_one_line(place, multirun):
    out = place / "out"
    out.mkdir()
    out.chmod(0o555)
    where = ["-m", f"hydra.sweep.dir={out}", "seed=0"] if multirun else [f"hydra.run.dir={out}"]
    p = _as_user([str(ROOT / "train.py"), *where, *FAST, "q=none"], place)
    _one_line(p, f"error: hydra.{'sweep' if multirun else 'run'}.dir: cannot write '{out}/")
    assert list(out.iterdir()) == []


def test_the_report_in_a_read_only_place_is_one_line(place):
    sweep = place / "sweep"
    run = _as_user([str(ROOT / "train.py"), "-m", *FAST, "q=none", f"hydra.sweep.dir={sweep}", "seed=0"], place)
    assert run.returncode == 0, run.stderr[-2000:]
    read_only = place / "read_only"
    read_only.mkdir()
    for folder in (sweep, read_only):
        folder.chmod(0o555)
    for args, key in [([], "sweep_dir (the report's default place: give --out)"), (["--out", str(read_only)], "--out"),
                      (["--out", str(read_only / "new")], "--out")]:
        p = _as_user(["-m", "noisy_convnet.report", str(sweep), *args], place)
        _one_line(p, f"error: {key}: cannot write in '{args[-1] if args else sweep}' (Permission denied)")
    assert not (sweep / "results.csv").exists() and list(read_only.iterdir()) == []


class _NotWandb(BaseHTTPRequestHandler):
    """A server that answers every request with an error page (a proxy, a server that is not W&B's)."""

    def do_GET(self):  # noqa: N802
        self.send_error(501)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def not_wandb():
    server = HTTPServer(("127.0.0.1", 0), _NotWandb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("mode", [None, "online"])
def test_a_wandb_server_that_refuses_the_run(tmp_path, not_wandb, mode):
    """WANDB_API_KEY set, the server reachable but refusing: the run goes on offline with one warning; with
    WANDB_MODE=online (the user asked for online) it stops with one line before training."""
    env = {**os.environ, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": not_wandb, "HOME": str(tmp_path),
           "WANDB_MODE": mode or ""}
    if mode is None:
        env.pop("WANDB_MODE")
    args = [sys.executable, str(ROOT / "train.py"), *FAST, "q=none", "logger=wandb", f"hydra.run.dir={tmp_path}/run"]
    p = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    if mode is None:
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
        said = p.stdout + p.stderr  # Hydra logs to stdout
        assert "refused the run (CommError" in said and "logging offline" in said, said[-3000:]
        assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
        assert (tmp_path / "run" / "results.json").is_file()
    else:
        _one_line(p, f"error: WANDB_MODE: online, but the W&B server {not_wandb} refused the run")
        assert not (tmp_path / "run" / "results.json").exists()


def test_the_wandb_server_is_probed_once_per_process(monkeypatch, tmp_path):
    """A key and a server that cannot be reached (behind a firewall the probe waits its timeout): every
    training of a sweep's worker logs offline, and the server is asked once, not once per training, until
    the answer is PROBE_TTL_S old (a server back after a hiccup is seen again)."""
    import socket

    from noisy_convnet import loggers

    probes, clock = [], [1000.0]

    def refuse(address, timeout=None):
        probes.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(loggers, "_PROBES", {})
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(loggers.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.example:8080")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert [loggers.wandb_online() for _ in range(3)] == [False] * 3
    assert probes == [("wandb.example", 8080)]
    monkeypatch.setenv("WANDB_MODE", "online")  # asked for online: still one line naming why, from the same probe
    with pytest.raises(UserError, match="cannot be reached \\(unreachable\\)"):
        loggers.wandb_online()
    assert len(probes) == 1
    monkeypatch.setenv("WANDB_BASE_URL", "http://other.example")  # another server: asked
    monkeypatch.delenv("WANDB_MODE")
    assert not loggers.wandb_online() and probes[-1] == ("other.example", 80)
    clock[0] += loggers.PROBE_TTL_S  # the answer has aged: asked again, and now it answers

    def answer(address, timeout=None):
        probes.append(address)
        return socket.socket()

    monkeypatch.setattr(socket, "create_connection", answer)
    assert loggers.wandb_online() and probes[2:] == [("other.example", 80)]
