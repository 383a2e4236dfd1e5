"""`policy validate` reports what `backup` would refuse that this machine can tell
without contacting the host, all at once (issue 23, item 3): the repository URL's
shape, the files the policy names, the keys in them, secret references (an unset
env: variable only warns), and schedules finer than `backup --due` runs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Keys
from tests.helpers import drkit, write_policy

LATIN_1 = "clé\n".encode("latin-1")


def test_everything_backup_would_refuse_is_reported_at_once(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "bad-secret").write_bytes(LATIN_1)
    (tmp_path / "signers.txt").write_text("# ours\ned25519:abc\n")
    policy = write_policy(
        tmp_path / "p.toml",
        "h1",
        {
            "url": "s3://bucket/x",
            "access_key_id": "env:DRKIT_TEST_UNSET_KEY",
            "secret_access_key": f"file:{tmp_path}/bad-secret",
        },
        [keys.recipient],
        [{"kind": "postgres", "database": "db", "password": f"file:{tmp_path}/missing"}],
        extra='schedule = "*/5 * * * *"\n'
        f'[connection]\ntype = "ssh"\naddress = "192.0.2.1"\n'
        f'identity_file = "{tmp_path}/id_missing"\nknown_hosts = "{tmp_path}/kh_missing"\n',
    )
    text = policy.read_text().replace(
        "[encryption]\n",
        f'[encryption]\nrecipients_file = "{tmp_path}/recipients-missing"\n'
        f'signers_file = "{tmp_path}/signers.txt"\n',
    )
    policy.write_text(text)
    res = drkit("policy", "validate", str(policy))
    assert res.returncode == 2 and "Traceback" not in res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    expected = [
        f"encryption.recipients_file: recipients file {tmp_path}/recipients-missing: "
        "No such file or directory",
        f"encryption.signers_file: signers file {tmp_path}/signers.txt, line 2: ",
        f"connection.identity_file: {tmp_path}/id_missing does not exist",
        f"connection.known_hosts: {tmp_path}/kh_missing does not exist",
        f"repository.secret_access_key: secret file:{tmp_path}/bad-secret: not UTF-8 text (line 1)",
        f"source[0].password: secret file:{tmp_path}/missing: cannot read",
    ]
    for want in expected:
        assert any(ln.startswith(f"error: {policy}: {want}") for ln in errors), (want, errors)
    assert len(errors) == len(expected), errors
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert any("env:DRKIT_TEST_UNSET_KEY" in w and "not set" in w for w in warnings), warnings
    assert any("schedule: '*/5 * * * *' comes due every 5 min" in w for w in warnings)
    as_json = drkit("policy", "validate", "--json", str(policy))
    assert as_json.returncode == 2
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and len(report["problems"]) == len(expected)
    assert len(report["warnings"]) == len(warnings)


def test_an_unset_variable_only_warns(tmp_path: Path, keys: Keys) -> None:
    policy = write_policy(
        tmp_path / "p.toml",
        "h1",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["true"]}],
    )
    policy.write_text(policy.read_text() + '[source.env]\nTOKEN = "env:DRKIT_TEST_UNSET_TOKEN"\n')
    res = drkit("policy", "validate", str(policy))
    assert res.returncode == 0, res.output
    assert "1 policies ok: h1" in res.stdout
    assert (
        f"warning: {policy}: source[0].env.TOKEN: env:DRKIT_TEST_UNSET_TOKEN: environment "
        "variable DRKIT_TEST_UNSET_TOKEN is not set" in res.stderr
    )


def test_a_relative_file_url_is_refused_by_validate_and_backup_alike(
    tmp_path: Path, keys: Keys
) -> None:
    policy = write_policy(
        tmp_path / "p.toml",
        "h1",
        {"url": "file://relative/path"},
        [keys.recipient],
        [{"kind": "env", "paths": [f"{tmp_path}/*.env"]}],
    )
    message = f"{policy}: repository.url: file URLs must be file:///absolute/path"
    for argv in (("policy", "validate", str(policy)), ("backup", "--policy", str(policy))):
        res = drkit(*argv)
        assert res.returncode == 2 and message in res.stderr, (argv, res.output)


def test_a_key_file_that_is_not_utf8_is_named_by_backup(tmp_path: Path, keys: Keys) -> None:
    """The file read at backup time gives the same clear error, not a traceback."""
    recipients = tmp_path / "recipients.txt"
    recipients.write_bytes(LATIN_1)
    policy = write_policy(
        tmp_path / "p.toml",
        "h1",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "env", "paths": [f"{tmp_path}/*.env"]}],
    )
    policy.write_text(
        policy.read_text().replace(
            "[encryption]\n", f'[encryption]\nrecipients_file = "{recipients}"\n'
        )
    )
    message = f"recipients file {recipients}: not UTF-8 text (line 1)"
    validate = drkit("policy", "validate", str(policy))
    assert validate.returncode == 2 and message in validate.stderr, validate.output
    backup = drkit("backup", "--policy", str(policy))
    assert backup.returncode != 0 and "Traceback" not in backup.output
    assert message in backup.output, backup.output
