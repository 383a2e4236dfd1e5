"""Provider snapshots through the real CLI: a `snapshot` source beside a data source.

The DigitalOcean API is the fake in tests/providers (a local HTTP server that
speaks the documented API); the client under test is the real pydo code,
pointed at it through the policy's ``endpoint``.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.actions.common import open_repository, read_facts
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy
from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.providers.fake_digitalocean import FakeDigitalOcean
from tests.providers.fake_http import serve

HOST = "e2i"
DROPLET = 544907207
TOKEN_ENV = "DRKIT_TEST_DO_TOKEN"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "dop_v1_" + secrets.token_hex(24)
    monkeypatch.setenv(TOKEN_ENV, value)
    return value


@pytest.fixture
def do_api(token: str) -> Iterator[FakeDigitalOcean]:
    api = FakeDigitalOcean(token)
    api.add_droplet(DROPLET)
    api.action_polls = 0  # the first poll finds the snapshot done: no waiting in tests
    with serve(api):
        yield api


def policy_file(
    tmp_path: Path, keys: Keys, api: FakeDigitalOcean, *, retention: str = "", extra: str = ""
) -> Path:
    out = tmp_path / "restored.txt"
    path = write_policy(
        tmp_path / f"{HOST}.toml",
        HOST,
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {"kind": "command", "name": "app", "command": ["echo", "app-data"],
             "restore_command": ["sh", "-c", f"cat > {out}"]},
            {"kind": "snapshot", "name": "droplet", "provider": "digitalocean",
             "resource_id": str(DROPLET), "token": f"env:{TOKEN_ENV}", "endpoint": api.url,
             "poll_interval": "1s", "wait_timeout": "1m", "region": "nyc3",
             "size": "s-2vcpu-4gb"},
        ],
        extra=extra,
    )  # fmt: skip
    if retention:
        path.write_text(path.read_text() + f"retention = {retention}\n")
    return path


def facts_of(policy: Path, keys: Keys, snapshot: str) -> dict:
    loaded = load_policy(policy)
    repo = open_repository(loaded.repository)
    return read_facts(repo, repo.manifest(HOST, snapshot), load_identities(keys.identity_file))


def manifest_of(tmp_path: Path, snapshot: str) -> dict:
    path = tmp_path / "repo" / HOST / "snapshots" / snapshot / "manifest.json"
    return json.loads(path.read_text())


def test_backup_commits_data_and_records_the_provider_snapshot(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean, token: str
) -> None:
    policy = policy_file(tmp_path, keys, do_api)
    res = drkit("backup", "--policy", str(policy), "--json")
    assert res.returncode == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "success" and result["sources"] == ["app", "droplet"]
    snapshot = result["snapshot"]

    # The API saw exactly one snapshot action for this droplet, authenticated.
    (post,) = do_api.calls("POST", f"/v2/droplets/{DROPLET}/actions")
    assert post.body["type"] == "snapshot"
    assert post.body["name"] == f"drkit:host={HOST}:source=droplet:{snapshot[:16]}"
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in do_api.calls())
    assert token not in res.output

    manifest = manifest_of(tmp_path, snapshot)
    kinds = {s["name"]: (s["kind"], len(s["artifacts"])) for s in manifest["sources"]}
    assert kinds == {"app": ("command", 1), "droplet": ("snapshot", 0)}
    assert str(DROPLET) not in json.dumps(manifest)  # provider ids only in encrypted facts
    facts = facts_of(policy, keys, snapshot)["droplet"]
    (made,) = do_api.snapshots.values()
    assert facts["provider"] == "digitalocean" and facts["resource_id"] == str(DROPLET)
    assert facts["id"] == str(made["id"]) and facts["name"] == post.body["name"]
    assert facts["size_gb"] == 12.34 and facts["status"] == "complete" and facts["created"]

    # A data restore skips the provider snapshot step and restores the data.
    plan = drkit("restore", "--policy", str(policy), "--plan", "--identity",
                 str(keys.identity_file))  # fmt: skip
    assert plan.returncode == 0, plan.output
    assert "droplet (snapshot)" in plan.stdout and "--from-provider-snapshot" in plan.stdout
    done = drkit("restore", "--policy", str(policy), "--yes", "--identity",
                 str(keys.identity_file))  # fmt: skip
    assert done.returncode == 0, done.output
    assert (tmp_path / "restored.txt").read_text() == "app-data\n"


def test_a_failed_provider_snapshot_still_commits_the_data_and_exits_3(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean, token: str
) -> None:
    do_api.action_result = "errored"
    policy = policy_file(tmp_path, keys, do_api, extra='schedule = "0 3 * * *"')
    t1 = "2030-01-01T03:05:00Z"
    res = drkit("backup", "--policy", str(policy), "--due", "--json", env={"DRKIT_NOW": t1})
    assert res.returncode == 3, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "partial" and result["sources"] == ["app"]
    prefix = f"error: host {HOST}: source droplet: digitalocean droplet {DROPLET}: snapshot drkit:"
    assert prefix in res.stderr and "errored" in res.stderr
    assert token not in res.output

    snapshot = result["snapshot"]
    manifest = manifest_of(tmp_path, snapshot)
    assert [s["name"] for s in manifest["sources"]] == ["app"]
    assert manifest["extra"] == {"failed_sources": ["droplet"]}
    facts = facts_of(policy, keys, snapshot)
    assert facts["app"]["kind"] == "command"
    assert "errored" in facts["droplet"]["error"]

    # The data source is done for this slot; the failed snapshot is retried at the next
    # tick, alone, and once it succeeds nothing is due until the next slot.
    do_api.action_result = "completed"
    t2 = "2030-01-01T03:15:00Z"
    retry = drkit("backup", "--policy", str(policy), "--due", "--json", env={"DRKIT_NOW": t2})
    assert retry.returncode == 0, retry.output
    (again,) = json.loads(retry.stdout)["results"]
    assert again["status"] == "success" and again["sources"] == ["droplet"]
    t3 = "2030-01-01T03:25:00Z"
    idle = drkit("backup", "--policy", str(policy), "--due", "--json", env={"DRKIT_NOW": t3})
    assert idle.returncode == 0 and json.loads(idle.stdout)["results"][0]["status"] == "not-due"


def test_provider_snapshots_are_pruned_by_the_source_retention_only_among_drkits(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean
) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    old = [
        do_api.add_snapshot(DROPLET, f"drkit:host={HOST}:source=droplet:2026010{d}T040000Z",
                            base + dt.timedelta(days=d))
        for d in (1, 2, 3)
    ]  # fmt: skip
    by_hand = do_api.add_snapshot(DROPLET, "before-upgrade", base)
    other_host = do_api.add_snapshot(
        DROPLET, "drkit:host=vultr:source=droplet:20260101T040000Z", base
    )
    policy = policy_file(tmp_path, keys, do_api, retention="{ keep_last = 2 }")
    # The source's retention sits inside its [[source]] table (the last one written).
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 0, res.output
    left = set(do_api.snapshots)
    new = left - {*old, by_hand, other_host}
    assert len(new) == 1
    # keep_last = 2: the new one and the newest old one; the others are not drkit's.
    assert left == {*new, old[2], by_hand, other_host}
    deleted = {int(r.path.rsplit("/", 1)[1]) for r in do_api.calls("DELETE")}
    assert deleted == {old[0], old[1]}
    assert f"deleting snapshot {old[0]}" in res.stderr


def test_restore_from_provider_snapshot_plans_then_creates_a_machine(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean
) -> None:
    policy = policy_file(tmp_path, keys, do_api)
    drkit("backup", "--policy", str(policy), check=True)
    (made,) = do_api.snapshots

    plan = drkit("restore", "--policy", str(policy), "--from-provider-snapshot")
    assert plan.returncode == 0, plan.output
    assert f"use snapshot {made} drkit:host={HOST}:source=droplet:" in plan.stdout
    assert "region nyc3, size s-2vcpu-4gb" in plan.stdout
    assert "Nothing was changed" in plan.stdout
    assert do_api.calls("POST", "/v2/droplets") == []

    res = drkit("restore", "--policy", str(policy), "--from-provider-snapshot", str(made),
                "--size", "s-1vcpu-1gb", "--yes", "--json")  # fmt: skip
    assert res.returncode == 0, res.output
    data = json.loads(res.stdout)
    (create,) = do_api.calls("POST", "/v2/droplets")
    assert create.body["image"] == made and create.body["region"] == "nyc3"
    assert create.body["size"] == "s-1vcpu-1gb"
    assert data["instance"]["address"] == "192.0.2.55"
    assert do_api.droplets[DROPLET]["status"] == "active"  # the original is untouched

    wrong = drkit("restore", "--policy", str(policy), "--from-provider-snapshot", "--at", "1h")
    assert wrong.returncode == 2 and "excludes --at" in wrong.stderr
