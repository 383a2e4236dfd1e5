"""The end-of-run summary never shows a host with a failed source as "ok": plain lines (cron
mail), --json, and the terminal table all say PARTIAL or FAILED and name the source."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from drkit.actions.fleet import HostResult, backup_one
from drkit.cli.summary import print_summary
from drkit.policy.loader import load_policy
from tests.conftest import Keys
from tests.helpers import drkit, write_policy

UNSET = "DRKIT_T_TOKEN_NEVER_SET"


def fleet(tmp_path: Path, keys: Keys) -> list[Path]:
    """vultr: a data source and a provider snapshot that fails (its token is not set), so
    the data is committed without it; hetzner: fine; e2i: its dump fails."""
    repo = {"url": (tmp_path / "repo").as_uri()}
    droplet = {
        "kind": "snapshot",
        "name": "droplet",
        "provider": "digitalocean",
        "resource_id": "4242",
        "token": f"env:{UNSET}",
        "endpoint": "http://127.0.0.1:9",
    }
    ok = {"kind": "command", "name": "db", "command": ["echo", "rows"]}
    bad = {"kind": "command", "name": "pgdump", "command": ["sh", "-c", "exit 7"]}
    return [
        write_policy(tmp_path / "vultr.toml", "vultr", repo, [keys.recipient], [ok, droplet]),
        write_policy(tmp_path / "hetzner.toml", "hetzner", repo, [keys.recipient], [ok]),
        write_policy(tmp_path / "e2i.toml", "e2i", repo, [keys.recipient], [bad, ok]),
    ]


def test_partial_and_failed_hosts_name_their_failed_sources(tmp_path: Path, keys: Keys) -> None:
    policies = fleet(tmp_path, keys)
    args = [a for p in policies for a in ("--policy", str(p))]

    text = drkit("backup", *args, "--jobs", "1")
    assert text.returncode == 3, text.output
    lines = {line.split(":", 1)[0]: line for line in text.stdout.splitlines()}
    assert lines["vultr"].startswith("vultr: PARTIAL: snapshot ")
    assert lines["vultr"].endswith("committed with db; failed source(s): droplet")
    assert lines["hetzner"].startswith("hetzner: snapshot ")
    assert lines["e2i"] == "e2i: FAILED (failed source(s): pgdump)"
    assert " ok" not in text.stdout

    res = drkit("backup", *args, "--jobs", "1", "--json")
    assert res.returncode == 3, res.output
    rows = {r["host"]: r for r in json.loads(res.stdout)["results"]}
    assert rows["vultr"]["status"] == "partial" and rows["vultr"]["failed_sources"] == ["droplet"]
    assert rows["vultr"]["sources"] == ["db"]
    assert rows["e2i"]["status"] == "failed" and rows["e2i"]["failed_sources"] == ["pgdump"]
    assert rows["hetzner"]["status"] == "success" and "failed_sources" not in rows["hetzner"]

    # -q (cron): silent only when everything succeeded; a partial run is still reported.
    quiet = drkit("backup", "--policy", str(policies[0]), "-q")
    assert quiet.returncode == 3 and "PARTIAL" in quiet.stdout and "droplet" in quiet.stdout


def test_the_terminal_table_shows_partial_and_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = [
        HostResult(
            "vultr",
            "partial",
            snapshot="20300101T030000Z-aaaaaa",
            artifacts=1,
            plain_bytes=10,
            stored_bytes=20,
            seconds=1.0,
            sources=("db",),
            error="host vultr: source droplet: digitalocean 4242: snapshot: errored",
            failed_sources=("droplet",),
        ),
        HostResult(
            "hetzner",
            "success",
            snapshot="20300101T030000Z-bbbbbb",
            artifacts=1,
            plain_bytes=10,
            stored_bytes=20,
            seconds=1.0,
            sources=("db",),
        ),
        # The table reads failed_sources, not the error text (which need not name it).
        HostResult("e2i", "failed", error="host e2i: connection lost", failed_sources=("pgdump",)),
    ]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("NO_COLOR", "1")
    print_summary(results)
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "PARTIAL" in rows["vultr"] and "droplet" in rows["vultr"] and " ok " not in rows["vultr"]
    assert "FAILED" in rows["e2i"] and "pgdump" in rows["e2i"]
    assert " ok " in rows["hetzner"]


def test_host_results_carry_their_failed_sources(tmp_path: Path, keys: Keys) -> None:
    """Structured, from the run itself: the manifest's missing provider snapshot for a
    partial run, the source the error was raised in for a failed one."""
    results = {}
    for path in fleet(tmp_path, keys):
        policy = load_policy(path)
        results[policy.host] = backup_one(policy, None, lambda _m: None)
    assert results["vultr"].status == "partial"
    assert results["vultr"].failed_sources == ("droplet",)
    assert results["e2i"].status == "failed" and results["e2i"].failed_sources == ("pgdump",)
    assert results["hetzner"].status == "success" and results["hetzner"].failed_sources == ()
    assert results["e2i"].as_dict()["failed_sources"] == ["pgdump"]
    assert "failed_sources" not in results["hetzner"].as_dict()
