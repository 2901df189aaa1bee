"""The resumable cell (cell.py), without training: a folder is finished only by its own record with the same
key, a twin beside it in the sweep is found and named, another config's record is never overwritten, a
killed run's checkpoints resume only the same key, and a finished cell keeps its record, not its
checkpoints."""

import json

import pytest

from noisy_convnet.cell import MARKER, Cell
from noisy_convnet.config import schema_defaults
from noisy_convnet.errors import UserError
from noisy_convnet.identity import CellKey
from noisy_convnet.record import RESULTS_FILE, SAME_AS, Record, read

from .test_identity import OLD_SWEEP

STAGE = "plain-" + "0" * 64  # a stage folder's name: <name>-<sha256 key>


@pytest.fixture
def finished_record():
    """(a finished cell's record, its key) from the fixed-Q cell of the old digits sweep."""
    d = read(next(OLD_SWEEP.glob(f"*q=fixed*/{RESULTS_FILE}")))
    return Record.from_dict(d), CellKey.stored(d, schema_defaults())


def test_a_cell_is_finished_by_its_own_record_and_then_only_for_its_key(tmp_path, finished_record):
    record, key = finished_record
    defaults, sweep = schema_defaults(), tmp_path / "sweep"
    cell = Cell(sweep / "a", key, defaults, sweep)
    (sweep / "a").mkdir(parents=True)
    assert cell.finished() is None
    cell.prepare()
    (sweep / "a" / "checkpoints" / "training1").mkdir()
    (sweep / "a" / "checkpoints" / "mine.txt").write_text("a user's file")
    path = cell.complete(record)
    assert path == sweep / "a" / RESULTS_FILE and (sweep / "a" / f"{MARKER}{key.id}").is_file()
    assert sorted(p.name for p in (sweep / "a" / "checkpoints").iterdir()) == ["mine.txt"]  # only the run's go
    again = Cell(sweep / "a", key, defaults, sweep).finished()
    assert again is not None and again.test_error == record.test_error and again.config == record.config
    other = CellKey("0" * 64, key.inputs)  # another config in the same folder: not finished, and refused
    assert Cell(sweep / "a", other, defaults, sweep).finished() is None
    with pytest.raises(UserError, match="^run_dir: .* holds a results.json of another config"):
        Cell(sweep / "a", other, defaults, sweep).prepare()
    assert read(path)["test_error"] == record.test_error  # untouched


def test_a_twin_beside_it_in_the_sweep_is_its_record_and_is_named(tmp_path, finished_record):
    record, key = finished_record
    defaults, sweep = schema_defaults(), tmp_path / "sweep"
    (sweep / "a").mkdir(parents=True)
    Cell(sweep / "a", key, defaults, sweep).complete(record)
    (sweep / "b").mkdir()
    twin = Cell(sweep / "b", key, defaults, sweep).finished()
    assert twin is not None and twin.test_error == record.test_error
    assert json.loads((sweep / "b" / SAME_AS).read_text()) == {"results": str(sweep / "a" / RESULTS_FILE)}
    assert Cell(tmp_path / "alone", key, defaults, None).finished() is None  # a single run has no siblings


def test_a_killed_runs_checkpoints_resume_only_the_same_key(tmp_path, finished_record):
    _, key = finished_record
    defaults, run = schema_defaults(), tmp_path / "run"
    run.mkdir()
    Cell(run, key, defaults).prepare()
    (run / "checkpoints" / "training1").mkdir()
    Cell(run, key, defaults).prepare()  # the same cell again: its checkpoints stay
    assert (run / "checkpoints" / "training1").is_dir()
    Cell(run, CellKey("0" * 64, key.inputs), defaults).prepare()  # another cell: they go
    assert not (run / "checkpoints" / "training1").exists()


def test_a_single_runs_stages_go_with_its_end_and_a_sweeps_stay(tmp_path, finished_record):
    record, key = finished_record
    defaults = schema_defaults()
    single = Cell(tmp_path / "run", key, defaults)
    (single.stages / STAGE).mkdir(parents=True)
    (single.stages / "notes.txt").write_text("a user's file")
    single.complete(record)
    assert [p.name for p in single.stages.iterdir()] == ["notes.txt"]
    sweep = tmp_path / "sweep"
    cell = Cell(sweep / "a", key, defaults, sweep)
    assert cell.stages == sweep / "stages"  # shared by the sweep's cells
    (cell.stages / STAGE).mkdir(parents=True)
    (sweep / "a").mkdir()
    cell.complete(record)
    assert (cell.stages / STAGE).is_dir()


def test_a_file_where_a_run_writes_a_folder_is_refused_before_any_work(tmp_path, finished_record):
    _, key = finished_record
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a folder")
    with pytest.raises(UserError, match="^run_dir: .*checkpoints' is a file, where a run writes its folder"):
        Cell(tmp_path / "run", key, schema_defaults()).prepare()
