"""A source whose program is not installed on this machine (a newcomer's first backup
with the sample policy's postgres source and no PostgreSQL client): `policy validate`
warns, and backup says which program is missing, not "internal error:
FileNotFoundError"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drkit.errors import SourceError
from drkit.remote.local import LocalRunner
from tests.helpers import drkit


def test_a_missing_program_is_named() -> None:
    with pytest.raises(SourceError, match=r"drkit-no-such-program: command not found on "):
        LocalRunner("example").start(["drkit-no-such-program", "--version"])


def test_validate_warns_and_backup_names_the_missing_postgres_client(tmp_path: Path) -> None:
    made = json.loads(drkit("init", "--host", "newbie", "--json", check=True).stdout)
    policy = tmp_path / "newbie.toml"
    policy.write_text(
        f'host = "newbie"\n[repository]\nurl = "{made["repository"]}"\n'
        f'[encryption]\nrecipients = ["{made["recipient"]}"]\nsigners = ["{made["signer"]}"]\n'
        f'[[source]]\nkind = "postgres"\ndatabase = "app"\nbin_dir = "{tmp_path}/no-pg"\n'
    )
    res = drkit("policy", "validate", str(policy), "--json")
    assert res.returncode == 0, res.output
    warnings = json.loads(res.stdout)["warnings"]
    assert any(f"pg_dumpall is not installed in {tmp_path}/no-pg" in w for w in warnings), warnings
    assert any("source[0] (postgres): pg_dump is not" in w for w in warnings), warnings
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 1, res.output
    assert f"{tmp_path}/no-pg/pg_dumpall: command not found" in res.output, res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
