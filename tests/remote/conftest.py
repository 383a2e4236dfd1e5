"""Fixtures for the SSH runner: one real sshd for the module, a trusted known_hosts, a runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.policy.models import Connection
from drkit.remote.ssh import SshRunner
from tests.servers.sshd import SshHost, sshd_server


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshHost]:
    with sshd_server() as host:
        yield host


@pytest.fixture
def known_hosts(tmp_path: Path, sshd: SshHost) -> Path:
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def make_runner(known_hosts: Path, sshd: SshHost) -> Iterator[Any]:
    """``make_runner(**connection_overrides)``: runners closed after the test."""
    made: list[SshRunner] = []

    def make(server: SshHost | None = None, **overrides: Any) -> SshRunner:
        server = server or sshd
        overrides.setdefault("known_hosts", str(known_hosts))
        runner = SshRunner("testhost", Connection(**server.connection(**overrides)))
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


@pytest.fixture
def runner(make_runner: Any) -> SshRunner:
    r: SshRunner = make_runner()
    return r
