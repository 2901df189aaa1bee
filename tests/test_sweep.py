"""Sweeps: presets compose, launcher settings reach the launcher, resume after a kill, the report."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from noisy_convnet import config, identity, launch, report
from noisy_convnet.errors import UserError
from noisy_convnet.record import RESULTS_FILE, SAME_AS, Record
from noisy_convnet.train import run

from .conftest import CONF, ROOT, run_cli


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("preset", config.group_options("experiment"))
def test_every_preset_composes_validates_and_names_its_sweep(preset):
    cfg = _compose(f"experiment={preset}", "run_dir=/tmp/unused")
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]  # Hydra hands the task its config without the hydra node
    cfg_task = config.validate(task)
    if preset == "debug":  # one batch of one run, not a sweep
        assert cfg_task.trainer.fast_dev_run is True
        return
    if preset.startswith("protocol_"):  # a peer's protocol: a single run, its sweep with -m, in peers_mnist/
        assert cfg_task.sweep == f"peers_mnist/{preset}" and cfg.hydra.mode is None and cfg.hydra.sweeper.params
        assert cfg_task.protocol.name == preset.removeprefix("protocol_")
    else:
        assert cfg_task.sweep.replace("estimators_cpu/", "estimators_") == preset  # estimators_*: one folder
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
    assert cfg.hydra.sweep.dir == f"outputs/multirun/{cfg_task.sweep}"


def test_slurm_launcher_settings_reach_submitit(tmp_path, monkeypatch):
    import submitit

    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
                   f"hydra.sweep.dir={tmp_path}", "run_dir=/tmp/unused")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    seen = {}

    class FakeExecutor:  # stands in for the cluster: records what the launcher asks submitit for
        def __init__(self, cluster, folder, **kw):
            seen.update(cluster=cluster, folder=folder, init=kw)

        def update_parameters(self, **params):
            seen.update(params)

        def map_array(self, *args):
            raise StopIteration

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(StopIteration):
        launcher.launch([["q=none"]], initial_job_idx=0)
    assert seen["cluster"] == "slurm" and seen["slurm_partition"] == "gpu"
    assert seen["timeout_min"] == 120 and seen["gpus_per_node"] == 0 and seen["mem_gb"] == 8  # a CPU cell's request
    gpu = _compose("hydra/launcher=slurm", "trainer=gpu", f"hydra.sweep.dir={tmp_path}", "run_dir=/tmp/unused")
    assert (gpu.hydra.launcher.gpus_per_node, gpu.hydra.launcher.cpus_per_task, gpu.hydra.launcher.mem_gb) == (1, 8, 32)
    # a cell that reaches its time limit or is preempted is requeued (and resumes from its last checkpoint)
    assert seen["init"]["slurm_max_num_timeout"] >= 1 and hasattr(type(launcher), "checkpoint")
    # every slurm_* key is one submitit's SLURM executor knows
    known = set(submitit.SlurmExecutor._valid_parameters())
    assert {k[len("slurm_") :] for k in seen if k.startswith("slurm_")} <= known


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has stopped
    except FileNotFoundError:
        return False


def test_a_joblib_sweep_trains_in_workers_that_stop_when_it_is_killed(tmp_path):
    """hydra/launcher=joblib runs the cells at once in worker processes; a SIGKILL of the sweep (as a lost
    login session would send) stops them within seconds instead of leaving them training for nobody, and
    their last checkpoints stay for the rerun."""
    sweep = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=joblib",
                              "hydra.launcher.n_jobs=2", "data=digits",
                              "trainer.max_epochs=400", "level=0.1,0.2", "logger=none",
                              "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("*/checkpoints/training1/last.ckpt"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert len(list(tmp_path.glob("*/checkpoints/training1/last.ckpt"))) == 2  # both cells training at once
        children = subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True).stdout.split()
        workers = [int(p) for p in children if "popen_loky" in _cmdline(p)]  # not loky's resource tracker
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        os.kill(sweep.pid, signal.SIGKILL)  # the sweep's process only: its workers are left to notice
        sweep.wait()
        deadline = time.time() + 15
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
        assert not list(tmp_path.glob(f"*/{RESULTS_FILE}")) and len(list(tmp_path.glob("*/checkpoints"))) == 2
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_rerun_with_a_default_spelled_out_reruns_nothing(tmp_path_factory):
    """A cell is found finished by its config, whatever the overrides that named it; a value holding a path
    (a noise matrix file) names one folder, not nested ones."""
    from noisy_convnet import noise

    tmp_path, files = tmp_path_factory.mktemp("sweep"), tmp_path_factory.mktemp("files")
    np.save(files / "Q.npy", noise.uniform(10, 0.3))
    args = [sys.executable, str(ROOT / "train.py"), "-m", "data=digits", "trainer.max_epochs=1", "q=none,fixed",
            f"noise.matrix={files / 'Q.npy'}", "logger=none", "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={tmp_path}"]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    cells = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != "stages")
    assert len(cells) == 2 and all((tmp_path / c / RESULTS_FILE).is_file() for c in cells)  # no nested folders
    assert all("noise.matrix=%2F" in c for c in cells)
    again = subprocess.run([*args, "data.val_fraction=0.1", "seed=0"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert (again.stdout + again.stderr).count("already finished, skipped") == 2
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{RESULTS_FILE}")) == cells
    same = sorted(tmp_path.glob(f"*/{SAME_AS}"))  # the new names point at the finished cells
    assert len(same) == 2 and {Path(json.loads(p.read_text())["results"]).parent.name for p in same} == set(cells)
    df, problems = report.load_sweep(tmp_path)
    assert len(df) == 2 and not problems  # the report sees each cell once, and nothing unfinished
    changed = subprocess.run([*args, "data.val_fraction=0.2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 0 and "already finished" not in changed.stdout + changed.stderr  # another value
    assert len(list(tmp_path.glob(f"*/{RESULTS_FILE}"))) == 4


def test_the_same_cell_started_twice_at_once_trains_once(tmp_path):
    """Two identical runs (or sweeps) started together: the second waits for the first, then skips."""
    args = [sys.executable, str(ROOT / "train.py"), "data=digits", "trainer.max_epochs=15", "logger=none",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"]
    runs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    assert sum("already finished, skipped" in out for out in outs) == 1
    (line,) = {ln for out in outs for ln in out.splitlines() if ln.startswith("test error")}  # the same result


def test_a_cell_folder_name_stays_within_the_file_system_limit():
    long = "q.reg_weight=[" + ",".join(f"{0.011 * i:.3f}" for i in range(1, 60)) + "]"
    name = identity.cell_dir(f"data=digits,{long}")
    assert len(name.encode()) <= 255 and name == identity.cell_dir(f"data=digits,{long}")  # the same cell, same folder
    assert identity.cell_dir(f"data=digits,{long[:-1]},0.9]") != name  # another cell, another folder
    assert identity.cell_dir("data=digits,level=0.3") == "data=digits,level=0.3"  # short names as Hydra makes them


def test_joblib_cells_share_the_cores_and_the_gpu(make_cfg):
    joblib = _compose("hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "run_dir=/tmp/unused").hydra.launcher
    cfg = make_cfg()
    launch.share_machine(cfg, joblib, cores=16)
    assert (cfg.threads, cfg.gpu_fraction) == (4, 0.25)
    cfg = make_cfg("threads=2", "gpu_fraction=0.5")  # what the user set stays
    launch.share_machine(cfg, joblib, cores=16)
    assert (cfg.threads, cfg.gpu_fraction) == (2, 0.5)
    cfg = make_cfg()
    launch.share_machine(cfg, {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, cores=16)
    assert (cfg.threads, cfg.gpu_fraction) == (None, None)
    assert launch.joblib_jobs({"_target_": "JoblibLauncher", "n_jobs": -1}, cores=2) == 2


def test_a_gpu_fraction_reaches_torch(make_cfg, monkeypatch):
    import torch

    seen, answers = [], iter([True])  # "a GPU" for the first question only: run() asks before Lightning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: next(answers, False))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a: seen.append(f))
    run(make_cfg("trainer=cpu", "gpu_fraction=0.25"))
    assert seen == [0.25]
    with pytest.raises(UserError, match=r"^gpu_fraction: 1.5 is not allowed; in \(0, 1\]"):
        run(make_cfg("gpu_fraction=1.5"))


def test_a_finished_cell_is_skipped(make_cfg, tmp_path):
    first = run(make_cfg("q=fixed"))
    stamp = (tmp_path / "run" / RESULTS_FILE).stat().st_mtime_ns
    again = run(make_cfg("q=fixed", "trainer.enable_progress_bar=true"))  # watching differently: same cell
    assert again == Record.from_dict(json.loads((tmp_path / "run" / RESULTS_FILE).read_text()))
    assert again.wall_s == pytest.approx(first.wall_s, abs=1e-5)
    assert (tmp_path / "run" / RESULTS_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="^run_dir: .* holds a results.json of another config"):
        run(make_cfg("q=fixed", "seed=1"))  # another config in the same directory: nothing overwritten
    assert (tmp_path / "run" / RESULTS_FILE).stat().st_mtime_ns == stamp


SWEEP = ["-m", "data=digits", "trainer.max_epochs=1", "q=none,fixed", "level=0.2,0.4,0.6",
         "logger=none", "trainer.enable_progress_bar=false"]
NUMBERS = ["q", "level", "seed", "test_error", "actual_noise", "q_error", "val_nll"]


def _sweep(sweep_dir):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SWEEP, f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _rows(sweep_dir):
    df, problems = report.load_sweep(sweep_dir)
    return df[NUMBERS].sort_values(["q", "level"]).reset_index(drop=True), problems


def test_killed_sweep_rerun_gives_the_same_rows_as_an_uninterrupted_one(tmp_path):
    whole = _sweep(tmp_path / "whole")
    assert whole.wait(timeout=400) == 0, whole.stdout.read()

    cut = _sweep(tmp_path / "cut")
    deadline = time.time() + 300
    while len(list((tmp_path / "cut").rglob(RESULTS_FILE))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(cut.pid, signal.SIGKILL)  # as a lost node or a kill -9 would
    cut.wait()
    n_before = len(list((tmp_path / "cut").rglob(RESULTS_FILE)))
    assert 2 <= n_before < 6
    _, problems = _rows(tmp_path / "cut")
    assert not any("unreadable" in p for p in problems)  # nothing half-written

    rerun = _sweep(tmp_path / "cut")
    out, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, out
    assert out.count("already finished, skipped") == n_before  # no cell ran twice
    a, problems_a = _rows(tmp_path / "whole")
    b, problems_b = _rows(tmp_path / "cut")
    assert len(b) == 6 and not problems_a and not problems_b
    pd.testing.assert_frame_equal(a, b)


def _fake_record(q, level, size, seed, err, **extra):
    k = 3
    q_true = np.full((k, k), level / (k - 1)) + np.eye(k) * (1 - level - level / (k - 1))
    return {"dataset": "mnist5k", "num_classes": k, "train_size": size, "noise": "flip", "matrix": "random",
            "level": level, "q": q, "q_label": {"none": "no noise layer", "learned": "learned Q"}.get(q, q),
            "q_estimated": q == "learned", "seed": seed, "epochs": 20, "early_stopping": False, "test_error": err,
            "actual_noise": level, "Q_true": q_true.tolist(), "Q": None if q == "none" else q_true.tolist(),
            "q_error": None if q == "none" else 0.1, "confusion": np.eye(k).tolist(), "train_images_per_s": 1.0,
            "wall_s": 1.0, "config": {"seed": seed, "level": level, "data": {"name": "mnist5k", "train_size": size}},
            **extra}


def test_report_on_a_synthetic_sweep_with_a_broken_and_a_missing_run(tmp_path, capsys):
    for q in ("none", "learned"):
        for level in (0.3, 0.6):
            for size in (1000, 4000):
                for seed in (0, 1):
                    err = 0.1 + level * (0.5 if q == "none" else 0.1) - size / 1e5 + 0.01 * seed
                    d = tmp_path / f"q={q},level={level},size={size},seed={seed}"
                    d.mkdir()
                    (d / RESULTS_FILE).write_text(json.dumps(_fake_record(q, level, size, seed, err)))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / RESULTS_FILE).write_text('{"dataset": "mnist5k", "test_err')
    (tmp_path / "died" / ".hydra").mkdir(parents=True)

    assert report.main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "unreadable result" in err and "broken" in err
    assert "failed or unfinished" in err and "died" in err
    df = pd.read_csv(tmp_path / "report" / "results.csv")
    assert len(df) == 16 and {"cfg.seed", "cfg.data.train_size", "test_error", "method"} <= set(df.columns)
    md = (tmp_path / "report" / "results.md").read_text()
    assert "learned Q" in md and "no noise layer" in md
    t = report.table(report.load_sweep(tmp_path)[0])
    cell = t[(t.method == "no noise layer") & (t.level == 0.6) & (t.train_size == 1000)].iloc[0]
    assert cell["test_error_%"] == pytest.approx(100 * (0.1 + 0.3 - 0.01 + 0.005)) and cell["seeds"] == 2
    for name in ("fig2a_error_vs_size", "fig2b_error_vs_level", "fig2c_q_heatmaps", "fig3_grid"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 5000
        assert (tmp_path / "report" / f"{name}.pdf").is_file()
    # the figures' folder keeps every record (runs.jsonl): the report redraws it without the runs
    assert report.main([str(tmp_path / "report"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "results.md").read_text() == md
    assert (tmp_path / "again" / "fig3_grid.png").stat().st_size > 5000


def test_report_on_an_empty_directory_is_a_clean_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: sweep_dir: no runs (results.json or runs.jsonl) in ")


def test_a_sweep_run_in_parts_on_two_machines_joins_the_committed_runs_jsonl(tmp_path, capsys):
    """A part run on another machine has only the committed report (its runs.jsonl) and its own new cells:
    the report of both keeps every run, a run found in both once (from the source given first), and says
    when the copies differ and that the runs come from two machines."""
    def put(root, q, seed, err, cpu):
        d = root / f"q={q},seed={seed}"
        d.mkdir(parents=True)
        rec = _fake_record(q, 0.3, 1000, seed, err, provenance={"cpu": cpu, "cpu_capability": "AVX512"},
                           config={"seed": seed, "level": 0.3, "q": {"name": q}})
        (d / RESULTS_FILE).write_text(json.dumps(rec))

    for q in ("none", "learned"):
        put(tmp_path / "first", q, 0, 0.20 if q == "none" else 0.10, "Xeon")
    assert report.main([str(tmp_path / "first"), "--out", str(tmp_path / "committed")]) == 0
    put(tmp_path / "second", "none", 1, 0.22, "EPYC")
    put(tmp_path / "second", "learned", 1, 0.12, "EPYC")
    put(tmp_path / "second", "learned", 0, 0.10, "Xeon")  # the same run as the committed one: kept once, quietly
    capsys.readouterr()
    runs = tmp_path / "committed" / "runs.jsonl"
    assert report.main([str(runs), str(tmp_path / "second"), "--out", str(tmp_path / "joined")]) == 0
    err = capsys.readouterr().err
    assert "left out" not in err and "runs of 2 machines (2 on EPYC AVX512; 2 on Xeon AVX512)" in err
    t = report.table(report.load_sweep(runs, tmp_path / "second")[0]).set_index("method")
    assert t.loc["learned Q", "seeds"] == 2 and t.loc["learned Q", "test_error_%"] == pytest.approx(11.0)
    assert t.loc["no noise layer", "test_error_%"] == pytest.approx(21.0)
    assert len((tmp_path / "joined" / "runs.jsonl").read_text().splitlines()) == 4

    put(tmp_path / "third", "none", 0, 0.25, "Xeon")  # a rerun with other numbers: the first source's is kept
    df, problems = report.load_sweep(tmp_path / "third", runs)
    assert sorted(df["test_error"]) == [0.10, 0.25]
    third = tmp_path / "third" / "q=none,seed=0" / RESULTS_FILE
    assert [p for p in problems if p.startswith("left out")] == [
        f"left out {runs}:{1 + [json.loads(x)['q'] for x in runs.read_text().splitlines()].index('none')}: "
        f"the run of {third} again, with test error 0.2 where that has 0.25 (kept)"]
    df, problems = report.load_sweep(runs, runs, tmp_path / "second", tmp_path / "second")  # each read once
    assert len(df) == 4 and len(problems) == 1 and "runs of 2 machines" in problems[0]
    for q in ("none", "fixed"):  # records without config or CPU: told apart by their own fields
        (tmp_path / q).mkdir()
        (tmp_path / q / "runs.jsonl").write_text(json.dumps(_fake_record(q, 0.3, 1000, 0, 0.3, config={})) + "\n")
    df, problems = report.load_sweep(tmp_path / "none", tmp_path / "fixed", tmp_path / "second")
    assert sorted(df["q"]) == ["fixed", "learned", "learned", "none", "none"]
    assert "runs of 2 machines (2 on EPYC AVX512; 1 on Xeon AVX512; 2 on a machine their records do not name): " \
           "test errors vary by machine within the seed-to-seed spread; compare runs of one machine" in problems
    bare = tmp_path / "none" / "runs.jsonl"
    bare.write_bytes(b"\xff\n")
    df, problems = report.load_sweep(runs, bare)
    assert len(df) == 2 and len(problems) == 1 and problems[0].startswith(f"unreadable result {bare}: ")
    assert report.main([str(tmp_path / "first" / "q=none,seed=0" / RESULTS_FILE)]) == 2
    assert capsys.readouterr().err.endswith("is neither a directory nor a report's .jsonl (runs.jsonl)\n")


def test_report_draws_fig4_from_outlier_runs(tmp_path):
    for q in ("none", "fixed"):
        for ratio in (0.5, 1.0):
            d = tmp_path / f"q={q},ratio={ratio}"
            d.mkdir()
            rec = _fake_record(q, 0.0, 1000, 0, 0.02 + 0.01 * ratio, noise="outlier", outlier_ratio=ratio,
                               inlier_ap=0.99 if q == "fixed" else 0.98,
                               pr_curve={"precision": [1.0, 0.9, 0.5], "recall": [0.0, 0.8, 1.0]})
            (d / RESULTS_FILE).write_text(json.dumps(rec))
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "fig4a_outliers.png").is_file() and (tmp_path / "fig4b_inlier_pr.png").is_file()
    assert "inlier_ap" in (tmp_path / "results.md").read_text()


def test_a_cell_made_before_an_option_existed_is_still_finished(make_cfg, tmp_path):
    """Upgrading the package (a new option, at its default) must not make a whole sweep run again."""
    first = run(make_cfg("q=none"))
    path = tmp_path / "run" / RESULTS_FILE
    record = json.loads(path.read_text())
    del record["config"]["data"]["channels_last"]  # as written by a version without data.channels_last
    path.write_text(json.dumps(record))
    assert run(make_cfg("q=none")).wall_s == pytest.approx(first.wall_s, abs=1e-5)  # skipped
    with pytest.raises(UserError, match="^run_dir: "):  # not the default: another cell, refused here
        run(make_cfg("q=none", "data.channels_last=true"))


def test_a_cell_of_a_parallel_sweep_equals_the_same_cell_run_alone(make_cfg, tmp_path):
    """CPU sweeps run cells side by side with one torch thread each (hydra/launcher=joblib): a cell's
    numbers are those of the same cell run alone with one thread (float sums depend on the thread count)."""
    import torch

    common = ["data=digits", "trainer.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false"]
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *common, "q=none,learned",
                        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (cell,) = (tmp_path / "sweep").glob(f"*q=learned*/{RESULTS_FILE}")
    threads = torch.get_num_threads()
    try:
        run(make_cfg("q=learned", "trainer.max_epochs=2", "threads=1", run_dir=tmp_path / "alone"))
    finally:
        torch.set_num_threads(threads)
    a, b = json.loads(cell.read_text()), json.loads((tmp_path / "alone" / RESULTS_FILE).read_text())
    assert a["threads"] == b["threads"] == 1 and a["channels_last"] is b["channels_last"] is True
    assert (a["test_error"], a["q_error"], a["val_nll"], a["Q"]) == (
        b["test_error"],
        b["q_error"],
        b["val_nll"],
        b["Q"],
    )


def test_report_compares_estimators_with_paired_differences(tmp_path):
    """Five estimators x two noise settings x three seeds: the table's means and the paired differences
    (same seed) against fixed Q* and the early-stopped plain net are what the records say."""
    offsets = {"none": 0.30, "fixed": 0.10, "learned": 0.05, "anchor": 0.20, "volmin": 0.12}
    for matrix in ("uniform", "pair"):
        for q, off in offsets.items():
            for es in (False, True) if q == "none" else (False,):
                for seed in (0, 1, 2):
                    err = off - (0.1 if es else 0.0) + 0.02 * seed + (0.05 if matrix == "pair" else 0.0)
                    rec = _fake_record(q, 0.5, 4000, seed, err, matrix=matrix, early_stopping=es,
                                       q_label={"none": "no noise layer", "fixed": "fixed Q*"}.get(q, q))
                    d = tmp_path / f"{matrix},q={q},es={es},seed={seed}"
                    d.mkdir()
                    (d / RESULTS_FILE).write_text(json.dumps(rec))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    df = report.load_sweep(tmp_path)[0]
    t = report.comparison(df).set_index(["setting", "method"])
    assert t.loc[("pair 0.5", "anchor"), "test_error"] == pytest.approx(100 * (0.20 + 0.02 + 0.05))
    assert t.loc[("pair 0.5", "anchor"), "seeds"] == 3 and t.loc[("pair 0.5", "anchor"), "sd"] == pytest.approx(2.0)
    p = report.paired(df, "fixed").set_index(["setting", "method"])
    assert p.loc[("uniform 0.5", "volmin"), "vs fixed Q*: mean"] == pytest.approx(2.0)
    assert p.loc[("uniform 0.5", "volmin"), "sd"] == pytest.approx(0.0, abs=1e-9)
    p = report.paired(df, "none+es").set_index(["setting", "method"])
    assert p.loc[("uniform 0.5", "learned"), "vs no noise layer + early stopping: mean"] == pytest.approx(-15.0)
    assert "vs fixed Q*" in (tmp_path / "out" / "comparison.md").read_text()
    w = report.wide(df).set_index("estimator")  # rows by curve: the baselines first, whatever their labels
    assert list(w.index) == ["no noise layer", "no noise layer + early stopping", "fixed Q*", "learned", "anchor",
                             "volmin"]
    assert (
        w.loc["anchor", "pair 0.5"] == "27.0 +- 2.0 (0.10)" and w.loc["no noise layer", "uniform 0.5"] == "32.0 +- 2.0"
    )
    wp = report.wide_paired(df, "none+es").set_index("vs no noise layer + early stopping")
    assert wp.loc["learned", "uniform 0.5"] == "-15.0 +- 0.0" and "no noise layer + early stopping" not in wp.index
    for d in tmp_path.glob("pair,q=none,es=True,*"):  # a setting without the reference: blank, not nan
        (d / RESULTS_FILE).unlink()
    wp = report.wide_paired(report.load_sweep(tmp_path)[0], "none+es").set_index("vs no noise layer + early stopping")
    assert wp.loc["learned", "pair 0.5"] == "" and wp.loc["learned", "uniform 0.5"] == "-15.0 +- 0.0"
    from matplotlib.colors import to_rgba

    for d in (df, df[df["curve"] != "fixed"]):  # an estimator keeps its colour whoever else is drawn
        handles, labels = report.estimators_figure(d).axes[0].get_legend_handles_labels()
        assert labels == [m for m in w.index if m in set(d["method"])]  # the tables' order, not the labels'
        assert handles[labels.index("anchor")].patches[0].get_facecolor() == to_rgba("tab:purple")
    one = report.wide_paired(df[df["seed"] == 0], "none+es").set_index("vs no noise layer + early stopping")
    assert one.loc["learned", "uniform 0.5"] == "-15.0"  # one seed: no spread, not "+- 0.0"
    for name in ("estimators_error_and_q_error", "estimators_q_heatmaps"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 5000
    for d in tmp_path.glob("*,seed=[12]"):  # one seed left: the paired cell is "+10.0" in the file, sign kept
        shutil.rmtree(d)
    assert report.main([str(tmp_path), "--out", str(tmp_path / "one")]) == 0
    assert "| +10.0 " in (tmp_path / "one" / "comparison.md").read_text()


def test_a_comparison_without_any_q_draws_no_q_heatmaps(tmp_path):
    """Three data sets of plain nets (six methods, no Q): the bars, and no empty heatmap grid."""
    for ds in ("digits", "mnist5k", "mnist"):
        for es in (False, True):
            d = tmp_path / f"{ds},es={es}"
            d.mkdir()
            rec = _fake_record("none", 0.5, 1000, 0, 0.2, early_stopping=es, dataset=ds)
            rec["config"] = {**rec["config"], "early_stopping": es, "data": {"name": ds, "train_size": 1000}}
            (d / RESULTS_FILE).write_text(json.dumps(rec))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "estimators_error_and_q_error.png").is_file()
    assert not (tmp_path / "out" / "estimators_q_heatmaps.png").exists()


def test_every_estimator_has_its_own_colour_and_place_whatever_the_data_set():
    from noisy_convnet.plots import COLOURS, colour
    from noisy_convnet.report.comparison import _rows

    assert _rows(["mine@b", "anchor@b", "none+es@a", "none@a"]) == ["none@a", "none+es@a", "anchor@b", "mine@b"]
    assert colour("none+es@mnist") == ("tab:red", True) and colour("mine") == colour("mine@x")
    assert colour("mine")[0] not in COLOURS.values()  # your own estimator never looks like one of these


def test_a_number_is_rounded_once_so_every_table_shows_the_same(tmp_path):
    """A test error of 0.0075 as float32 stores it (0.00749999...): 0.7 in results.md as in comparison.md,
    not 0.75 rounded again to 0.8."""
    err = float(np.float32(75) / np.float32(10_000))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / RESULTS_FILE).write_text(json.dumps(_fake_record("learned", 0.5, 4000, 0, err)))
    t = report.table(report.load_sweep(tmp_path)[0])
    assert "| 0.7 (1) " in report.markdown(t)


def test_report_leaves_out_what_is_not_a_result_and_warns_about_mixed_cells(tmp_path, capsys):
    good = _fake_record("none", 0.5, 1000, 0, 0.2)
    no_seed = {k: v for k, v in good.items() if k != "seed"}  # a row the tables cannot place: left out, not a KeyError
    bad = {"list": [], "empty": {}, "no_seed": no_seed, "nan": {**good, "test_error": float("nan")},
           "dev": {**good, "config": {**good["config"], "trainer": {"fast_dev_run": True}}}}
    for name, rec in {"good": good, **bad}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / RESULTS_FILE).write_text(json.dumps(rec))
    (tmp_path / "bytes").mkdir()
    (tmp_path / "bytes" / RESULTS_FILE).write_bytes(b"\xff\xfe\x00garbage")
    other = {**good, "config": {**good["config"], "noise": {"matrix": "pair"}}}  # same row, another config
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / RESULTS_FILE).write_text(json.dumps(other))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("unreadable result") == 1 and "diverged" in err and "fast_dev_run" in err
    assert err.count("not a run's record") == 3 and "no_seed/results.json: not a run's record (no ['seed'])" in err
    assert "differ in more than their seed" in err
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 2
    (tmp_path / "file").write_text("x")
    assert report.main([str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert "error: --out:" in capsys.readouterr().err


def test_a_cell_whose_input_file_changed_runs_again(make_cfg, tmp_path):
    """The resume check covers the contents of the files a config names, not only their paths."""
    from noisy_convnet import noise

    path = tmp_path / "q.npy"
    np.save(path, noise.uniform(10, 0.3))
    first = run(make_cfg("q=fixed", f"noise.matrix={path}"))
    assert run(make_cfg("q=fixed", f"noise.matrix={path}")).wall_s == pytest.approx(first.wall_s, abs=1e-5)
    np.save(path, noise.pair(10, 0.3))  # edited in place: same path, another Q*
    again = run(make_cfg("q=fixed", f"noise.matrix={path}"))
    assert again.wall_s != first.wall_s and np.allclose(again.Q_true, noise.pair(10, 0.3))


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib"]])
def test_one_bad_cell_does_not_stop_the_sweep_and_the_sweep_says_it_failed(tmp_path, launcher):
    """The other cells run; the command ends with one line naming the failed cell and exit status 2 (a user
    mistake), whichever launcher ran the cells; a sweep whose cells all succeed exits 0."""
    p = run_cli("-m", "data=digits", "trainer.max_epochs=1", "level=1.5,0.3", "logger=none",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}", *launcher)
    assert "error: cell data=digits,level=1.5,trainer.max_epochs=1: level: 1.5 is not allowed" in p.stderr
    assert "Traceback" not in p.stderr
    assert [d.parent.name for d in tmp_path.glob(f"*/{RESULTS_FILE}")] == ["data=digits,level=0.3,trainer.max_epochs=1"]
    assert p.returncode == 2, p.stderr
    summary = [line for line in p.stderr.splitlines() if line.startswith("error: sweep:")]
    assert len(summary) == 1 and "1 cell(s) failed (data=digits,level=1.5,trainer.max_epochs=1)" in summary[0]
    assert not (tmp_path / ".failed").exists()  # the notes are read and removed
    good = run_cli("-m", "data=digits", "trainer.max_epochs=1", "level=0.3", "logger=none",
                   "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}", *launcher)
    assert good.returncode == 0 and "error" not in good.stderr, good.stderr


def test_report_logs_to_wandb_offline_without_a_key(tmp_path):
    """report --wandb with no API key: an offline summary run holding the table and the figures."""
    for q in ("none", "learned"):
        for level in (0.3, 0.6):
            d = tmp_path / "sweep" / f"q={q},level={level}"
            d.mkdir(parents=True)
            (d / RESULTS_FILE).write_text(json.dumps(_fake_record(q, level, 1000, 0, 0.1 + level)))
    # in its own process, as a user runs it: W&B keeps process-wide state that would reach later tests
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"} | {"HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "noisy_convnet.report", str(tmp_path / "sweep"), "--wandb"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (run_dir,) = (tmp_path / "sweep" / "wandb").glob("offline-run-*")
    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert b"results" in data and b"fig2b_error_vs_level" in data


def test_the_plain_net_is_trained_once_for_none_early_stopped_anchor_and_dualt(tmp_path):
    """anchor and dualt run at once (joblib) and need the same early-stopped plain net: one trains it, the
    other waits and reuses it, and so does none + early stopping, in a second command into the same sweep."""
    base = ["-m", "data=digits", "trainer.max_epochs=3", "logger=none", "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={tmp_path}"]
    both = run_cli(*base, "q=anchor,dualt", "hydra/launcher=joblib")
    assert both.returncode == 0, both.stderr
    alone = run_cli(*base, "q=none", "early_stopping=true", "hydra/launcher=joblib")  # as make estimators-cpu
    assert alone.returncode == 0, alone.stderr
    records = {r["q"]: r for r in (json.loads(p.read_text()) for p in tmp_path.glob(f"*/{RESULTS_FILE}"))}
    stages = [s for r in records.values() for s in r["stages"]]
    assert sorted(records) == ["anchor", "dualt", "none"] and len(stages) == 3
    assert len({s["key"] for s in stages}) == 1 and sum(s["trained"] for s in stages) == 1
    assert sum(r["trainings"] for r in records.values()) == 3  # the plain net once, two forward trainings
    assert (
        records["anchor"]["plain_test_error"] == records["dualt"]["plain_test_error"] == records["none"]["test_error"]
    )
    assert len(list((tmp_path / "stages").glob("plain-*/stage.pt"))) == 1


def test_the_report_leaves_out_records_of_another_shape_and_says_where_it_cannot_write(tmp_path, capsys):
    """A results.json whose config is a string or whose q is not a name is left out with a warning (not a
    traceback); an --out under a file is one line, exit 2, nothing written."""
    good = _fake_record("none", 0.5, 1000, 0, 0.2)
    for name, rec in {
        "good": good,
        "string_config": {**good, "config": "seed=0"},
        "q_list": {**good, "q": ["none"]},
        "string_protocol": {**good, "protocol": "volmin"},
        "string_provenance": {**good, "provenance": "laptop"},
        "number_trainer": {**good, "config": {**good["config"], "trainer": 3}},
        "true_seed": {**good, "seed": True},
    }.items():
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / RESULTS_FILE).write_text(json.dumps(rec))
    (tmp_path / "sweep" / "fifo").mkdir()
    os.mkfifo(tmp_path / "sweep" / "fifo" / RESULTS_FILE)  # not a file to read: reading it would wait for ever
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "string_config/results.json: not a run's record (config of another type)" in err
    assert "q_list/results.json: not a run's record (q of another type)" in err
    for name, key in [("protocol", "protocol"), ("provenance", "provenance"), ("trainer", "trainer"), ("seed", "seed")]:
        assert f"_{name}/results.json: not a run's record ({key} of another type)" in err
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 1
    # the report's own runs.jsonl, read with another copy of a run: counted once; with a line it leaves out,
    # refused before writing (rewriting it would lose that line: its only copy)
    assert report.main([str(tmp_path / "out"), str(tmp_path / "out" / "runs.jsonl")]) == 0
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 1 and "left out" not in capsys.readouterr().err
    runs = tmp_path / "out" / "runs.jsonl"
    runs.write_text(runs.read_text() + '{"q": "none"}\n')
    before = {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()}
    assert report.main([str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: sweep_dir (the report's default place: give "
                                                               "--out): its runs.jsonl is read and some of its lines")
    assert {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()} == before
    assert report.main([str(tmp_path / "out"), "--out", str(tmp_path / "elsewhere")]) == 0
    assert report.main([str(tmp_path / "no_such")]) == 2
    assert capsys.readouterr().err.endswith(f"error: sweep_dir: '{tmp_path / 'no_such'}' does not exist\n")
    (tmp_path / "a_file").write_text("")
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "a_file" / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out: cannot write in '{tmp_path / 'a_file' / 'out'}'")


def test_the_report_tables_the_test_error_of_each_stage_an_estimator_records(tmp_path):
    """T-Revision records its plain net's and its reweighting's test errors: stages.md puts them beside the
    tested net's, mean +- sd over seeds, per setting and estimator; a sweep without them has no stages.md."""
    for seed, (plain, weighted, tested) in enumerate([(0.40, 0.30, 0.20), (0.50, 0.20, 0.10)]):
        rec = _fake_record("trevision", 0.5, 1000, seed, tested, plain_test_error=plain,
                           reweighted_test_error=weighted)
        (tmp_path / "sweep" / f"s{seed}").mkdir(parents=True)
        (tmp_path / "sweep" / f"s{seed}" / RESULTS_FILE).write_text(json.dumps(rec))
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "stages.md").read_text().splitlines()
    assert rows[0].split("|")[1:-1] == [
        " setting    ",
        " estimator   ",
        " plain       ",
        " reweighted   ",
        " tested      ",
    ]
    assert [c.strip() for c in rows[2].split("|")[1:-1]] == ["random 0.5", "trevision", "45.0 +- 7.1", "25.0 +- 7.1",
                                                             "15.0 +- 7.1"]
    none = _fake_record("none", 0.5, 1000, 0, 0.3)
    (tmp_path / "plain" / "a").mkdir(parents=True)
    (tmp_path / "plain" / "a" / RESULTS_FILE).write_text(json.dumps(none))
    assert report.main([str(tmp_path / "plain"), "--out", str(tmp_path / "out2")]) == 0
    assert not (tmp_path / "out2" / "stages.md").exists()


def test_the_report_tables_each_seeds_numbers_side_by_side(tmp_path):
    """Several seeds: seeds.md gives each seed's test error (q_error) per setting (and training size where
    the sweep varies it) and estimator, a seed that did not run an empty cell, so that differences pair by
    seed; one seed: no seeds.md."""
    runs = {("none", 0): 0.30, ("none", 1): 0.50, ("anchor", 0): 0.10, ("anchor", 2): 0.123}
    for (q, seed), err in runs.items():
        (tmp_path / "sweep" / f"{q}{seed}").mkdir(parents=True)
        (tmp_path / "sweep" / f"{q}{seed}" / RESULTS_FILE).write_text(json.dumps(_fake_record(q, 0.5, 1000, seed, err)))
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    rows = [[c.strip() for c in r.split("|")[1:-1]] for r in (tmp_path / "out" / "seeds.md").read_text().splitlines()]
    assert rows[0] == ["setting", "estimator", "seed 0", "seed 1", "seed 2"]
    assert rows[2:] == [["random 0.5", "no noise layer", "30.0", "50.0", ""],
                        ["random 0.5", "anchor", "10.0 (0.10)", "", "12.3 (0.10)"]]
    (tmp_path / "one" / "a").mkdir(parents=True)
    (tmp_path / "one" / "a" / RESULTS_FILE).write_text(json.dumps(_fake_record("none", 0.5, 1000, 0, 0.3)))
    assert report.main([str(tmp_path / "one"), "--out", str(tmp_path / "out2")]) == 0
    assert not (tmp_path / "out2" / "seeds.md").exists()
    # a sweep over training sizes: a row per size, never one size's run averaged with another's
    for (size, seed), err in {(1000, 0): 0.40, (4000, 0): 0.10, (1000, 1): 0.30, (4000, 1): 0.20}.items():
        (tmp_path / "sizes" / f"{size}-{seed}").mkdir(parents=True)
        rec = _fake_record("none", 0.5, size, seed, err)
        (tmp_path / "sizes" / f"{size}-{seed}" / RESULTS_FILE).write_text(json.dumps(rec))
    assert report.main([str(tmp_path / "sizes"), "--out", str(tmp_path / "out3")]) == 0
    rows = [[c.strip() for c in r.split("|")[1:-1]] for r in (tmp_path / "out3" / "seeds.md").read_text().splitlines()]
    assert rows[0] == ["setting", "train_size", "estimator", "seed 0", "seed 1"]
    assert rows[2:] == [["random 0.5", "1000", "no noise layer", "40.0", "30.0"],
                        ["random 0.5", "4000", "no noise layer", "10.0", "20.0"]]


def test_fig_2c_shows_the_learned_q_by_name_whichever_estimator_comes_first(tmp_path):
    """A sweep of several estimators whose Q is estimated (anchor points before the learned Q in the
    records' order): Fig. 2c draws the learned Q's, its own figure in the paper."""
    for q in ("anchor", "learned"):
        (tmp_path / q).mkdir()
        rec = _fake_record(q, 0.5, 1000, 0, 0.2, q_estimated=True)
        (tmp_path / q / RESULTS_FILE).write_text(json.dumps(rec))
    df, _ = report.load_sweep(tmp_path)
    assert set(report._estimated(df)["q"]) == {"learned"}
    assert set(report._estimated(df[df["q"] == "anchor"])["q"]) == {"anchor"}  # without it, the one there is
