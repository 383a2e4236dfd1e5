"""The backup action with a data source and a provider snapshot, on each provider's fake.

In process, so the run's result and both manifests are at hand: the data
snapshot first, then the provider snapshot's own, whose manifest names the
provider snapshot (id, name, size, creation time) and nothing secret.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drkit.actions.artifact_read import read_facts
from drkit.actions.backup import backup
from drkit.actions.repository_access import open_repository
from drkit.errors import DrkitError
from drkit.locks import LockLost
from drkit.pipeline.age import load_identities
from drkit.policy.models import Policy
from tests.conftest import Keys
from tests.helpers import local_signer
from tests.providers.conftest import RESOURCE, TOKEN_ENV, api_base
from tests.providers.fake_http import FakeApi
from tests.providers.fake_vultr import FakeVultr

HOST = "web"
# Each fake finishes a snapshot at its first poll, and the size it then reports (GB).
QUICK = {"digitalocean": "action_polls", "vultr": "snapshot_polls", "hetzner": "action_polls"}
SIZE = {"digitalocean": 12.34, "vultr": 25.0, "hetzner": 2.5}


def run_policy(tmp_path: Path, keys: Keys, kind: str, api: FakeApi) -> Policy:
    machine = {
        "kind": "snapshot",
        "name": "machine",
        "provider": kind,
        "resource_id": RESOURCE[kind],
        "token": f"env:{TOKEN_ENV}",
        "endpoint": api_base(api, kind),
        "poll_interval": "1s",
        "wait_timeout": "1m",
    }
    app = {"kind": "command", "name": "app", "command": ["echo", "app-data"]}
    return Policy.model_validate(
        {
            "host": HOST,
            "discover": False,  # the host is this shared machine (tests/helpers.py write_policy)
            "repository": {"url": (tmp_path / "repo").as_uri()},
            "encryption": {"recipients": [keys.recipient], "signers": [local_signer()]},
            "source": [app, machine],
        }
    )


def test_data_then_the_provider_snapshots_own_snapshot(
    kind: str, any_api: FakeApi, tmp_path: Path, keys: Keys, token: str
) -> None:
    setattr(any_api, QUICK[kind], 0)
    policy = run_policy(tmp_path, keys, kind, any_api)
    repo = open_repository(policy, signing=True)
    logged: list[str] = []

    result = backup(policy, repo, log=logged.append)

    assert not result.partial and result.failed_sources == ()
    assert result.sources == ("app", "machine")
    data, later = result.manifests
    # The data snapshot says nothing of the machine (dedup's sealed chunk-id key only).
    assert [s.name for s in data.sources] == ["app"] and set(data.extra) <= {"chunk_id_key"}
    assert [(s.name, s.kind, s.artifacts) for s in later.sources] == [("machine", "snapshot", [])]
    assert data.started == later.started and data.snapshot[:19] == later.snapshot[:19]
    listed = later.extra["provider_snapshots"]["machine"]
    name = f"drkit:host={HOST}:source=machine:{data.snapshot[:15]}Z"
    assert {k: listed[k] for k in ("provider", "name", "size_gb", "status")} == {
        "provider": kind,
        "name": name,
        "size_gb": SIZE[kind],
        "status": "complete",
    }
    assert listed["id"] and listed["created"]
    # What the run returned is what the repository holds; no machine id, no token in it.
    for m in result.manifests:
        path = tmp_path / "repo" / HOST / "snapshots" / m.snapshot / "manifest.json"
        stored = json.loads(path.read_text())
        assert stored.pop("signature")["key"] == local_signer()  # signed by this machine
        assert stored == json.loads(m.to_json())
        assert "resource_id" not in path.read_text() and token not in path.read_text()
    assert set(later.extra) == {"provider_snapshots"}
    assert set(listed) == {"provider", "id", "name", "size_gb", "created", "status"}
    facts = read_facts(repo, later, load_identities(keys.identity_file))
    assert facts["machine"] == {"kind": "snapshot", "resource_id": RESOURCE[kind], **listed}
    assert token not in "\n".join(logged)


class LoseLockAtSecondCommit:
    """A host lock taken over by another run after the data was committed."""

    def __init__(self) -> None:
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.checks > 1:
            raise LockLost(f"host {HOST}: another run took over the lock")


def test_a_failed_commit_of_the_provider_snapshot_keeps_the_data(
    vultr_api: FakeVultr, tmp_path: Path, keys: Keys
) -> None:
    vultr_api.snapshot_polls = 0
    policy = run_policy(tmp_path, keys, "vultr", vultr_api)
    repo = open_repository(policy, signing=True)
    lock = LoseLockAtSecondCommit()

    result = backup(policy, repo, lock=lock)

    assert lock.checks == 2
    assert result.partial and result.failed == (f"host {HOST}: another run took over the lock",)
    assert result.failed_sources == ("machine",) and result.sources == ("app",)
    assert result.provider_manifest is None
    # Only the data snapshot is left: the provider snapshot's objects were removed.
    dirs = sorted(p.name for p in (tmp_path / "repo" / HOST / "snapshots").iterdir())
    assert dirs == [result.manifest.snapshot]


def test_nothing_committed_when_a_provider_only_run_fails(
    vultr_api: FakeVultr, tmp_path: Path, keys: Keys
) -> None:
    vultr_api.snapshot_result = "failed"
    vultr_api.snapshot_polls = 0
    policy = run_policy(tmp_path, keys, "vultr", vultr_api)
    repo = open_repository(policy, signing=True)
    with pytest.raises(DrkitError, match=r"host web: nothing to commit: .*status failed") as err:
        backup(policy, repo, sources=["machine"])
    assert type(err.value) is DrkitError
    assert not list((tmp_path / "repo" / HOST).glob("snapshots/*/manifest.json"))
