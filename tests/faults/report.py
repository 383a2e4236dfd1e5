"""Write the campaign's rows (JSON lines from $DRKIT_FAULTS_REPORT) into docs/reliability.md,
between the ``faults:begin``/``faults:end`` markers; the text around them is kept.

    python -m tests.faults.report ROWS.jsonl docs/reliability.md

Exits 1 if a row lost a snapshot, committed a bad one or did not recover: the
figures are written either way, so what broke is on the page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

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

So far the campaign covers S3 faults (tests/faults/test_s3_campaign.py, through
the proxy tests/servers/s3faults.py in front of SeaweedFS). `make test` runs the
quick scenarios (one iteration each) without writing this page.

"""


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, object]]) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    seed = os.environ.get("DRKIT_FAULTS_SEED", "1919")
    lines = [
        f"Run {now} on drkit {commit or '?'}: {len(rows)} scenario(s), seed {seed}.",
        "",
        "| operation | fault | injection point | iterations | expected | observed "
        "| faults injected | snapshots lost | bad snapshots committed "
        "| recovered without manual steps | error excerpt | seconds |",
        "|---|---|---|---:|---|---|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        observed = "; ".join(str(o) for o in r["observed"]) or "-"  # type: ignore[attr-defined]
        excerpt = f"`{_cell(r['excerpt'])}`" if r["excerpt"] else "-"
        lines.append(
            "| " + " | ".join(_cell(x) for x in (
                r["operation"], r["fault"], r["injection"], r["iterations"], r["expected"],
                observed, r["injected"], r["lost"], r["bad"],
                "yes" if r["recovered"] else "**no**",
            )) + f" | {excerpt} | {r['seconds']} |"
        )  # fmt: skip
    total = {k: sum(int(r[k]) for r in rows) for k in ("iterations", "injected", "lost", "bad")}  # type: ignore[call-overload]
    recovered = sum(1 for r in rows if r["recovered"])
    seconds = sum(float(r["seconds"]) for r in rows)  # type: ignore[arg-type]
    lines += [
        "",
        f"**Totals**: {len(rows)} scenarios, {total['iterations']} iterations, "
        f"{total['injected']} faults injected, {total['lost']} snapshots lost, "
        f"{total['bad']} bad snapshots committed, {recovered} of {len(rows)} scenarios "
        f"recovered without manual steps; {seconds:.0f} s.",
    ]
    return "\n".join(lines)


def write(rows_path: Path, page: Path) -> int:
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["operation"], r["fault"], r["injection"]))
    text = page.read_text() if page.exists() else HEAD + f"{BEGIN}\n{END}\n"
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    page.write_text(f"{before}{BEGIN}\n{render(rows)}\n{END}{after}")
    broken = [r for r in rows if r["lost"] or r["bad"] or not r["recovered"]]
    print(f"{page}: {len(rows)} scenarios, {len(broken)} broken")
    return 1 if broken or not rows else 0


if __name__ == "__main__":
    sys.exit(write(Path(sys.argv[1]), Path(sys.argv[2])))
