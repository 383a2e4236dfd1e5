"""Write the campaign's rows (JSON lines from $DRKIT_FAULTS_REPORT) into docs/reliability.md,
between the ``faults:begin``/``faults:end`` markers; the text around them is kept.

    python -m tests.faults.report ROWS.jsonl docs/reliability.md
    python -m tests.faults.report --merge ROWS.jsonl docs/reliability.md

The first form (what `make faults` runs) replaces every row: one run. With
``--merge`` (a part of the campaign run alone, e.g. one test file) the rows in
ROWS.jsonl replace the page's rows of the same scenario (operation, fault,
injection point) and are added to the others, which stay as the page has them;
the page then names each run and a *run* column says which row is from which.

Exits 1 if a row lost a snapshot, committed a bad one or did not recover: the
figures are written either way, so what broke is on the page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
HEAD = """# Reliability: the fault campaign

`make faults` runs every scenario of the fault campaign (issue 19) against real
components and regenerates the figures between the markers below; the text
outside them is written by hand. Each scenario runs one operation under one
fault, `DRKIT_FAULTS_ITERATIONS` times (default 2) with seeded injection points
(`DRKIT_FAULTS_SEED`), then checks: the run either succeeded (transient faults)
or failed closed (exit 1, the error names the host and the object, no
traceback); nothing partial is left (no open multipart upload, no snapshot
directory without a manifest, no lock); the next ordinary run succeeds without a
manual step; and every snapshot `drkit snapshots` lists verifies and restores
equal to the data it was taken of. *Lost*: snapshots committed during the
scenario that are no longer listed. *Bad*: listed snapshots that do not verify
or do not restore equal.

The campaign covers S3 faults (tests/faults/test_s3_campaign.py: backup, verify,
restore; tests/faults/test_s3_prune_campaign.py: prune and chunk GC) through the
proxy tests/servers/s3faults.py in front of SeaweedFS; crashes
(tests/faults/test_kill_campaign.py: `kill -9` of backup and restore); and resource
faults (tests/faults/test_resource_campaign.py: SIGTERM, disk full, PostgreSQL
killed, `pg_dump` hanging, clock skew). `make test` runs the quick scenarios (one
iteration each) without writing this page.

"""


COLUMNS = (
    "operation",
    "fault",
    "injection point",
    "iterations",
    "expected",
    "observed",
    "faults injected",
    "snapshots lost",
    "bad snapshots committed",
    "recovered without manual steps",
    "error excerpt",
    "seconds",
)
_ONE_RUN = re.compile(r"^Run (\S+) on drkit (\S+): (\d+) scenario\(s\), seed (\S+)\.$")
_A_RUN = re.compile(r"^- run (\d+): (\S+) on drkit (\S+), (\d+) scenario\(s\), seed (\S+)$")
_PIPE = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Run:
    """One run of (part of) the campaign whose rows are on the page."""

    stamp: str
    commit: str
    scenarios: int
    seed: str

    @classmethod
    def now(cls, scenarios: int) -> Run:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        stamp = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        return cls(stamp, commit or "?", scenarios, os.environ.get("DRKIT_FAULTS_SEED", "1919"))

    def words(self) -> str:
        return (
            f"{self.stamp} on drkit {self.commit}, {self.scenarios} scenario(s), seed {self.seed}"
        )


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, Any]], runs: list[Run] | None = None) -> str:
    """The figures: the run(s), the table, the totals. ``runs``: when the rows come from
    more than one, each row's ``run`` is its 1-based number in it."""
    runs = runs or [Run.now(len(rows))]
    several = len(runs) > 1
    if several:
        lines = ["Rows from more than one run (the *run* column says which):", ""]
        lines += [f"- run {n}: {r.words()}" for n, r in enumerate(runs, start=1)]
        lines.append("")
    else:
        one = runs[0]
        lines = [
            f"Run {one.stamp} on drkit {one.commit}: {one.scenarios} scenario(s), seed {one.seed}.",
            "",
        ]
    columns = COLUMNS + (("run",) if several else ())
    lines += [
        "| " + " | ".join(columns) + " |",
        "|---|---|---|---:|---|---|---:|---:|---:|---|---|---:|" + ("---:|" if several else ""),
    ]
    for r in rows:
        observed = "; ".join(str(o) for o in r["observed"]) or "-"
        excerpt = f"`{_cell(r['excerpt'])}`" if r["excerpt"] else "-"
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    r["operation"],
                    r["fault"],
                    r["injection"],
                    r["iterations"],
                    r["expected"],
                    observed,
                    r["injected"],
                    r["lost"],
                    r["bad"],
                    "yes" if r["recovered"] else "**no**",
                )
            )
            + f" | {excerpt} | {r['seconds']} |"
            + (f" {r['run']} |" if several else "")
        )
    total = {k: sum(int(r[k]) for r in rows) for k in ("iterations", "injected", "lost", "bad")}
    recovered = sum(1 for r in rows if r["recovered"])
    seconds = sum(float(r["seconds"]) for r in rows)
    lines += [
        "",
        f"**Totals**: {len(rows)} scenarios, {total['iterations']} iterations, "
        f"{total['injected']} faults injected, {total['lost']} snapshots lost, "
        f"{total['bad']} bad snapshots committed, {recovered} of {len(rows)} scenarios "
        f"recovered without manual steps; {seconds:.0f} s"
        + (" (the runs' seconds added up)." if several else "."),
    ]
    return "\n".join(lines)


def parse(figures: str) -> tuple[list[Run], list[dict[str, Any]]]:
    """The runs and rows of figures ``render`` wrote (the text between the markers)."""
    runs: list[Run] = []
    rows: list[dict[str, Any]] = []
    header: list[str] = []
    for line in figures.splitlines():
        if m := _ONE_RUN.match(line):
            runs = [Run(m[1], m[2], int(m[3]), m[4])]
        elif m := _A_RUN.match(line):
            assert int(m[1]) == len(runs) + 1, f"runs out of order: {line}"
            runs.append(Run(m[2], m[3], int(m[4]), m[5]))
        elif line.startswith("| ") and not header:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith("| "):
            cells = [c.strip().replace("\\|", "|") for c in _PIPE.split(line)[1:-1]]
            cell = dict(zip(header, cells, strict=True))
            excerpt = cell["error excerpt"]
            rows.append(
                {
                    "operation": cell["operation"],
                    "fault": cell["fault"],
                    "injection": cell["injection point"],
                    "iterations": int(cell["iterations"]),
                    "expected": cell["expected"],
                    "observed": [] if cell["observed"] == "-" else cell["observed"].split("; "),
                    "injected": int(cell["faults injected"]),
                    "lost": int(cell["snapshots lost"]),
                    "bad": int(cell["bad snapshots committed"]),
                    "recovered": cell["recovered without manual steps"] == "yes",
                    "excerpt": "" if excerpt == "-" else excerpt.strip("`"),
                    "seconds": float(cell["seconds"]),
                    "run": int(cell.get("run", 1)),
                }
            )
    return runs, rows


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["operation"], row["fault"], row["injection"])


def merged(
    old_runs: list[Run], old_rows: list[dict[str, Any]], new: list[dict[str, Any]]
) -> tuple[list[Run], list[dict[str, Any]]]:
    """``new`` (one new run) in place of the old rows of the same scenarios, the other
    old rows kept with their runs; runs no row is left from are dropped, the rest
    renumbered in order."""
    replaced = {_key(r) for r in new}
    kept = [r for r in old_rows if _key(r) not in replaced]
    used = sorted({r["run"] for r in kept})
    number = {old: n for n, old in enumerate(used, start=1)}
    runs = [old_runs[old - 1] for old in used] + [Run.now(len(new))]
    rows = [{**r, "run": number[r["run"]]} for r in kept]
    rows += [{**r, "run": len(runs)} for r in new]
    return runs, rows


def write(rows_path: Path, page: Path, *, merge: bool = False) -> int:
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    text = page.read_text() if page.exists() else HEAD + f"{BEGIN}\n{END}\n"
    before, _, rest = text.partition(BEGIN)
    figures, _, after = rest.partition(END)
    runs = None
    if merge:
        runs, rows = merged(*parse(figures), rows)
    rows.sort(key=_key)
    page.write_text(f"{before}{BEGIN}\n{render(rows, runs)}\n{END}{after}")
    broken = [r for r in rows if r["lost"] or r["bad"] or not r["recovered"]]
    print(f"{page}: {len(rows)} scenarios, {len(broken)} broken")
    return 1 if broken or not rows else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    merge = "--merge" in args
    paths = [a for a in args if a != "--merge"]
    sys.exit(write(Path(paths[0]), Path(paths[1]), merge=merge))
