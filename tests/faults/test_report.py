"""docs/reliability.md is written between its markers; a broken row fails `make faults`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tests.faults.campaign import Row
from tests.faults.report import BEGIN, END, write


def rows_file(tmp_path: Path, *rows: Row) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    return path


def test_rows_and_totals_replace_only_what_is_between_the_markers(tmp_path: Path) -> None:
    page = tmp_path / "reliability.md"
    page.write_text(f"# by hand\n\n{BEGIN}\nold figures\n{END}\n\nnotes kept\n")
    good = Row("backup", "HTTP 500 (x1)", "any PUT", 2, "retried: succeeds", ["succeeded x2"], 2)
    closed = Row("restore", "HTTP 403 (every time)", "a | pipe", 2, "fails closed", [], 2)
    closed.excerpt = "host flt: s3://b/k: read failed"
    assert write(rows_file(tmp_path, good, closed), page) == 0
    text = page.read_text()
    assert text.startswith("# by hand\n") and text.endswith("notes kept\n")
    assert "old figures" not in text
    assert (
        "| backup | HTTP 500 (x1) | any PUT | 2 | retried: succeeds | succeeded x2 "
        "| 2 | 0 | 0 | yes |" in text
    )
    assert "a \\| pipe" in text and "`host flt: s3://b/k: read failed`" in text
    assert "2 scenarios, 4 iterations, 4 faults injected, 0 snapshots lost, 0 bad" in text


def test_a_broken_row_is_written_and_fails(tmp_path: Path) -> None:
    page = tmp_path / "reliability.md"
    lost = Row("backup", "x", "y", 1, "retried: succeeds", ["FAILED: boom"], 1, lost=1)
    lost.recovered = False
    assert write(rows_file(tmp_path, lost), page) == 1
    assert "**no**" in page.read_text() and BEGIN in page.read_text()
