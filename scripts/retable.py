"""Rewrite the marked tables of the docs from their committed reports, after a report is regenerated:
``python scripts/retable.py outputs/figures/peers_mnist [README.md docs/results.md ...]``.

Every table marked ``<!-- table N of PATH (tests/test_docs.py checks it) -->`` whose PATH lies under the
given report folder becomes the N-th table of PATH, rows and labels as the report has them, the doc's own
header kept. Tables of other reports are left as they are (their bold and labels are the docs' own).
tests/test_docs.py then checks every marked table against its report.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- table (\d+) of (\S+) \(tests/test_docs.py checks it\) -->\n)((?:\|.*\|\n)+)")
DOCS = ("README.md", "docs/results.md", "docs/method.md")  # the docs that hold marked tables


def cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(markdown: str) -> list[str]:
    """Every markdown table of a text, as its block of lines."""
    return re.findall(r"((?:^\|.*\|\n)+)", markdown, flags=re.M)


def _table(block: str, header: list[str]) -> str:
    """A report's table block, compact (| a | b |), under ``header``."""
    rows = [cells(line) for line in block.splitlines()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[2:]]) + "\n"


def retable(report: Path, doc: Path) -> int:
    """Rewrite ``doc``'s tables marked as copies of a file under ``report``; returns how many."""
    count = 0

    def sub(m: re.Match) -> str:
        nonlocal count
        number, source, block = int(m.group(2)), ROOT / m.group(3), m.group(4)
        if report.resolve() not in source.resolve().parents:
            return m.group(0)
        count += 1
        return m.group(1) + _table(tables(source.read_text())[number - 1], cells(block.splitlines()[0]))

    text = doc.read_text()
    new = MARK.sub(sub, text)
    if new != text:
        doc.write_text(new)
    return count


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.splitlines()[1].strip(), file=sys.stderr)
        return 2
    report = Path(argv[0])
    if not report.is_dir():
        print(f"error: '{report}' is not a report folder", file=sys.stderr)
        return 2
    for doc in argv[1:] or DOCS:
        print(f"{doc}: {retable(report, ROOT / doc)} table(s) rewritten from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
