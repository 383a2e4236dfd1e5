"""Incident restore: plan, refusal to overwrite, --rename-db, --resume, --at, --only, checks."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Keys
from tests.helpers import drkit, load_callmeback, signed_manifest, table_checksums, write_policy
from tests.servers.postgres import PgServer


@pytest.fixture
def host(pg: PgServer, uniq: str, keys: Keys, tmp_path: Path) -> dict[str, Any]:
    """A vultr-like host on this machine: callmeback + role, two apps' .env, app files."""
    db, role = f"callmeback_{uniq}", f"cmb_user_{uniq}"
    load_callmeback(pg, db, role, "pw-" + uniq)
    root = tmp_path / "root"
    for app in ("voice-pipeline", "db-proxy"):
        (root / app).mkdir(parents=True)
        (root / app / ".env").write_text(f"PORT=8080\nDATABASE_URL=postgres://{role}@x/{db}\n")
        (root / app / "server.js").write_text(f"// {app}\n")
    marker = tmp_path / "slow-step-started"
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {"kind": "env", "name": "env-files", "paths": [f"{root}/*/.env"]},
            {
                "kind": "postgres",
                "name": "callmeback",
                "database": db,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            },
            {
                "kind": "files",
                "name": "apps",
                "paths": [f"{root}/voice-pipeline/server.js", f"{root}/db-proxy/server.js"],
            },
            # A last step slow enough to interrupt: touches a marker, then waits.
            {
                "kind": "command",
                "name": "pm2-stub",
                "command": ["echo", "apps"],
                "restore_command": [
                    "sh",
                    "-c",
                    f"cat >/dev/null; echo $$ > {marker}.pid; touch {marker}; exec sleep 30",
                ],
            },
        ],
    )
    return {"policy": policy, "db": db, "role": role, "root": root, "marker": marker}


def ident(keys: Keys) -> list[str]:
    return ["--identity", str(keys.identity_file)]


def live_plan(policy: str, keys: Keys, *args: str) -> dict[str, Any]:
    """``restore --plan --json`` while the database is live: its step is refused (exit 6)."""
    res = drkit("restore", "--policy", policy, "--plan", "--json", *ident(keys), *args)
    assert res.returncode == 6, res.output
    out: dict[str, Any] = json.loads(res.stdout)
    assert out["refused"] == ["callmeback"]
    return out


def test_plan_lists_ordered_steps_and_touches_nothing(
    pg: PgServer, host: dict[str, Any], keys: Keys
) -> None:
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    pg.psql("postgres", f"DROP DATABASE {host['db']};")
    res = drkit("restore", "--policy", policy, "--plan", "--json", *ident(keys), check=True)
    steps = json.loads(res.stdout)["steps"]
    assert [(s["step"], s["source"], s["kind"]) for s in steps] == [
        (1, "callmeback", "postgres"),
        (2, "env-files", "env"),
        (3, "apps", "files"),
        (4, "pm2-stub", "command"),
    ]
    assert any(f"database {host['db']}" in a and "create" in a for a in steps[0]["actions"])
    assert any(
        f"keep existing {host['role']}" in a or host["role"] in a for a in steps[0]["actions"]
    )
    assert "write 2 file(s) under /" in steps[1]["actions"][0]
    assert all(s["blocked"] is None for s in steps)
    text = drkit("restore", "--policy", policy, "--plan", *ident(keys), check=True).stdout
    assert text.splitlines()[0].startswith("Restore plan: host vultr, snapshot ")
    assert " 1. callmeback (postgres)" in text and " 4. pm2-stub (command)" in text
    exists = pg.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname='{host['db']}';")
    assert exists.strip() == "0"  # --plan created nothing


def test_plan_with_a_refused_step_exits_6_naming_it(
    pg: PgServer, host: dict[str, Any], keys: Keys
) -> None:
    """A script can tell a blocked plan from a good one: exit 6, and --json's
    ``refused`` names the steps (each step's ``blocked`` says why)."""
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    # The live database is still there: its step is refused (the others are not).
    res = drkit("restore", "--policy", policy, "--plan", "--json", *ident(keys))
    assert res.returncode == 6, res.output
    out = json.loads(res.stdout)
    assert out["refused"] == ["callmeback"]
    blocked = {s["source"]: s["blocked"] for s in out["steps"] if s["blocked"]}
    assert list(blocked) == ["callmeback"] and f"database {host['db']}" in blocked["callmeback"]
    assert "refused: step 1 (callmeback)" in res.stderr
    text = drkit("restore", "--policy", policy, "--plan", *ident(keys))
    assert text.returncode == 6, text.output
    assert "! REFUSED:" in text.stdout and "refused: step 1 (callmeback)" in text.stderr
    # Nothing refused: exit 0, an empty list.
    ok = drkit(
        "restore", "--policy", policy, "--plan", "--json", "--rename-db", "_plan", *ident(keys)
    )
    assert ok.returncode == 0, ok.output
    assert json.loads(ok.stdout)["refused"] == []
    # Without --plan a refused restore keeps failing with exit 1, restoring nothing.
    res = drkit("restore", "--yes", "--policy", policy, *ident(keys))
    assert res.returncode == 1 and "nothing was restored" in res.stderr, res.output


def test_existing_database_refused_then_rename_db(
    pg: PgServer, host: dict[str, Any], keys: Keys
) -> None:
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    before = table_checksums(pg, str(host["db"]))
    res = drkit("restore", "--yes", "--policy", policy, "--only", "callmeback", *ident(keys))
    assert res.returncode == 1
    assert f"database {host['db']}" in res.stderr and "--rename-db" in res.stderr
    assert "nothing was restored" in res.stderr
    res = drkit(
        "restore",
        "--yes",
        "--policy",
        policy,
        "--only",
        "callmeback",
        "--rename-db",
        "_restored",
        *ident(keys),
        "--json",
    )
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] == "pass"
    assert any(c["name"].startswith("row counts") and c["status"] == "pass" for c in out["checks"])
    # --only restored only the database: no other step ran.
    assert all(s.startswith("callmeback:") for s in out["steps"])
    assert table_checksums(pg, f"{host['db']}_restored") == before
    assert table_checksums(pg, str(host["db"])) == before  # the live one is untouched


def test_killed_restore_resumes_without_redoing_steps(
    pg: PgServer, host: dict[str, Any], keys: Keys, tmp_path: Path
) -> None:
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    before = table_checksums(pg, str(host["db"]))
    pg.psql("postgres", f"DROP DATABASE {host['db']};")
    shutil.rmtree(host["root"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "restore", "--yes", "--policy", policy, *ident(keys)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not Path(host["marker"]).exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "restore never reached its last step"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the restore and its children, by our PID
        proc.wait()
        # The restore command runs in a session of its own: stop it by its PID too.
        pidfile = Path(f"{host['marker']}.pid")
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    # Steps 1-3 completed before the kill; the database exists now, so redoing
    # step 1 without --force would be refused: a passing resume proves it skipped.
    os.unlink(host["marker"])
    (Path(str(host["policy"]))).write_text(
        Path(str(host["policy"])).read_text().replace("exec sleep 30", "true")
    )
    res = drkit("restore", "--yes", "--resume", "--policy", policy, *ident(keys), "--json")
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    assert out["skipped"] == ["callmeback", "env-files", "apps"]
    assert [s.split(":")[0] for s in out["steps"]] == ["pm2-stub"]
    assert out["verdict"] == "pass"
    assert table_checksums(pg, str(host["db"])) == before
    assert (Path(str(host["root"])) / "db-proxy" / ".env").exists()
    # Complete now: the progress is forgotten, so a later --resume is a new restore
    # (refused here, the data being live), never a silent no-op.
    again = drkit("restore", "--yes", "--resume", "--policy", policy, *ident(keys), "--json")
    assert again.returncode != 0 and "--force" in again.output, again.output


def test_at_picks_the_right_snapshot(
    pg: PgServer, host: dict[str, Any], keys: Keys, tmp_path: Path
) -> None:
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    repo = tmp_path / "repo" / "vultr" / "snapshots"
    [newest] = [p.name for p in repo.iterdir()]
    # Make an "old" snapshot, three days back, by copying and re-dating the one we have.
    old_time = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    old_id = old_time.strftime("%Y%m%dT%H%M%SZ") + "-0ld0ld"
    shutil.copytree(repo / newest, repo / old_id)
    manifest = json.loads((repo / old_id / "manifest.json").read_text())
    manifest["snapshot"] = old_id
    # Re-signed with this machine's key (a copy alone is refused as not where it is stored).
    (repo / old_id / "manifest.json").write_text(signed_manifest(manifest))
    assert live_plan(policy, keys, "--at", "2 days ago")["snapshot"] == old_id
    assert live_plan(policy, keys)["snapshot"] == newest
    none = drkit("restore", "--policy", policy, "--at", "5 days ago", "--plan", *ident(keys))
    assert none.returncode == 1 and "no trusted committed snapshot at or before" in none.stderr
    bad = drkit("restore", "--policy", policy, "--at", "last tuesday-ish", "--plan", *ident(keys))
    assert bad.returncode == 2 and "--at" in bad.stderr


def test_restore_without_yes_off_a_terminal_refuses(host: dict[str, Any], keys: Keys) -> None:
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    res = drkit("restore", "--policy", policy, "--rename-db", "_x", *ident(keys))
    assert res.returncode == 2 and "--yes" in res.stderr
    assert "Restore plan: host vultr" in res.stderr  # it showed what it would do


def test_whole_host_restore_takes_each_source_from_its_newest_snapshot(
    host: dict[str, Any], keys: Keys
) -> None:
    """With per-source schedules the newest snapshot may hold some sources only (here the
    files and the command): a whole-host restore takes those from it and the others from
    the older snapshot."""
    policy = str(host["policy"])
    drkit("backup", "--policy", policy, check=True)
    full = json.loads(drkit("snapshots", "--policy", policy, "--json").stdout)["snapshots"][0]
    partial_policy = Path(policy).with_name("partial.toml")
    text = Path(policy).read_text()
    partial_policy.write_text(
        text[: text.index("[[source]]")] + text[text.index('[[source]]\nkind = "files"') :]
    )
    drkit("backup", "--policy", str(partial_policy), check=True)
    plan = live_plan(policy, keys)
    newest = plan["snapshot"]
    assert newest != full["snapshot"] and plan["snapshots"] == [newest, full["snapshot"]]
    assert {s["source"]: s["snapshot"] for s in plan["steps"]} == {
        "callmeback": full["snapshot"],
        "env-files": full["snapshot"],
        "apps": newest,
        "pm2-stub": newest,
    }
    only = drkit(
        "restore",
        "--policy",
        policy,
        "--only",
        "apps",
        "--plan",
        "--json",
        *ident(keys),
        check=True,
    )
    assert [s["snapshot"] for s in json.loads(only.stdout)["steps"]] == [newest]
    bad = drkit("restore", "--policy", policy, "--only", "nosuch", "--plan", *ident(keys))
    assert bad.returncode == 2 and "--only nosuch: not a data source" in bad.stderr


def test_a_failing_step_says_what_was_restored_and_keep_going_restores_the_rest(
    keys: Keys, tmp_path: Path
) -> None:
    """A step that fails while applying stops the restore naming what came back, what did
    not run and how to get it; --keep-going restores the others (exit 3, verdict fail)."""
    root, marker = tmp_path / "root", tmp_path / "after-ran"
    (root / "app").mkdir(parents=True)
    (root / "app" / ".env").write_text("PORT=1\n")
    policy = str(
        write_policy(
            tmp_path / "vultr.toml",
            "vultr",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [
                {"kind": "env", "name": "env-files", "paths": [f"{root}/*/.env"]},
                {
                    "kind": "command",
                    "name": "breaks",
                    "command": ["echo", "x"],
                    "restore_command": ["sh", "-c", "cat >/dev/null; echo no room >&2; exit 3"],
                },
                {
                    "kind": "command",
                    "name": "after",
                    "command": ["echo", "y"],
                    "restore_command": ["sh", "-c", f"cat > {marker}"],
                },
            ],
        )
    )
    drkit("backup", "--policy", policy, check=True)
    shutil.rmtree(root)

    res = drkit("restore", "--yes", "--policy", policy, *ident(keys))
    assert res.returncode == 1, res.output
    assert (
        "exited with status 3: no room; step 2 (breaks) failed; restored before it: "
        "env-files; not run: after (restore them with --only after, or rerun with "
        "--keep-going; --resume retries from this step)" in res.stderr
    ), res.stderr
    assert (root / "app" / ".env").exists() and not marker.exists()

    shutil.rmtree(root)
    res = drkit("restore", "--yes", "--keep-going", "--json", "--policy", policy, *ident(keys))
    assert res.returncode == 3, res.output
    out = json.loads(res.stdout)
    assert out["outcomes"] == {"env-files": "restored", "breaks": "failed", "after": "restored"}
    assert out["verdict"] == "fail" and "no room" in out["failed"]["breaks"]
    failed = [c for c in out["checks"] if c["status"] == "fail"]
    assert [(c["source"], c["name"]) for c in failed] == [("breaks", "restored")]
    assert (root / "app" / ".env").exists() and marker.read_text() == "y\n"
