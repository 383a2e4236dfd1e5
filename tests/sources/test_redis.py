"""``redis`` against a real redis-server on the host: an RDB over the replication
protocol, a restore that stops the server (SHUTDOWN NOSAVE), places the RDB where
CONFIG GET dir/dbfilename says and starts it with the policy's start_command, and
key counts checked; the password only ever travels as REDISCLI_AUTH."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from tests.helpers import drkit, write_policy
from tests.servers.redis import RedisServer, redis_server


def policy_for(tmp_path: Path, keys: Any, server: RedisServer, **extra: Any) -> Path:
    source = {
        "kind": "redis",
        "name": "cache",
        "port": server.port,
        "start_command": server.start_command,
        **extra,
    }
    if server.password or "user" in extra:
        source["password"] = "env:REDIS_TEST_PW"
    return write_policy(
        tmp_path / "box.toml",
        "box",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [source],
    )


def fill(server: RedisServer) -> None:
    for i in range(50):
        server.cli("SET", f"user:{i}", f"value-{i}")
    server.cli("HSET", "graph:meta", "nodes", "3", "edges", "2")
    server.cli("SET", "session:x", "ttl", "EX", "3600")
    server.cli("SET", "other-db", "yes", db=3)


def restore(policy: Path, keys: Any, env: dict[str, str], *extra: str) -> tuple[int, Any, str]:
    res = drkit(
        "restore",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--yes",
        "--json",
        *extra,
        env=env,
    )
    return res.returncode, json.loads(res.stdout) if res.stdout else None, res.output


def test_redis_rdb_roundtrip_on_the_host(
    tmp_path: Path, keys: Any, snapshot_facts: Any, leak_check: Any
) -> None:
    password = "pw-" + secrets.token_hex(12)
    env = {"REDIS_TEST_PW": password}
    with redis_server(password) as server:
        fill(server)
        policy = policy_for(tmp_path, keys, server)
        backup = drkit("backup", "--policy", str(policy), "--json", env=env, check=True)
        facts = snapshot_facts(policy, "cache")
        assert facts["keys"] == {
            "0": {"low": 52, "high": 52, "expires": 1},
            "3": {"low": 1, "high": 1, "expires": 0},
        }
        assert facts["exact"] is True and facts["dir"] == str(server.base)
        assert facts["dbfilename"] == "dump.rdb" and facts["appendonly"] == "no"
        assert facts["rdb_bytes"] > 100

        # The server holds other data now: a restore refuses it without --force-db.
        server.cli("FLUSHALL")
        server.cli("SET", "new", "1")
        rc, report, output = restore(policy, keys, env)
        assert rc != 0, output
        assert "holds 1 key(s); use --force-db to replace them all" in output, output
        assert server.cli("GET", "new") == "1"

        old_pid = server.pid()
        rc, report, output = restore(policy, keys, env, "--force-db")
        assert rc == 0 and report["verdict"] == "pass", output
        assert server.pid() != old_pid  # stopped and started again
        assert server.cli("GET", "user:7") == "value-7"
        assert server.cli("HGET", "graph:meta", "edges") == "2"
        assert server.cli("GET", "other-db", db=3) == "yes"
        assert server.cli("GET", "new") == ""
        assert int(server.cli("TTL", "session:x")) > 3000
        [check] = [c for c in report["checks"] if c["name"] == "keys per database"]
        assert check["status"] == "pass", check
        assert check["detail"].startswith("53 key(s) in 2 database(s)"), check

        # A key lost after the restore: the check fails naming the database.
        server.cli("DEL", "user:1", "user:2")
        res = drkit(
            "restore",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            "--plan",
            env=env,
        )
        assert "--force-db" in res.output
        leak_check(password, tmp_path / "repo", backup.output, output, res.output)


def test_redis_backup_fails_closed_when_sync_is_not_allowed(tmp_path: Path, keys: Any) -> None:
    """A user without the SYNC/PSYNC permission gets no RDB: the backup fails, no snapshot."""
    with redis_server() as server:
        fill(server)
        server.cli("ACL", "SETUSER", "reader", "on", ">readerpw", "~*", "+@all", "-sync", "-psync")
        policy = policy_for(tmp_path, keys, server, user="reader")
        res = drkit("backup", "--policy", str(policy), env={"REDIS_TEST_PW": "readerpw"})
        assert res.returncode != 0, res.output
        assert "host box" in res.output and "cache" in res.output, res.output
        assert "no permissions to run the 'sync' command" in res.output, res.output
        listing = drkit("snapshots", "--policy", str(policy), "--json")
        assert "cache" not in listing.stdout, listing.output


def test_redis_cut_transfer_is_not_a_backup(tmp_path: Path, keys: Any) -> None:
    """A client that exits 0 after half an RDB (here: cut by `head`) fails the source."""
    with redis_server() as server:
        fill(server)
        cut = tmp_path / "cut-cli"
        cut.write_text('#!/bin/sh\nredis-cli "$@" | head -c 100\n')
        cut.chmod(0o755)
        policy = policy_for(tmp_path, keys, server, cli=str(cut))
        res = drkit("backup", "--policy", str(policy))
        assert res.returncode != 0, res.output
        assert "did not write a whole RDB (100 bytes" in res.output, res.output
        assert "snapshot not committed" in res.output, res.output


def test_redis_restore_with_appendonly_loads_the_rdb_as_the_aof_base(
    tmp_path: Path, keys: Any
) -> None:
    """With appendonly yes (Redis 7) the server loads its AOF manifest at start, not
    dump.rdb: the restore makes the RDB the base of a new manifest, and the data stays
    across another restart (the AOF then holds it)."""
    with redis_server(appendonly=True) as server:
        fill(server)
        policy = policy_for(tmp_path, keys, server)
        drkit("backup", "--policy", str(policy), check=True)
        server.cli("FLUSHALL")
        server.cli("SET", "after", "backup")
        rc, report, output = restore(policy, keys, {}, "--force-db")
        assert rc == 0 and report["verdict"] == "pass", output
        assert "appendonly yes" in " ".join(report["steps"]), report["steps"]
        assert server.cli("GET", "user:3") == "value-3" and server.cli("GET", "after") == ""
        server.cli("SET", "written", "later")
        server.stop()
        server.start()
        assert server.cli("GET", "user:3") == "value-3" and server.cli("GET", "written") == "later"
        assert server.cli("DBSIZE") == "53"
