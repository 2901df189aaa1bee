"""The numbers the README copies from generated reports: every table marked
``<!-- table N of PATH (tests/test_docs.py checks it) -->`` holds, row by row, the cells of the N-th table
of that committed report (labels and bold aside), so a hand-copied number that drifts fails the suite."""

import importlib.util
import re
from pathlib import Path

import pytest

from .conftest import ROOT

_spec = importlib.util.spec_from_file_location("retable", ROOT / "scripts" / "retable.py")
retable = importlib.util.module_from_spec(_spec)  # the marks and tables as scripts/retable.py reads and writes them
_spec.loader.exec_module(retable)


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table of a text: its body rows as lists of cells (header and rule left out)."""
    return [[_cells(line) for line in block.splitlines()[2:]] for block in retable.tables(markdown)]


def _cells(line: str) -> list[str]:
    return [c.replace("**", "") for c in retable.cells(line)]  # bold aside


def _marked(doc: str) -> list[tuple[str, str, str]]:
    """(N, PATH, table block) of each marked table of a doc."""
    return [(n, path, block) for _, n, path, block in retable.MARK.findall((ROOT / doc).read_text())]


@pytest.mark.parametrize("doc, at_least", zip(retable.DOCS, (1, 3, 1), strict=True))
def test_every_marked_table_holds_its_reports_numbers(doc, at_least):
    marked = _marked(doc)
    assert len(marked) >= at_least  # the README's headline table; the estimators' two and the peers' in results
    for number, source, block in marked:
        table = _tables((ROOT / source).read_text())[int(number) - 1]
        rows = [_cells(line) for line in block.splitlines()[2:]]
        assert len(rows) == len(table), (source, number)
        for row, expected in zip(rows, table, strict=True):
            assert row[1:] == expected[1:], f"{doc}: a row of table {number} of {source}: {row} != {expected}"


def test_a_drifted_number_is_found(tmp_path):
    """The check itself can fail: one number changed in a copy of a marked table."""
    number, source, block = _marked("README.md")[0]
    drifted = block.replace(block.splitlines()[2].split("|")[2], " 99.9 ", 1)
    rows = [_cells(line) for line in drifted.splitlines()[2:]]
    table = _tables((ROOT / source).read_text())[int(number) - 1]
    assert any(r[1:] != t[1:] for r, t in zip(rows, table, strict=True))


def test_the_readme_is_a_front_page():
    """Under 10 KB: what it is, the set-up, a run, a sweep, the headline result, the make targets; the
    measured narratives live in docs/results.md, the keys in docs/usage.md (both linked from it)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 10_240
    for link in ("docs/results.md", "docs/usage.md", "docs/method.md"):
        assert f"]({link}" in text and (ROOT / link).is_file()


def test_the_docs_list_every_estimator():
    """The docs' lists of estimators (the q options of usage.md, the record's q of results_schema.md) name
    every estimator of estimators.ESTIMATORS (two had gone stale before there was one list)."""
    from noisy_convnet.estimators import NAMES

    for doc, extra in (("docs/usage.md", {"custom"}), ("docs/results_schema.md", set())):
        (row,) = [line for line in (ROOT / doc).read_text().splitlines() if line.startswith("| `q` |")]
        assert set(re.findall(r"`([a-z]+)`", row)) - {"q", "str"} == set(NAMES) | extra, doc


def test_the_code_map_names_every_module():
    """docs/usage.md's "Where the code lives" names every module and package of src/noisy_convnet, and only
    those: a module added or removed without it fails here."""
    text = (ROOT / "docs" / "usage.md").read_text().split("## Where the code lives", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+(?:\.py|/))`", text))
    src = ROOT / "src" / "noisy_convnet"
    there = {p.name + ("/" if p.is_dir() else "") for p in src.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and not p.name.startswith("__"))}
    assert named == there


def test_retable_rewrites_a_drifted_copy_from_its_report(tmp_path):
    """scripts/retable.py, run after a report is regenerated, puts the report's rows back into a marked
    table (here one whose number drifted) and leaves the rest of the doc as it was."""
    readme = (ROOT / "README.md").read_text()
    number, source, block = next(m for m in _marked("README.md") if "peers_mnist" in m[1])  # labels as the report's
    drifted = block.replace(block.splitlines()[2].split("|")[2], " 99.9 ", 1)
    doc = tmp_path / "README.md"
    doc.write_text(readme.replace(block, drifted, 1))
    assert doc.read_text() != readme
    assert retable.retable(ROOT / Path(source).parent, doc) == 1
    assert doc.read_text() == readme
