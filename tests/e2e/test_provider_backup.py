"""Provider snapshots through the real CLI: a `snapshot` source beside a data source.

The provider APIs are the fakes in tests/providers (local HTTP servers that
speak each documented API, started here on free loopback ports); the clients
under test are the real ones (pydo, hcloud, drkit's Vultr client), pointed at
the fakes through the policy's ``endpoint``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.actions.artifact_read import read_facts
from drkit.actions.repository_access import open_repository
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy
from drkit.repository.layout import Repository
from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.providers.fake_digitalocean import FakeDigitalOcean
from tests.providers.fake_hetzner import FakeHetzner
from tests.providers.fake_http import FakeApi, serve
from tests.providers.fake_vultr import FakeVultr

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


def snapshot_source(provider: str, resource_id: str, endpoint: str, **more: str) -> dict[str, str]:
    return {
        "kind": "snapshot",
        "name": "droplet",
        "provider": provider,
        "resource_id": resource_id,
        "token": f"env:{TOKEN_ENV}",
        "endpoint": endpoint,
        "poll_interval": "1s",
        "wait_timeout": "1m",
        "region": "nyc3",
        "size": "s-2vcpu-4gb",
        **more,
    }


def policy_file(
    tmp_path: Path,
    keys: Keys,
    api: FakeDigitalOcean,
    *,
    retention: str = "",
    extra: str = "",
    **source: str,
) -> Path:
    out = tmp_path / "restored.txt"
    path = write_policy(
        tmp_path / f"{HOST}.toml",
        HOST,
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {
                "kind": "command",
                "name": "app",
                "command": ["echo", "app-data"],
                "restore_command": ["sh", "-c", f"cat > {out}"],
            },
            snapshot_source("digitalocean", str(DROPLET), api.url, **source),
        ],
        extra=extra,
    )
    if retention:
        # The source's retention sits inside its [[source]] table (the last one written).
        path.write_text(path.read_text() + f"retention = {retention}\n")
    return path


def facts_of(policy: Path, keys: Keys, snapshot: str) -> dict[str, Any]:
    loaded = load_policy(policy)
    opened = open_repository(loaded)
    # The tests take snapshots "in 2030" ($DRKIT_NOW): read them from then.
    later = dataclasses.replace(opened.trust, clock=lambda: dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
    repo = Repository(opened.store, later)
    return read_facts(repo, repo.manifest(HOST, snapshot), load_identities(keys.identity_file))


def manifest_path(tmp_path: Path, snapshot: str) -> Path:
    return tmp_path / "repo" / HOST / "snapshots" / snapshot / "manifest.json"


def manifest_of(tmp_path: Path, snapshot: str) -> dict[str, Any]:
    return dict(json.loads(manifest_path(tmp_path, snapshot).read_text()))


def committed(tmp_path: Path) -> list[str]:
    return sorted(
        p.parent.name for p in (tmp_path / "repo" / HOST).glob("snapshots/*/manifest.json")
    )


def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_data_commits_while_the_provider_snapshot_is_pending_then_it_is_recorded(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean, token: str
) -> None:
    do_api.action_result = "in-progress"  # the droplet snapshot runs until released below
    policy = policy_file(tmp_path, keys, do_api)
    argv = [sys.executable, "-m", "drkit", "backup", "--policy", str(policy), "--json"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        # The data snapshot is committed while the provider still answers in-progress.
        wait_for(lambda: committed(tmp_path), "the data snapshot's manifest")
        (data_snapshot,) = committed(tmp_path)
        assert proc.poll() is None  # the run goes on: it waits for the provider snapshot
        wait_for(lambda: do_api.actions, "the snapshot action")  # (pydo may start late)
        (action,) = do_api.actions.values()
        assert action["status"] == "in-progress" and do_api.snapshots == {}
        data_manifest = manifest_of(tmp_path, data_snapshot)
        assert [s["name"] for s in data_manifest["sources"]] == ["app"]
        # Nothing about the provider snapshot yet (dedup's sealed chunk-id key only).
        assert set(data_manifest["extra"]) <= {"chunk_id_key"}
        do_api.action_result = "completed"  # the provider finishes: the next poll sees it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    assert token not in stdout + stderr
    (result,) = json.loads(stdout)["results"]
    assert result["status"] == "success" and result["sources"] == ["app", "droplet"]
    assert result["snapshot"] == data_snapshot
    (later,) = set(committed(tmp_path)) - {data_snapshot}
    assert result["snapshots"] == [data_snapshot, later]

    # The API saw exactly one snapshot action for this droplet, authenticated.
    (post,) = do_api.calls("POST", f"/v2/droplets/{DROPLET}/actions")
    name = f"drkit:host={HOST}:source=droplet:{data_snapshot[:15]}Z"
    assert post.body == {"type": "snapshot", "name": name}
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in do_api.calls())

    # The provider snapshot's own snapshot: no artifacts, its facts in the manifest.
    manifest = manifest_of(tmp_path, later)
    kinds = {s["name"]: (s["kind"], len(s["artifacts"])) for s in manifest["sources"]}
    assert kinds == {"droplet": ("snapshot", 0)}
    (made,) = do_api.snapshots.values()
    assert manifest["extra"] == {
        "provider_snapshots": {
            "droplet": {
                "provider": "digitalocean",
                "id": str(made["id"]),
                "name": post.body["name"],
                "size_gb": 12.34,
                "created": dt.datetime.fromisoformat(made["created_at"]).isoformat(),
                "status": "complete",
            }
        }
    }
    assert str(DROPLET) not in json.dumps(manifest)  # the machine's id only in the facts

    # The listing names the provider snapshot under its snapshot, never the data one's.
    listed = drkit("snapshots", "--policy", str(policy), "--json")
    assert listed.returncode == 0, listed.output
    rows = {r["snapshot"]: r for r in json.loads(listed.stdout)["snapshots"]}
    assert rows[data_snapshot]["provider_snapshots"] == {}
    assert rows[later]["sources"] == ["droplet"]
    assert rows[later]["provider_snapshots"] == manifest["extra"]["provider_snapshots"]
    shown = drkit("snapshots", "--policy", str(policy))
    assert shown.returncode == 0, shown.output
    line = f"  droplet: digitalocean snapshot {made['id']} ({post.body['name']})"
    assert shown.stdout.splitlines().count(line) == 1, shown.stdout
    for res in (listed, shown):
        assert token not in res.output and str(DROPLET) not in res.output
    facts = facts_of(policy, keys, later)["droplet"]
    assert facts["provider"] == "digitalocean" and facts["resource_id"] == str(DROPLET)
    assert facts["id"] == str(made["id"]) and facts["size_gb"] == 12.34

    # A data restore takes each source from its snapshot, skips the provider snapshot step.
    plan = drkit(
        "restore", "--policy", str(policy), "--plan", "--identity", str(keys.identity_file)
    )
    assert plan.returncode == 0, plan.output
    assert "droplet (snapshot)" in plan.stdout and "drkit restore-machine" in plan.stdout
    done = drkit("restore", "--policy", str(policy), "--yes", "--identity", str(keys.identity_file))
    assert done.returncode == 0, done.output
    assert (tmp_path / "restored.txt").read_text() == "app-data\n"


@pytest.mark.parametrize("failure", ["errored", "timeout"])
def test_a_failed_or_timed_out_provider_snapshot_fails_only_that_source(
    failure: str, tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean, token: str
) -> None:
    do_api.action_result = "errored" if failure == "errored" else "in-progress"
    policy = policy_file(tmp_path, keys, do_api, extra='schedule = "0 3 * * *"', wait_timeout="2s")
    t1 = "2030-01-01T03:05:00Z"
    res = drkit("backup", "--policy", str(policy), "--due", "--json", env={"DRKIT_NOW": t1})
    assert res.returncode == 3, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "partial" and result["sources"] == ["app"]
    assert result["failed_sources"] == ["droplet"]
    (action,) = do_api.actions
    prefix = (
        f"error: host {HOST}: source droplet: digitalocean droplet {DROPLET}: "
        f"snapshot drkit:host={HOST}:source=droplet:"
    )
    assert prefix in res.stderr
    if failure == "errored":
        assert f"Z: action {action} errored" in res.stderr
    else:
        assert (
            "Z: timed out after 2s (last status: in-progress); the provider may still finish it"
            in res.stderr
        )
    assert token not in res.output

    # The data is committed (one snapshot, without the failed source); nothing else is.
    (snapshot,) = committed(tmp_path)
    assert snapshot == result["snapshot"]
    manifest = manifest_of(tmp_path, snapshot)
    assert [s["name"] for s in manifest["sources"]] == ["app"]
    assert facts_of(policy, keys, snapshot)["app"]["kind"] == "command"

    # The data source is done for this slot; the failed snapshot is retried at the next
    # tick, alone, and once it succeeds nothing is due until the next slot.
    do_api.action_result = "completed"
    t2 = "2030-01-01T03:15:00Z"
    retry = drkit("backup", "--policy", str(policy), "--due", "--json", env={"DRKIT_NOW": t2})
    assert retry.returncode == 0, retry.output
    (again,) = json.loads(retry.stdout)["results"]
    assert again["status"] == "success" and again["sources"] == ["droplet"]
    assert "snapshots" not in again  # one snapshot: the provider snapshot's
    t3 = "2030-01-01T03:25:00Z"
    idle = drkit("backup", "--policy", str(policy), "--due", "--json", env={"DRKIT_NOW": t3})
    assert idle.returncode == 0 and json.loads(idle.stdout)["results"][0]["status"] == "not-due"


def test_provider_snapshots_are_pruned_by_the_source_retention_only_among_drkits(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean
) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    old = [
        do_api.add_snapshot(
            DROPLET,
            f"drkit:host={HOST}:source=droplet:2026010{d}T040000Z",
            base + dt.timedelta(days=d),
        )
        for d in (1, 2, 3)
    ]
    by_hand = do_api.add_snapshot(DROPLET, "before-upgrade", base)
    other_host = do_api.add_snapshot(
        DROPLET, "drkit:host=vultr:source=droplet:20260101T040000Z", base
    )
    policy = policy_file(tmp_path, keys, do_api, retention="{ keep_last = 2 }")
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


def test_data_snapshots_keep_their_places_in_the_host_retention(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean
) -> None:
    """Each run commits a data snapshot and a provider snapshot's one: the host's
    keep_last counts each kind apart, so the data history is not halved."""
    policy = policy_file(tmp_path, keys, do_api)
    policy.write_text(
        policy.read_text().replace("[repository]", "[retention]\nkeep_last = 2\n[repository]")
    )
    runs = []
    for day in (1, 2, 3):
        res = drkit(
            "backup",
            "--policy",
            str(policy),
            "--json",
            env={"DRKIT_NOW": f"2030-01-0{day}T03:00:00Z"},
        )
        assert res.returncode == 0, res.output
        runs.append(json.loads(res.stdout)["results"][0]["snapshots"])
    pruned = drkit(
        "prune", "--policy", str(policy), "--json", env={"DRKIT_NOW": "2030-01-04T03:00:00Z"}
    )
    assert pruned.returncode == 0, pruned.output
    left = committed(tmp_path)
    data = [m for m in left if manifest_of(tmp_path, m)["sources"][0]["name"] == "app"]
    records = [m for m in left if m not in data]
    assert sorted(data) == sorted(run[0] for run in runs[1:])
    assert sorted(records) == sorted(run[1] for run in runs[1:])


# -- restore-machine, each provider ---------------------------------------------------

INSTANCE = {
    "digitalocean": str(DROPLET),
    "vultr": "cb676a46-66fd-4dfb-b839-443f2e6c0b60",
    "hetzner": "42",
}


def provider_fake(kind: str, token: str) -> FakeApi:
    if kind == "digitalocean":
        do = FakeDigitalOcean(token)
        do.add_droplet(DROPLET)
        return do
    if kind == "vultr":
        vultr = FakeVultr(token)
        vultr.add_instance(INSTANCE[kind])
        return vultr
    hetzner = FakeHetzner(token)
    hetzner.add_server(int(INSTANCE[kind]))
    return hetzner


def seed(api: FakeApi, name: str, created: dt.datetime) -> str:
    """A snapshot of the machine, as the provider lists it."""
    if isinstance(api, FakeDigitalOcean):
        return str(api.add_snapshot(DROPLET, name, created, size=24.5))
    if isinstance(api, FakeVultr):
        return api.add_snapshot(name, created)
    assert isinstance(api, FakeHetzner)
    labels = {"drkit/host": HOST, "drkit/source": "droplet"} if name.startswith("drkit:") else {}
    return str(api.add_image(int(INSTANCE["hetzner"]), name, created, labels))


def create_request(kind: str, snapshot_id: str) -> tuple[str, dict[str, Any]]:
    """The exact request each provider's client sends to boot the copy."""
    name = "e2i-restore-20300102-030000"
    if kind == "digitalocean":
        return "/v2/droplets", {
            "name": name,
            "region": "fra1",
            "size": "s-2vcpu-4gb",
            "image": int(snapshot_id),
        }
    if kind == "vultr":
        return "/v2/instances", {
            "region": "fra1",
            "plan": "s-2vcpu-4gb",
            "snapshot_id": snapshot_id,
            "label": name,
        }
    return "/v1/servers", {
        "name": name,
        "server_type": "s-2vcpu-4gb",
        "image": int(snapshot_id),
        "location": "fra1",
        "start_after_create": True,
    }


@pytest.mark.parametrize("kind", ["digitalocean", "vultr", "hetzner"])
def test_restore_from_provider_snapshot_plans_then_creates_a_machine(
    kind: str, tmp_path: Path, keys: Keys, token: str
) -> None:
    with serve(provider_fake(kind, token)) as api:
        base = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        older = seed(api, f"drkit:host={HOST}:source=droplet:20300101T030000Z", base)
        newest = seed(
            api, f"drkit:host={HOST}:source=droplet:20300101T150000Z", base + dt.timedelta(hours=12)
        )
        seed(api, "made-by-hand-later", base + dt.timedelta(hours=20))  # never chosen by default
        endpoint = api.url + ("/v1" if kind == "hetzner" else "")
        policy = write_policy(
            tmp_path / f"{HOST}.toml",
            HOST,
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [snapshot_source(kind, INSTANCE[kind], endpoint)],
        )
        now = {"DRKIT_NOW": "2030-01-02T03:00:00Z"}

        # As a person runs it in an incident: the host's name, its policy in the policy dir.
        by_host = ["--policy-dir", str(policy.parent), "restore-machine", "--host", HOST]
        plan = drkit(*by_host, env=now)
        assert plan.returncode == 0, plan.output
        assert f"use snapshot {newest} drkit:host={HOST}:source=droplet:20300101T150000Z" in (
            plan.stdout
        )
        assert "region nyc3, size s-2vcpu-4gb" in plan.stdout  # from the policy
        assert "Nothing was changed" in plan.stdout
        planned = drkit(*by_host, "--plan", "--yes", env=now)  # --plan wins
        assert planned.returncode == 0 and "Nothing was changed" in planned.stdout, planned.output
        assert api.calls("POST") == []

        res = drkit(*by_host, "--snapshot", older, "--region", "fra1", "--yes", env=now)
        assert res.returncode == 0, res.output
        path, body = create_request(kind, older)
        (create,) = api.calls("POST")
        assert (create.path, create.body) == (path, body)
        assert create.headers["authorization"] == f"Bearer {token}"
        (instance,) = {
            m[1] for r in api.calls("GET") if (m := re.fullmatch(f"{path}/([^/]+)", r.path))
        }
        if kind == "hetzner":
            assert isinstance(api, FakeHetzner)
            address = api.servers[int(instance)]["public_net"]["ipv4"]["ip"]
        else:
            address = {"digitalocean": "192.0.2.55", "vultr": "192.0.2.77"}[kind]
        assert f"use snapshot {older} " in res.stdout and "region fra1" in res.stdout
        assert (
            f"{HOST}: created {kind} machine {instance} (e2i-restore-20300102-030000) "
            f"at {address}, " in res.stdout
        )
        assert api.calls("DELETE") == []  # the original machine and snapshots untouched
        assert token not in res.output + plan.output

    # The flag it replaced says where it went.
    moved = drkit("restore", "--host", HOST, "--from-provider-snapshot", "--yes")
    assert moved.returncode == 2 and "drkit restore-machine --host e2i" in moved.stderr


# -- the token ----------------------------------------------------------------------


def test_the_token_is_in_no_output_manifest_facts_catalog_or_file(
    tmp_path: Path, keys: Keys, do_api: FakeDigitalOcean, token: str
) -> None:
    """A run that succeeds and one whose API error quotes the token back: the token
    reaches the API (header) and nothing else: not the output, not any file under the
    test's directory (repository, catalog, state), not the decrypted facts."""
    policy = policy_file(tmp_path, keys, do_api)
    ok = drkit("backup", "--policy", str(policy), "--json")
    assert ok.returncode == 0, ok.output
    echo = {"id": "forbidden", "message": f"token {token} lacks write scope"}
    do_api.inject((403, {}, echo), method="POST")
    bad = drkit("backup", "--policy", str(policy), "--json")
    assert bad.returncode == 3, bad.output
    assert "forbidden: token *** lacks write scope" in bad.stderr
    listed = drkit("snapshots", "--policy", str(policy), "--json")
    assert listed.returncode == 0, listed.output

    requests = do_api.calls()
    assert requests and all(r.headers["authorization"] == f"Bearer {token}" for r in requests)
    for res in (ok, bad, listed):
        assert token not in res.output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    catalogs = [p for p in files if p.name == "catalog.sqlite"]
    assert catalogs and any(b"token *** lacks write scope" in p.read_bytes() for p in catalogs)
    assert len([p for p in files if p.name == "manifest.json"]) == 3
    for path in files:
        assert token.encode() not in path.read_bytes(), path
    for snapshot in committed(tmp_path):
        assert token not in json.dumps(facts_of(policy, keys, snapshot))
