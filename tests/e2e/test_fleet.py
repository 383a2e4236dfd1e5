"""backup --all: hosts run concurrently, one failure never stops the others, exit 3."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Keys
from tests.helpers import drkit, write_policy


def test_fleet_partial_failure_and_concurrency(keys: Keys, tmp_path: Path) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    repo = {"url": (tmp_path / "repo").as_uri()}
    for host in ("alpha", "bravo", "charlie"):
        # Each host's dump records when it ran, so overlap proves concurrency.
        script = (
            f"date +%s.%N > {marks}/{host}.start; sleep 1; echo {host}-data; "
            f"date +%s.%N > {marks}/{host}.end"
        )
        source = {"kind": "command", "name": "dump", "command": ["sh", "-c", script]}
        write_policy(pdir / f"{host}.toml", host, repo, [keys.recipient], [source])
    failing = {"kind": "command", "name": "dump", "command": ["sh", "-c", "exit 7"]}
    write_policy(pdir / "broken.toml", "broken", repo, [keys.recipient], [failing])

    res = drkit("--policy-dir", str(pdir), "backup", "--all", "--jobs", "4", "--json")
    assert res.returncode == 3, res.output
    results = {r["host"]: r for r in json.loads(res.stdout)["results"]}
    assert {h: r["status"] for h, r in results.items()} == {
        "alpha": "success",
        "broken": "failed",
        "bravo": "success",
        "charlie": "success",
    }
    assert "host broken: source dump" in results["broken"]["error"]
    assert "exited with status 7" in results["broken"]["error"]
    spans = [
        (float((marks / f"{h}.start").read_text()), float((marks / f"{h}.end").read_text()))
        for h in ("alpha", "bravo", "charlie")
    ]
    assert max(s for s, _ in spans) < min(e for _, e in spans), "hosts did not overlap"
    snaps = json.loads(drkit("--policy-dir", str(pdir), "snapshots", "--json").stdout)
    assert sorted(s["host"] for s in snaps["snapshots"]) == ["alpha", "bravo", "charlie"]

    # Text summary (not a TTY: plain lines, for cron mail); all failing -> exit 1.
    only_broken = drkit("--policy-dir", str(pdir), "backup", "--host", "broken")
    assert only_broken.returncode == 1
