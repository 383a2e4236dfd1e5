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


def test_merge_replaces_the_same_scenarios_and_names_each_run(tmp_path: Path) -> None:
    page = tmp_path / "reliability.md"
    page.write_text(f"# by hand\n\n{BEGIN}\n{END}\n\nnotes kept\n")
    old_a = Row("backup", "HTTP 500 (x1)", "any PUT", 2, "retried: succeeds", ["succeeded x2"], 2)
    old_b = Row("verify", "reset (x1)", "a | pipe", 2, "retried: succeeds", ["a; b"], 3)
    old_b.excerpt, old_b.seconds = "host flt: s3://b/k: `x`", 4.5
    assert write(rows_file(tmp_path, old_a, old_b), page) == 0
    first = page.read_text()
    assert "Run " in first and "| run |" not in first

    again_b = Row("verify", "reset (x1)", "a | pipe", 1, "retried: succeeds", ["succeeded x1"], 1)
    new = Row("prune", "HTTP 503 (every time)", "every listing", 2, "fails closed", [], 4)
    assert write(rows_file(tmp_path, again_b, new), page, merge=True) == 0
    text = page.read_text()
    assert text.startswith("# by hand\n") and text.endswith("notes kept\n")
    runs = [ln for ln in text.splitlines() if ln.startswith("- run ")]
    assert len(runs) == 2 and all(r.endswith("2 scenario(s), seed 1919") for r in runs), runs
    assert "| run |" in text
    # The old backup row keeps its run; the verify row is the new one; prune is added.
    assert "| backup | HTTP 500 (x1) | any PUT | 2 |" in text and text.count("| verify |") == 1
    assert "| verify | reset (x1) | a \\| pipe | 1 |" in text
    lines = {ln.split(" | ")[0]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert lines["| backup"].endswith("| 1 |") and lines["| prune"].endswith("| 2 |")
    assert "3 scenarios, 5 iterations, 7 faults injected" in text

    # Merged again over what the merge wrote: its rows read back as they were written,
    # run 2 stays (its verify row), prune's row is run 3's.
    assert write(rows_file(tmp_path, new), page, merge=True) == 0
    text = page.read_text()
    assert text.count("- run ") == 3
    assert "| verify | reset (x1) | a \\| pipe | 1 |" in text and text.count("| prune |") == 1
    lines = {ln.split(" | ")[0]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert lines["| verify"].endswith("| 2 |") and lines["| prune"].endswith("| 3 |")
    assert "3 scenarios, 5 iterations, 7 faults injected" in text

    # Rows of every run replaced: one run again, no run column.
    assert write(rows_file(tmp_path, old_a, again_b, new), page, merge=True) == 0
    text = page.read_text()
    assert text.count("- run ") == 0 and "| run |" not in text and "\nRun " in text


def test_merge_round_trips_a_row_with_an_excerpt(tmp_path: Path) -> None:
    page = tmp_path / "reliability.md"
    closed = Row(
        "restore",
        "HTTP 403 (every time)",
        "the artifact",
        2,
        "fails closed",
        ["failed closed x2"],
        2,
    )
    closed.excerpt = "error: host flt: s3://b/k: read failed | denied"
    closed.seconds = 6.1
    assert write(rows_file(tmp_path, closed), page) == 0
    before = page.read_text()
    other = Row("prune", "x", "y", 1, "succeeds", [], 1)
    assert write(rows_file(tmp_path, other), page, merge=True) == 0
    row = next(ln for ln in page.read_text().splitlines() if ln.startswith("| restore"))
    assert row.removesuffix(" 1 |") in before
