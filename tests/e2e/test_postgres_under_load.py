"""A PostgreSQL backup taken under pgbench writes restores to one consistent state (#17).

pgbench's TPC-B transactions move an amount ``delta`` into one account, one
teller and one branch and append it to ``pgbench_history``, all in one
transaction. In every consistent state the four sums are equal; a dump whose
tables were read at different moments breaks that (accounts from before a
burst of transactions, history from after it). The backup runs while pgbench
writes from four clients; the restored copy must satisfy the invariant, hold
exactly the row counts drkit recorded (counted in the snapshot pg_dump
exports), and be older than the source the load went on changing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.servers.postgres import PG_BIN, PgServer

SUMS = (
    "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || "
    "(SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || "
    "(SELECT sum(bbalance) FROM pgbench_branches) || ' ' || "
    "(SELECT coalesce(sum(delta), 0) FROM pgbench_history);"
)


def test_backup_under_pgbench_load_restores_a_consistent_snapshot(
    pg: PgServer, uniq: str, keys: Keys, tmp_path: Path
) -> None:
    db = f"bench_{uniq}"
    pg.psql("postgres", f"CREATE DATABASE {db};")
    base = [str(PG_BIN / "pgbench"), "-h", pg.host, "-p", str(pg.port), "-U", pg.user]
    subprocess.run([*base, "-i", "-q", "-s", "2", db], check=True, capture_output=True)
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "bench",
                "database": db,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            }
        ],
    )
    load = subprocess.Popen(
        [*base, "-c", "4", "-j", "2", "-T", "120", "-n", db],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        history = "SELECT count(*) FROM pgbench_history;"
        deadline = time.monotonic() + 30
        while int(pg.psql(db, history).strip() or 0) < 200:  # the load is running
            assert load.poll() is None, load.stderr.read().decode() if load.stderr else ""
            assert time.monotonic() < deadline, "pgbench wrote nothing"
            time.sleep(0.2)
        drkit("backup", "--policy", str(policy), check=True)
        during = int(pg.psql(db, history).strip())
        time.sleep(1)  # and it goes on writing after the snapshot
    finally:
        os.killpg(load.pid, signal.SIGTERM)  # pgbench and nothing else: our own session
        load.wait(timeout=30)
    after = int(pg.psql(db, history).strip())
    assert after > during, "the load did not run during and after the backup"

    res = drkit(
        "restore",
        "--policy",
        str(policy),
        "--rename-db",
        "_restored",
        "--yes",
        "--json",
        "--identity",
        str(keys.identity_file),
    )
    assert res.returncode == 0, res.output
    report = json.loads(res.stdout)
    assert report["verdict"] == "pass", report["checks"]  # row counts = the snapshot's
    restored = f"{db}_restored"
    try:
        sums = pg.psql(restored, SUMS).split()
        assert len(set(sums)) == 1, f"inconsistent: accounts/tellers/branches/history {sums}"
        rows = int(pg.psql(restored, history).strip())
        assert 200 <= rows < after, (rows, after)
    finally:
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {restored} WITH (FORCE);", check=False)
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE);", check=False)
