"""``backup --all`` over SSH: three real sshd servers on 127.0.0.1, one of which loses its
connection in the middle of a dump, and a login whose ``sudo`` wants a password.

Expected: the cut host's snapshot is not committed (no manifest, no object, no open
multipart upload on S3), the other hosts are committed and restore byte for byte,
the run exits 3, and ``--json`` names each failed host and source.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, toml_value, write_policy
from tests.servers.sshd import SshHost, sshd_server, sudo_missing_reason, temp_user

MB = 1_000_000
BIG = ["head", "-c", str(3000 * MB), "/dev/urandom"]  # incompressible: S3 parts get uploaded


def written(pid: int) -> int:
    """Bytes a process (remote = this machine) has written so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def connection_table(server: SshHost, known: Path, **overrides: Any) -> str:
    conn = server.connection(known_hosts=str(known), **overrides)
    return "[connection]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in conn.items())


@pytest.fixture
def servers() -> Iterator[list[SshHost]]:
    with sshd_server() as a, sshd_server() as b, sshd_server() as c:
        yield [a, b, c]


@pytest.fixture
def sudo_login() -> Iterator[str | None]:
    """A login user whose sudo needs a password (None where sudo is missing)."""
    if sudo_missing_reason():
        yield None
        return
    with temp_user(sudoers="ALL=(ALL) ALL") as login:
        yield login


@pytest.mark.parametrize("repo", ["s3"], indirect=True)
def test_all_over_ssh_one_connection_cut_mid_dump(
    servers: list[SshHost], repo: RepoTarget, keys: Any, tmp_path: Path, sudo_login: str | None
) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    data = {}
    for host, server in zip(("alpha", "bravo", "charlie"), servers, strict=True):
        known = server.write_known_hosts(tmp_path / f"known_{host}")
        data[host] = tmp_path / f"{host}.bin"
        data[host].write_bytes(os.urandom(12 * MB))  # more than one 8 MiB S3 part
        sources = [
            {
                "kind": "command",
                "name": "appdata",
                "command": ["cat", str(data[host])],
                "restore_command": ["sh", "-c", f"cat > {tmp_path}/restored-{host}.bin"],
            },
        ]
        if host == "charlie":  # its first source is stored before the cut: it must go too
            sources.append({"kind": "command", "name": "dump", "command": BIG})
        write_policy(
            pdir / f"{host}.toml",
            host,
            repo.policy,
            [keys.recipient],
            sources,
            extra=connection_table(server, known),
        )
    if sudo_login:
        known = servers[0].write_known_hosts(tmp_path / "known_delta")
        write_policy(
            pdir / "delta.toml",
            "delta",
            repo.policy,
            [keys.recipient],
            [{"kind": "command", "name": "roles", "command": ["id", "-un"], "sudo_user": "nobody"}],
            extra=connection_table(servers[0], known, user=sudo_login),
        )

    cut: dict[str, int] = {}

    def cut_charlie() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            pid = servers[2].find_command(BIG)
            if pid and written(pid) > 40 * MB:
                cut["written"] = written(pid)
                cut["killed"] = servers[2].drop_connections()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=cut_charlie, daemon=True)
    killer.start()
    t0 = time.monotonic()
    res = drkit("--policy-dir", str(pdir), "backup", "--all", "--jobs", "4", "--json", env=repo.env)
    seconds = time.monotonic() - t0
    killer.join(timeout=60)
    assert cut.get("killed"), f"the dump was never cut: {res.output}"
    assert res.returncode == 3, res.output

    results = {r["host"]: r for r in json.loads(res.stdout)["results"]}
    expected = {"alpha": "success", "bravo": "success", "charlie": "failed"}
    if sudo_login:
        expected["delta"] = "failed"
    assert {h: r["status"] for h, r in results.items()} == expected
    charlie = results["charlie"]
    assert charlie["error"].startswith("host charlie: ") and "head -c" in charlie["error"]
    assert "connection lost" in charlie["error"]
    if sudo_login:
        delta = results["delta"]
        assert delta["error"].startswith("host delta: ") and "sudo -u nobody" in delta["error"]
        assert "needs a password" in delta["error"] and "NOPASSWD" in delta["error"]
    assert seconds < 200  # nobody waited for a password prompt or a dead peer

    # charlie: nothing committed, nothing left behind but the packs stored before the
    # cut (dedup, the default: no manifest names them; prune removes them after its
    # grace period, docs/dedup.md), no multipart upload still open.
    assert [k for k in repo.keys("charlie/") if not k.startswith("charlie/packs/")] == []
    assert repo.open_uploads() == []
    snaps = json.loads(
        drkit("--policy-dir", str(pdir), "snapshots", "--json", env=repo.env).stdout
    )["snapshots"]
    assert sorted(s["host"] for s in snaps) == ["alpha", "bravo"]

    # alpha and bravo come back byte for byte, over SSH.
    for host, server in zip(("alpha", "bravo"), servers[:2], strict=True):
        drkit(
            "--policy-dir",
            str(pdir),
            "restore",
            "--host",
            host,
            "--yes",
            "--target",
            f"ssh://root@127.0.0.1:{server.port}",
            "--identity",
            str(keys.identity_file),
            env=repo.env,
            check=True,
        )
        assert (tmp_path / f"restored-{host}.bin").read_bytes() == data[host].read_bytes()

    # Each failed host's error names its source (for the summary's "failed sources").
    named = {h: r["failed_sources"] for h, r in results.items() if r["status"] == "failed"}
    want = {"charlie": ["dump"], **({"delta": ["roles"]} if sudo_login else {})}
    assert named == want
