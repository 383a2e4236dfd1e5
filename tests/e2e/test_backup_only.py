"""`backup --only`: one host's named sources, the rest from older snapshots on restore."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Keys
from tests.helpers import drkit, write_policy


def test_backup_only_named_sources_and_restore_assembles_the_rest(
    tmp_path: Path, keys: Keys
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / ".env").write_text("TOKEN=one\n")
    (app / "code.js").write_text("// v1\n")
    policy = str(
        write_policy(
            tmp_path / "box.toml",
            "box",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [
                {"kind": "env", "name": "env", "paths": [f"{app}/.env"]},
                {"kind": "files", "name": "code", "paths": [f"{app}/code.js"]},
            ],
        )
    )
    drkit("backup", "--policy", policy, check=True)
    (app / ".env").write_text("TOKEN=two\n")
    (app / "code.js").write_text("// v2, not backed up\n")

    res = drkit("backup", "--policy", policy, "--only", "env", "--json")
    assert res.returncode == 0, res.output
    [result] = json.loads(res.stdout)["results"]
    assert result["sources"] == ["env"]

    dest = tmp_path / "restored"
    out = drkit(
        "restore",
        "--policy",
        policy,
        "--dest",
        str(dest),
        "--yes",
        "--json",
        "--identity",
        str(keys.identity_file),
    )
    assert out.returncode == 0, out.output
    restored = dest / str(app).lstrip("/")
    assert (restored / ".env").read_text() == "TOKEN=two\n"  # the --only snapshot
    assert (restored / "code.js").read_text() == "// v1\n"  # the older one
    assert len(set(json.loads(out.stdout)["sources"].values())) == 2


def test_backup_only_refuses_unknown_sources_and_several_hosts(tmp_path: Path, keys: Keys) -> None:
    policy = str(
        write_policy(
            tmp_path / "box.toml",
            "box",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [{"kind": "command", "name": "x", "command": ["echo", "x"]}],
        )
    )
    res = drkit("backup", "--policy", policy, "--only", "nope")
    assert res.returncode == 2
    assert "host box: --only: no source nope in the policy (sources: x)" in res.stderr, res.stderr
    write_policy(
        tmp_path / "other.toml",
        "other",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "x", "command": ["echo", "y"]}],
    )
    res = drkit("--policy-dir", str(tmp_path), "backup", "--all", "--only", "x")
    assert res.returncode == 2 and "one host" in res.stderr, res.output
    assert not (tmp_path / "repo").exists() or not list((tmp_path / "repo").rglob("manifest.json"))
