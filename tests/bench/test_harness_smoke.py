"""The benchmark harness cannot rot: a tiny-data run of all of it, and its instrument checked.

``bench/run.py --quick --runs 1`` builds the quick workload (a few MB), starts
its own PostgreSQL and SeaweedFS, runs every phase (a)-(f) once against
restic, borg and the floors, and writes JSON, Markdown, PNG and a docs block.
The full ``make bench`` is not part of the test suite.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402
from bench.measure import Command, CommandFailed, Stage, pairwise_ratio, rotated, run  # noqa: E402

PHASES = "abcdef"


def _allocating(mib: int, seconds: float = 0.3) -> list[str]:
    """A process that holds ``mib`` MiB resident for a moment."""
    touch = "b[::4096] = b'x' * len(b[::4096])"  # calloc'd pages count once written
    code = f"import time; b = bytearray({mib} << 20); {touch}; time.sleep({seconds})"
    return [sys.executable, "-c", code]


def test_measure_separates_the_tool_from_its_children() -> None:
    # main allocates 80 MiB; the other stage's child (a grandchild of the harness) 40 MiB.
    child = shlex.join(_allocating(40))
    cmd = Command((Stage(_allocating(80)), Stage(["sh", "-c", f"{child}; cat >/dev/null"])), main=0)
    s = run(cmd)
    assert 80 <= s.main_rss_mib < 100, s
    assert 40 <= s.children_rss_mib < 60, s
    assert s.wall_s >= 0.3
    assert s.tree_cpu_s > 0


def test_measure_fails_when_any_stage_fails() -> None:
    # pipefail: a failing first stage is not hidden by a succeeding last one.
    cmd = Command((Stage(["sh", "-c", "echo oops >&2; exit 3"]), Stage(["cat"])), main=1)
    with pytest.raises(CommandFailed, match=r"stage 1 \(sh\) exited with status 3: oops"):
        run(cmd)


def test_rounds_rotate_and_ratios_pair_by_round() -> None:
    assert [rotated("abc", r) for r in range(4)] == [
        list("abc"), list("bca"), list("cab"), list("abc"),
    ]  # fmt: skip
    stat = pairwise_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])
    assert (stat.median, stat.low, stat.high, stat.n) == (2.0, 1.0, 3.0, 3)


@pytest.mark.timeout(240)
def test_quick_bench_runs_every_phase(tmp_path: Path) -> None:
    missing = peers.missing_packages()
    assert not missing, f"apt-get install -y {' '.join(missing)} (benchmark peers)"
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\nhand-written intro\n\n<!-- bench:begin -->\nstale\n<!-- bench:end -->\n"
        "\nhand-written notes\n"
    )
    results = tmp_path / "results"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--runs", "1",
         "--results-dir", str(results), "--docs", str(docs)],
        capture_output=True, text=True, timeout=230, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"quick bench: {elapsed:.1f}s")

    [json_file] = results.glob("*.json")
    data = json.loads(json_file.read_text())
    by_key = {(m["phase"], m["key"]): m for m in data["measurements"]}
    assert {p for p, _ in by_key} == set(PHASES)
    for tool in ("drkit", "restic", "borg"):
        for phase in "abcd":
            runs = by_key[(phase, tool)]["runs"]
            assert len(runs) == 1 and runs[0]["wall_s"] > 0, (phase, tool)
    # drkit with dedup = true in (a), (b), (d): its incremental adds less than a full dump.
    for phase in "abd":
        assert by_key[(phase, "drkit-dedup")]["runs"][0]["wall_s"] > 0, phase
    added = {t: by_key[("b", t)]["runs"][0]["stored_bytes"] for t in ("drkit", "drkit-dedup")}
    assert added["drkit-dedup"] < added["drkit"] / 2, added
    # Stored bytes are real: the full backups hold about a zstd-compressed dump.
    dump = data["workload"]["dump_bytes"]
    assert by_key[("a", "floor-dump")]["runs"][0]["stored_bytes"] == dump
    for tool in ("drkit", "drkit-dedup", "drkit-local", "restic", "borg", "floor-pipeline"):
        stored = by_key[("a", tool)]["runs"][0]["stored_bytes"]
        assert dump / 20 < stored < dump, (tool, stored)

    # The S3 server's CPU is counted for the runs that upload to it, not for the others.
    # (Summed over runs: one small upload is a few clock ticks, an idle server one or two.)
    def server_cpu(keys: list[tuple[str, str]]) -> float:
        return sum(by_key[k]["runs"][0]["server_cpu_s"] for k in keys)

    uploads = [(p, t) for p in "ab" for t in ("drkit", "drkit-dedup", "restic")]
    local = [("a", t) for t in ("drkit-local", "borg", "floor-pipeline", "floor-dump")]
    sent, idle = server_cpu(uploads), server_cpu(local)
    assert sent > 2 * idle + 0.05, f"S3 server CPU: {sent} s in uploads, {idle} s in local runs"
    # (e) streamed k times the data and got every byte back.
    one = by_key[("e", "backup-1x")]["runs"][0]["plain_bytes"]
    assert by_key[("e", "backup-kx")]["runs"][0]["plain_bytes"] == 2 * one
    assert by_key[("e", "restore-kx")]["runs"][0]["plain_bytes"] == 2 * one
    assert all(
        by_key[("e", k)]["runs"][0]["main_rss_mib"] > 10 for k in ("backup-1x", "restore-1x")
    )
    # Ratios are pair by pair in the round, and every target is judged.
    ratios = {r["name"]: r for r in data["ratios"]}
    full = ratios["full: drkit / restic"]
    drkit_a, restic_a = (by_key[("a", t)]["runs"][0]["wall_s"] for t in ("drkit", "restic"))
    assert full["median"] == pytest.approx(drkit_a / restic_a, rel=1e-2)
    assert {r["phase"] for r in data["ratios"]} == set(PHASES)
    assert all(isinstance(r["met"], bool) for r in data["ratios"] if "limit" in r)
    assert data["ceilings"] and data["versions"]["restic"].startswith("restic")

    # (g) counted every S3 tool's requests in every step (the repositories' reads included).
    asked = data["s3_requests"]
    assert set(asked) == {"drkit", "drkit-dedup", "restic"}
    assert all(asked[t][s] > 0 for t in asked for s in ("full", "incremental", "restore"))

    assert json_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json_file.with_suffix(".md").read_text()
    assert "| measurement | wall s |" in table and "restic → S3, full" in table
    assert "incremental stored bytes, dedup: drkit / restic" in table
    assert "### (g) S3 requests per GB of dump" in table
    steps = {s["step"]: s["seconds"] for s in data["restore_steps"]}
    assert "data of conversations" in steps and "schema (--section=pre-data)" in steps, steps
    assert "| data of conversations |" in table
    text = docs.read_text()
    assert "hand-written intro" in text and "hand-written notes" in text
    assert "stale" not in text and "borg check --verify-data" in text

    # A saved run re-renders (bench/report.py) to the same figures.
    again = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "report.py"), str(json_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    reloaded = json.loads(json_file.read_text())
    assert reloaded["ratios"] == data["ratios"] and reloaded["ceilings"] == data["ceilings"]
