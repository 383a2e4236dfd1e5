"""``uncovered_data`` (drkit/actions/backup_coverage.py): the discovery a backup runs over
its own connection, on this machine's real engine and a real sshd.

- a named volume no source covers is named (over SSH as root, the backup's kind of
  runner, and through the local runner), and a ``docker_volume`` source for it
  clears it, while the rest of what this machine runs is judged the same both times;
- a discovery that hangs (a ``docker`` that never answers, as a hung dockerd does)
  is stopped at the time limit, its processes killed, and is a note, not an error;
- a host that cannot be reached is a note, not an error;
- a policy with ``discover = false`` is not checked: nothing runs on the host.

The volume has a unique name and is removed by name.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.actions.backup_coverage import UncoveredData, uncovered_data
from drkit.discover.coverage import Finding
from drkit.policy.loader import load_policy
from drkit.policy.models import Policy
from drkit.remote.local import LocalRunner
from drkit.remote.ssh import SshRunner
from tests.conftest import Keys
from tests.drills.test_drill import engine
from tests.helpers import drkit, toml_value, write_policy
from tests.servers.ports import free_port
from tests.servers.sshd import SshHost, sshd_server

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
ENV = {"kind": "env", "name": "env", "paths": ["/nonexistent-drkit/.env"]}


@pytest.fixture
def volume(engine: None) -> Iterator[str]:
    from drkit.drills.engine import docker

    name = f"drkit-coverage-{secrets.token_hex(4)}"
    docker("volume", "create", name, timeout=60)
    try:
        yield name
    finally:
        docker("volume", "rm", "-f", name, check=False, timeout=120)


def policy(tmp_path: Path, sources: list[dict[str, Any]], extra: str = "") -> Policy:
    path = tmp_path / f"p-{secrets.token_hex(3)}.toml"
    repo = {"url": f"file://{tmp_path}/repo"}
    return load_policy(write_policy(path, "here", repo, [RECIPIENT], sources, extra, discover=True))


def ssh_policy(tmp_path: Path, server: SshHost, sources: list[dict[str, Any]]) -> Policy:
    known = server.write_known_hosts(tmp_path / "known_hosts")
    table = server.connection(known_hosts=str(known))
    lines = ["[connection]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    return policy(tmp_path, sources, "\n".join(lines))


def names(result: UncoveredData) -> set[tuple[str, str]]:
    return {(f.kind, f.name) for f in result.findings}


def test_an_uncovered_volume_is_named_over_ssh_and_a_source_for_it_clears_it(
    volume: str, tmp_path: Path
) -> None:
    with sshd_server() as server:
        runner = SshRunner("here", ssh_policy(tmp_path, server, [ENV]).connection)
        try:
            t0 = time.monotonic()
            bare = uncovered_data(ssh_policy(tmp_path, server, [ENV]), runner)
            seconds = time.monotonic() - t0
            covering = [ENV, {"kind": "docker_volume", "name": "vol", "volume": volume}]
            covered = uncovered_data(ssh_policy(tmp_path, server, covering), runner)
        finally:
            runner.close()
    print(f"\ndiscovery over ssh: {seconds:.1f} s, {bare.count} uncovered")
    assert bare.note is None and covered.note is None, (bare.note, covered.note)
    assert ("volume", volume) in names(bare), bare.lines()
    [line, *_] = bare.lines()
    assert f"volume {volume}" in line and "drkit discover --host here --suggest" in line
    assert ("volume", volume) not in names(covered)
    assert bare.count == len(bare.findings) and all(f.uncovered for f in bare.findings)


def test_the_local_runner_sees_the_same_volume(volume: str, tmp_path: Path) -> None:
    found = uncovered_data(policy(tmp_path, [ENV]), LocalRunner("here"))
    assert found.note is None, found.note
    assert ("volume", volume) in names(found)


def test_a_discovery_that_hangs_is_stopped_at_its_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = tmp_path / "bin"
    stub.mkdir()
    pids = tmp_path / "pids"
    # A docker CLI whose daemon never answers: every call waits.
    (stub / "docker").write_text(f'#!/bin/sh\necho $$ >>"{pids}"\nexec sleep 600\n')
    (stub / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    t0 = time.monotonic()
    found = uncovered_data(policy(tmp_path, [ENV]), LocalRunner("here"), limit=3)
    seconds = time.monotonic() - t0
    assert found.count is None and found.findings == ()
    assert found.note is not None and "3 s time limit" in found.note, found.note
    assert found.lines() == [f"host here: coverage not checked: {found.note}"]
    assert seconds < 20, seconds
    [pid] = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the hung docker call was left running"


def test_a_host_that_cannot_be_reached_is_a_note(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    extra = f'[connection]\ntype = "ssh"\naddress = "127.0.0.1"\nport = {port}\nuser = "root"'
    pol = policy(tmp_path, [ENV], extra)
    runner = SshRunner("here", pol.connection)
    try:
        found = uncovered_data(pol, runner)
    finally:
        runner.close()
    assert found.count is None and found.note is not None
    assert found.note.startswith("discovery failed: host here: ") and str(port) in found.note


def test_discover_false_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "bin"
    stub.mkdir()
    ran = tmp_path / "ran"
    (stub / "sh").write_text(f'#!/bin/bash\ntouch "{ran}"\nexec /bin/sh "$@"\n')
    (stub / "sh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    found = uncovered_data(policy(tmp_path, [ENV], "discover = false"), LocalRunner("here"))
    assert (found.count, found.note) == (None, "discover = false in the policy")
    assert not ran.exists()
    on = uncovered_data(policy(tmp_path, [ENV]), LocalRunner("here"))  # the stub does run
    assert on.note is None and ran.exists(), on.note


def test_the_summary_names_a_few_and_counts_the_rest() -> None:
    findings = tuple(Finding("volume", f"v{i}", "app", "") for i in range(11))
    found = UncoveredData("h", findings, errors=("docker: permission denied",))
    first, second = found.lines()
    assert first.startswith("host h: 11 data-bearing thing(s) no source backs up: volume v0 (app)")
    assert "volume v7 (app) and 3 more;" in first and "v8" not in first
    assert second == (
        "host h: coverage checked without: docker: permission denied (unreadable; see "
        "`drkit discover`)"
    )
    assert UncoveredData("h").lines() == [] and UncoveredData("h").count == 0


def test_a_backup_warns_once_records_the_count_and_the_metric_shows_it(
    volume: str, tmp_path: Path, keys: Keys
) -> None:
    """The wiring (#18 item 1): ``drkit backup`` through the real CLI runs discovery once,
    says what is uncovered in its summary, seals the count into the manifest and the
    Prometheus textfile carries ``drkit_discover_uncovered{host}``; ``discover = false``
    runs none of it."""
    env_file = tmp_path / "app.env"
    env_file.write_text("A=1\n")
    prom = tmp_path / "drkit.prom"
    source = {"kind": "env", "name": "env", "paths": [str(env_file)]}
    notify = f"notify = {{ prometheus_textfile = {toml_value(str(prom))} }}"
    repo = {"url": (tmp_path / "repo").as_uri()}
    on = write_policy(
        tmp_path / "on.toml", "here", repo, [keys.recipient], [source], notify, discover=True
    )
    res = drkit("backup", "--policy", str(on), "--json")
    assert res.returncode == 0, res.output
    [result] = json.loads(res.stdout)["results"]
    [said] = [w for w in result["warnings"] if "data-bearing thing(s)" in w]
    assert f"volume {volume}" in said or " more" in said, said
    assert said.count("data-bearing") == 1 and not said.startswith("host here:")
    [manifest] = (tmp_path / "repo" / "here" / "snapshots").glob("*/manifest.json")
    count = json.loads(manifest.read_text())["extra"]["discover_uncovered"]
    assert isinstance(count, int) and count >= 1
    assert f'drkit_discover_uncovered{{host="here"}} {count}' in prom.read_text()

    off = write_policy(tmp_path / "off.toml", "here", repo, [keys.recipient], [source], notify)
    res = drkit("backup", "--policy", str(off), "--json")
    assert res.returncode == 0, res.output
    [result] = json.loads(res.stdout)["results"]
    assert not [w for w in result.get("warnings", []) if "data-bearing" in w], result
    newest = max((tmp_path / "repo" / "here" / "snapshots").glob("*/manifest.json"))
    assert "discover_uncovered" not in json.loads(newest.read_text())["extra"]
    assert "drkit_discover_uncovered{" not in prom.read_text()  # no count from the newest
