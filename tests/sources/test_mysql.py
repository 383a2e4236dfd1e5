"""``mysql`` against a real MariaDB server: mysqldump --single-transaction of every
application database (rows counted from the stream), a restore refused onto tables
without --force-db, and with it the databases as they were: rows, view, trigger,
routine, event, awkward strings and bytes; the password only ever as MYSQL_PWD."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import drkit, write_policy
from tests.servers.mariadb import MariaDbServer, mariadb_server

SCHEMA = r"""
CREATE DATABASE shop CHARACTER SET utf8mb4;
USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name TEXT, note TEXT, raw BLOB);
CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, customer INT NOT NULL,
  amount DECIMAL(10,2), FOREIGN KEY (customer) REFERENCES customers(id));
CREATE TABLE audit_log (id INT PRIMARY KEY AUTO_INCREMENT, what TEXT);
CREATE TABLE empty_one (id INT PRIMARY KEY);
CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 500;
CREATE TRIGGER orders_ai AFTER INSERT ON orders FOR EACH ROW
  INSERT INTO audit_log (what) VALUES (CONCAT('order ', NEW.id));
CREATE PROCEDURE total_for(IN c INT) SELECT SUM(amount) FROM orders WHERE customer = c;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit_log WHERE id < 0;
INSERT INTO customers VALUES
  (1, 'O''Brien (the first)', 'line one\nline two),(3,''x''', 0x00FF0A0D5C27),
  (2, 'emoji 🚀 and back\\slash', NULL, NULL),
  (3, '),(', ';', '');
CREATE DATABASE metrics;
CREATE TABLE metrics.points (ts INT, v DOUBLE);
"""


def load(server: MariaDbServer) -> None:
    server.sql(SCHEMA)
    values = ",".join(f"({1 + i % 3}, {i}.25)" for i in range(3000))
    server.sql(f"INSERT INTO shop.orders (customer, amount) VALUES {values};")
    server.sql(
        "INSERT INTO metrics.points VALUES " + ",".join(f"({i}, {i}e10)" for i in range(777))
    )


def counts(server: MariaDbServer) -> dict[str, int]:
    out = {}
    for table in (
        "shop.customers",
        "shop.orders",
        "shop.audit_log",
        "shop.empty_one",
        "metrics.points",
    ):
        out[table] = int(server.sql(f"SELECT COUNT(*) FROM {table};"))
    return out


def policy_for(tmp_path: Path, keys: Any, server: MariaDbServer, **extra: Any) -> Path:
    source = {
        "kind": "mysql",
        "name": "db",
        "host": "127.0.0.1",
        "port": server.port,
        "password": "env:MYSQL_TEST_PW",
        **extra,
    }
    return write_policy(
        tmp_path / "box.toml",
        "box",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [source],
    )


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


@pytest.fixture
def server() -> Any:
    with mariadb_server("pw-" + secrets.token_hex(10)) as s:
        yield s


def test_mysql_dump_roundtrip(
    tmp_path: Path, keys: Any, server: MariaDbServer, snapshot_facts: Any, leak_check: Any
) -> None:
    env = {"MYSQL_TEST_PW": server.password}
    load(server)
    truth = counts(server)
    assert truth["shop.audit_log"] == 3000  # the trigger ran
    total = server.sql("CALL shop.total_for(3);")
    policy = policy_for(tmp_path, keys, server)
    backup = drkit("backup", "--policy", str(policy), "--json", env=env, check=True)
    facts = snapshot_facts(policy, "db")
    assert facts["databases"] == ["metrics", "shop"]  # "all": no system schema
    assert {t: n for t, n in facts["tables"].items() if t in truth} == truth
    assert facts["rows"] == sum(truth.values())

    # The server has moved on: rows deleted, a table added. Refused without --force-db.
    server.sql("DELETE FROM shop.orders WHERE id > 10; CREATE TABLE shop.added (x INT);")
    rc, _, output = restore(policy, keys, env)
    assert rc != 0 and "hold tables; use --force-db to replace them" in output, output
    assert int(server.sql("SELECT COUNT(*) FROM shop.orders;")) == 10

    rc, report, output = restore(policy, keys, env, "--force-db")
    assert rc == 0 and report["verdict"] == "pass", output
    assert counts(server) == truth
    assert server.sql("SHOW TABLES FROM shop LIKE 'added';") == ""
    [check] = [c for c in report["checks"] if c["name"] == "rows per table"]
    assert check["status"] == "pass" and check["detail"].startswith("5 table(s)"), check
    assert (
        server.sql("SELECT name FROM shop.customers WHERE id = 2;") == "emoji 🚀 and back\\\\slash"
    )
    assert server.sql("SELECT HEX(raw) FROM shop.customers WHERE id = 1;") == "00FF0A0D5C27"
    assert server.sql("SELECT COUNT(*) FROM shop.big_orders;") == "2500"  # the view
    assert server.sql("CALL shop.total_for(3);") == total  # the routine
    assert server.sql("SELECT EVENT_NAME FROM information_schema.EVENTS;") == "nightly"
    server.sql("INSERT INTO shop.orders (customer, amount) VALUES (1, 1);")
    assert server.sql("SELECT COUNT(*) FROM shop.audit_log;") == "3001"  # trigger restored
    leak_check(server.password, tmp_path / "repo", backup.output, output)


def test_mysql_cut_dump_is_not_a_backup(tmp_path: Path, keys: Any, server: MariaDbServer) -> None:
    load(server)
    cut = tmp_path / "cut-dump"
    cut.write_text('#!/bin/sh\nmysqldump "$@" | head -c 3000\n')
    cut.chmod(0o755)
    policy = policy_for(tmp_path, keys, server, dump=str(cut), databases=["shop"])
    res = drkit("backup", "--policy", str(policy), env={"MYSQL_TEST_PW": server.password})
    assert res.returncode != 0, res.output
    assert "ended without its '-- Dump completed' line" in res.output, res.output
    assert "host box: source db (mysql)" in res.output and "not committed" in res.output

    policy = policy_for(tmp_path, keys, server, databases=["shop", "nope"])
    res = drkit("backup", "--policy", str(policy), env={"MYSQL_TEST_PW": server.password})
    assert res.returncode != 0 and "has no database nope" in res.output, res.output
