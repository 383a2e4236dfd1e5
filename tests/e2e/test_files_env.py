"""files and env sources: modes, owners and symlinks survive; key names but no values in facts."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from drkit.actions.artifact_read import read_facts
from drkit.actions.repository_access import open_repository
from drkit.actions.snapshot_select import select_snapshot
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy
from tests.conftest import Keys
from tests.helpers import drkit, write_policy


def make_tree(base: Path) -> Path:
    app = base / "srv" / "voice-pipeline"
    app.mkdir(parents=True)
    (app / "server.js").write_text("console.log('hi')\n")
    (app / "run.sh").write_text("#!/bin/sh\n")
    (app / "run.sh").chmod(0o750)
    (app / "current").symlink_to("server.js")
    if os.getuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(app / "server.js", nobody.pw_uid, nobody.pw_gid)
    return app


def test_files_roundtrip_keeps_modes_owners_symlinks(tmp_path: Path, keys: Keys) -> None:
    app = make_tree(tmp_path)
    policy = write_policy(
        tmp_path / "h.toml",
        "h1",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "files", "name": "apps", "paths": [str(app)], "exclude": ["*.log"]}],
    )
    (app / "debug.log").write_text("noise")
    drkit("backup", "--policy", str(policy), check=True)
    dest = tmp_path / "restored"
    drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--dest",
        str(dest),
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    out = dest / str(app).lstrip("/")
    assert (out / "server.js").read_text() == "console.log('hi')\n"
    assert (out / "run.sh").stat().st_mode & 0o7777 == 0o750
    assert os.readlink(out / "current") == "server.js"
    assert not (out / "debug.log").exists()
    assert (out / "server.js").stat().st_uid == (app / "server.js").stat().st_uid


def test_restore_to_original_paths_refuses_to_overwrite_changed_files(
    tmp_path: Path, keys: Keys
) -> None:
    app = make_tree(tmp_path)
    policy = write_policy(
        tmp_path / "h.toml",
        "h1",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "files", "name": "apps", "paths": [str(app)]}],
    )
    drkit("backup", "--policy", str(policy), check=True)
    (app / "server.js").write_text("changed since the backup\n")
    res = drkit("restore", "--yes", "--policy", str(policy), "--identity", str(keys.identity_file))
    assert res.returncode == 1
    assert f"{app}/server.js" in res.stderr and "--force" in res.stderr
    assert (app / "server.js").read_text() == "changed since the backup\n"
    drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--force",
        check=True,
    )
    assert (app / "server.js").read_text() == "console.log('hi')\n"


def test_env_bundle_facts_hold_key_names_not_values(tmp_path: Path, keys: Keys) -> None:
    secret_values = ["sk-live-TOPSECRET-4242", "postgres://u:pw-9f8e7d@db/x"]
    for i, app in enumerate(["voice-pipeline", "db-proxy"]):
        d = tmp_path / "root" / app
        d.mkdir(parents=True)
        (d / ".env").write_text(
            f"API_KEY={secret_values[0]}\nDATABASE_URL={secret_values[1]}\nN={i}\n"
        )
        (d / ".env").chmod(0o600)
    policy_path = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "env", "name": "env-files", "paths": [f"{tmp_path}/root/*/.env"]}],
    )
    res = drkit("backup", "--policy", str(policy_path), "--json", check=True)
    policy = load_policy(policy_path)
    repo = open_repository(policy)
    manifest = select_snapshot(repo, "vultr")
    facts = read_facts(repo, manifest, load_identities(keys.identity_file))["env-files"]
    files = {f["path"]: f for f in facts["env_files"]}
    assert set(files) == {f"{tmp_path}/root/voice-pipeline/.env", f"{tmp_path}/root/db-proxy/.env"}
    assert all(f["keys"] == ["API_KEY", "DATABASE_URL", "N"] for f in files.values())
    assert all(f["mode"] == "0600" for f in files.values())
    blob = json.dumps(facts) + res.output + manifest.to_json().decode()
    for value in secret_values:
        assert value not in blob


def test_env_pattern_matching_nothing_fails_closed(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".env").write_text("A=1\n")
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "env", "paths": [f"{tmp_path}/*/.env", f"{tmp_path}/missing/.env"]}],
    )
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 1
    assert "host vultr: source env" in res.stderr
    assert f"no file matches {tmp_path}/missing/.env" in res.stderr
    assert not list((tmp_path / "repo").rglob("manifest.json"))


def test_a_virtualenv_link_out_of_the_tree_needs_symlinks_to(tmp_path: Path, keys: Keys) -> None:
    """A venv's bin/python points at the system's python, outside the source's paths: refused
    by default (#16: a restore writes only where the policy says), restored as a link when
    the policy lists /usr/bin in symlinks_to."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    dest = tmp_path / "restored"

    def policy(**extra: object) -> Path:
        return write_policy(
            tmp_path / "box.toml",
            "box",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [{"kind": "files", "name": "venv", "paths": [str(venv)], **extra}],
        )

    drkit("backup", "--policy", str(policy()), check=True)
    args = ["restore", "--dest", str(dest), "--yes", "--identity", str(keys.identity_file)]
    refused = drkit(*args, "--policy", str(policy()))
    assert refused.returncode == 1, refused.output
    assert (
        "symlink to '/usr/bin/python3' leads outside the source's policy paths (list its "
        "directory in symlinks_to" in refused.stderr
    ), refused.stderr
    assert not (dest / str(venv).lstrip("/") / "bin" / "python").is_symlink()

    res = drkit(*args, "--policy", str(policy(symlinks_to=["/usr/bin"])))
    assert res.returncode == 0, res.output
    assert os.readlink(dest / str(venv).lstrip("/") / "bin" / "python") == "/usr/bin/python3"
