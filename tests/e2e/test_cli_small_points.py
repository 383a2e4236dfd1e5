"""Issue 23, item 7: usage errors under --json are JSON on stdout too; `restore
--resume` with nothing to resume says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.helpers import drkit, write_policy


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "--json", "--no-such-flag"),
        ("--json", "status", "--no-such-flag"),
        ("--json", "snapshots", "--host", "nope"),
        ("restore", "--json", "--plan"),
        ("policy", "validate", "--json"),
    ],
)
def test_usage_errors_under_json_are_json_on_stdout(argv: tuple[str, ...], tmp_path: Path) -> None:
    res = drkit("--policy-dir", str(tmp_path), *argv)
    assert res.returncode == 2 and "Traceback" not in res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["errors"], doc
    assert doc["errors"][0] in res.stderr  # the text error is still on stderr


def test_usage_error_without_json_prints_nothing_on_stdout(tmp_path: Path) -> None:
    res = drkit("--policy-dir", str(tmp_path), "status", "--no-such-flag")
    assert res.returncode == 2 and res.stdout == ""


def test_resume_with_nothing_to_resume_says_so(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a.env").write_text("A=1\n")
    policy = write_policy(
        tmp_path / "p.toml",
        "h1",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "env", "paths": [f"{tmp_path}/app/*.env"]}],
    )
    drkit("backup", "--policy", str(policy), check=True)
    ident = ("--identity", str(keys.identity_file))
    said = "--resume: nothing to resume onto"
    plan = drkit("restore", "--policy", str(policy), "--plan", "--resume", "--json", *ident)
    assert plan.returncode == 0, plan.output
    assert said in plan.stderr and json.loads(plan.stdout)["nothing_to_resume"] is True
    dest = tmp_path / "dest"
    run = drkit(
        "restore", "--policy", str(policy), "--yes", "--resume", "--dest", str(dest), *ident
    )
    assert run.returncode == 0, run.output
    assert said in run.stderr
    assert (dest / str(tmp_path / "app" / "a.env").lstrip("/")).read_text() == "A=1\n"
    plain = drkit("restore", "--policy", str(policy), "--plan", *ident)
    assert said not in plain.stderr
