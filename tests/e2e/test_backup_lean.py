"""A backup loads only what its sources need: no SQLAlchemy, no cryptography.x509.

The catalog write at the end goes through sqlite3 (drkit.catalog.db) and
source modules are imported by kind (drkit.sources.registry); this runs the
real CLI and checks both, and that the catalog still holds the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from drkit.catalog.db import Catalog
from drkit.paths import default_catalog_url
from tests.conftest import Keys
from tests.helpers import write_policy

# Runs `drkit ARGS...` in-process, then prints the heavy modules it loaded.
PROBE = """
import json, runpy, sys
sys.argv = ["drkit", *sys.argv[1:]]
try:
    runpy.run_module("drkit", run_name="__main__")
finally:
    heavy = ("sqlalchemy", "cryptography.x509", "drkit.catalog.orm", "drkit.sources.caddy",
             "drkit.sources.certbot", "drkit.sources.nats", "drkit.sources.postgres")
    print("LOADED " + json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))),
          file=sys.stderr)
"""


def run_probe(*args: str) -> tuple[int, list[str], str]:
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300
    )
    line = [x for x in res.stderr.splitlines() if x.startswith("LOADED ")][-1]
    return res.returncode, json.loads(line.removeprefix("LOADED ")), res.stdout + res.stderr


def test_backup_records_its_run_without_sqlalchemy(keys: Keys, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "lean.toml",
        "lean",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "hello", "command": ["echo", "hello"]}],
    )
    code, loaded, output = run_probe("backup", "--policy", str(policy), "--json")
    assert code == 0, output
    assert loaded == [], output
    snapshot = json.loads(output[: output.rindex("}") + 1])["results"][0]["snapshot"]

    failing = write_policy(
        tmp_path / "failing.toml",
        "lean",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "hello", "command": ["false"]}],
    )
    code, loaded, output = run_probe("backup", "--policy", str(failing))
    assert code == 1 and loaded == [], output

    with Catalog(default_catalog_url()) as cat:
        [row] = cat.snapshots("lean")
        assert row.snapshot_id == snapshot and row.artifact_count == 1
        last = cat.last_run("lean")
        assert last is not None and last.status == "failed" and last.snapshot_id is None
        assert last.error is not None and "hello" in last.error
        ok = cat.last_success("lean")
        assert ok is not None and ok.snapshot_id == snapshot and ok.finished is not None
