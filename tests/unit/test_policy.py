"""Policy validation: every problem at once, with file and key path; secrets by reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drkit.errors import PolicyError
from drkit.policy.loader import load_policies, load_policy
from tests.conftest import Keys
from tests.helpers import drkit

GOOD = """
host = "vultr"
rpo = "26h"
schedule = "17 3 * * *"
[repository]
url = "s3://backups/drkit"
endpoint = "http://127.0.0.1:9000"
access_key_id = "env:S3_KEY"
secret_access_key = "file:/etc/drkit/s3-secret"
[encryption]
recipients = ["{recipient}"]
signers = ["ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]
[[source]]
kind = "postgres"
database = "callmeback"
password = "env:PGPASSWORD"
[[source]]
kind = "env"
paths = ["/root/*/.env"]
"""


def test_good_policy_loads(tmp_path: Path, keys: Keys) -> None:
    p = tmp_path / "vultr.toml"
    p.write_text(GOOD.format(recipient=keys.recipient))
    policy = load_policy(p)
    assert policy.host == "vultr"
    assert [s.kind for s in policy.source] == ["postgres", "env"]


def test_three_mistakes_reported_at_once_with_paths(tmp_path: Path, keys: Keys) -> None:
    """Acceptance: three mistakes of three kinds (a missing key, a bad value, a literal
    secret) -> exactly those three problems, each with file and key path, exit 2."""
    text = GOOD.format(recipient=keys.recipient)
    text = text.replace('database = "callmeback"\n', "")  # 1: missing field
    text = text.replace('rpo = "26h"', 'rpo = "soon"')  # 2: bad duration
    text = text.replace('password = "env:PGPASSWORD"', 'password = "hunter2"')  # 3: literal secret
    p = tmp_path / "vultr.toml"
    p.write_text(text)
    res = drkit("policy", "validate", str(p))
    assert res.returncode == 2
    assert "Traceback" not in res.output
    problems = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(problems) == 3, res.stderr
    assert f"{p}: source[0].database: field required" in res.stderr
    assert f"{p}: rpo: not a duration: 'soon'" in res.stderr
    assert f"{p}: source[0].password: a literal secret is refused" in res.stderr
    assert "hunter2" not in res.output
    as_json = drkit("policy", "validate", "--json", str(p))
    assert as_json.returncode == 2
    reported = json.loads(as_json.stdout)
    assert reported["ok"] is False and len(reported["problems"]) == 3
    assert "hunter2" not in as_json.output


def test_value_checks_are_reported_with_schema_errors(tmp_path: Path, keys: Keys) -> None:
    """Bad durations, cron expressions, paths and recipients are not held back until
    the rest of the file parses: one run shows them beside a missing key."""
    p = tmp_path / "vultr.toml"
    p.write_text(
        GOOD.format(recipient="age1notakey")
        .replace('database = "callmeback"\n', "")
        .replace('schedule = "17 3 * * *"', 'schedule = "every day"')
        .replace('paths = ["/root/*/.env"]', 'paths = ["relative/.env"]')
        .replace('kind = "env"', 'kind = "env"\ntimeout = "0s"')
    )
    res = drkit("policy", "validate", str(p))
    assert res.returncode == 2
    assert f"{p}: source[0].database: field required" in res.stderr
    assert f"{p}: schedule: not a valid cron expression" in res.stderr
    assert f"{p}: source[1].paths[0]: must be an absolute path" in res.stderr
    assert f"{p}: source[1].timeout: must be longer than 0s" in res.stderr
    assert f"{p}: encryption.recipients[0]: invalid recipient" in res.stderr


def test_lock_ttl_over_the_lock_cap_is_a_policy_error(tmp_path: Path, keys: Keys) -> None:
    """Refused with the policy's other errors, not only when a lock is taken."""
    p = tmp_path / "vultr.toml"
    p.write_text(GOOD.format(recipient=keys.recipient).replace('rpo = "26h"', 'lock_ttl = "8d"'))
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    assert f"{p}: lock_ttl: must be longer than 0s and at most 7d" in str(err.value)


def test_cross_field_rules_run_once_the_schema_passes(tmp_path: Path, keys: Keys) -> None:
    p = tmp_path / "vultr.toml"
    p.write_text(
        GOOD.format(recipient=keys.recipient)
        .replace('secret_access_key = "file:/etc/drkit/s3-secret"\n', "")
        .replace('kind = "env"', 'kind = "env"\nname = "postgres"')
    )
    res = drkit("policy", "validate", str(p))
    assert res.returncode == 2
    assert f"{p}: source[1].name: 'postgres' is already used by source[0]" in res.stderr
    assert f"{p}: repository: give both access_key_id and secret_access_key" in res.stderr


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ('secret_access_key = "file:/etc/drkit/s3-secret"', "repository.secret_access_key"),
        ('access_key_id = "env:S3_KEY"', "repository.access_key_id"),
        ('password = "env:PGPASSWORD"', "source[0].password"),
    ],
)
def test_literal_secret_refused_in_every_secret_field(
    tmp_path: Path, keys: Keys, line: str, path: str
) -> None:
    literal = "AKIAPLAINTEXTVALUE123"
    name = line.split(" = ")[0]
    p = tmp_path / "vultr.toml"
    p.write_text(GOOD.format(recipient=keys.recipient).replace(line, f'{name} = "{literal}"'))
    res = drkit("policy", "validate", str(p))
    assert res.returncode == 2
    assert f"{p}: {path}: a literal secret is refused" in res.stderr
    assert literal not in res.output


def test_errors_across_files_and_duplicate_hosts(tmp_path: Path, keys: Keys) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    c = tmp_path / "c.toml"
    a.write_text(GOOD.format(recipient=keys.recipient))
    b.write_text(GOOD.format(recipient=keys.recipient))
    c.write_text("host = 'x'\n[[source]]\nkind = 'nope'\n")
    with pytest.raises(PolicyError) as err:
        load_policies([a, b, c])
    problems = err.value.problems
    assert any(p.startswith(f"{b}: host: 'vultr' is also defined in {a}") for p in problems)
    assert any(p.startswith(f"{c}: repository: field required") for p in problems)
    assert any(p.startswith(f"{c}: source[0]") for p in problems)


def test_invalid_toml_and_bad_recipient(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("host = \n")
    res = drkit("policy", "validate", str(p))
    assert res.returncode == 2 and f"{p}: invalid TOML" in res.stderr
    p.write_text(GOOD.format(recipient="age1notakey"))
    res = drkit("policy", "validate", str(p))
    assert res.returncode == 2 and f"{p}: encryption.recipients[0]: invalid recipient" in res.stderr


def test_ssh_recipient_accepted(tmp_path: Path) -> None:
    import subprocess

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    pub = (tmp_path / "k.pub").read_text().strip()
    p = tmp_path / "vultr.toml"
    p.write_text(GOOD.format(recipient=pub))
    assert load_policy(p).encryption.recipients == [pub]
