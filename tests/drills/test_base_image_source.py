"""How the drill base image is made: DRKIT_BASE_IMAGE_SOURCE and the registry probe
(drkit.drills.images.choose_base_source, docker/README.md "The base image").

No registry is reachable from our machines, and no test may try one outside: the
registry image is named on 127.0.0.1, where a listener of the test's own counts the
connections the engine makes when it pulls. So the probe is seen to contact what is
configured, and nothing else; its failure gives the debootstrap fallback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.drills.engine import DockerError
from drkit.drills.images import (
    BASE_SOURCE_ENV,
    REGISTRY_IMAGE_ENV,
    base_settings,
    choose_base_source,
    docker_dir,
)
from drkit.errors import UsageError
from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("engine")]


class Registry:
    """A TCP listener on 127.0.0.1 that accepts and closes: no registry answers there."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    @property
    def image(self) -> str:
        return f"127.0.0.1:{self.port}/drkit-test/debian:bookworm"


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.stop.set()
    reg.thread.join(timeout=5)
    reg.sock.close()


def test_the_setting_debootstrap_probes_nothing(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_SOURCE_ENV, "debootstrap")
    monkeypatch.setenv(REGISTRY_IMAGE_ENV, registry.image)
    choice = choose_base_source()
    assert (choice.method, choice.image) == ("debootstrap", None)
    assert BASE_SOURCE_ENV in choice.reason and "debootstrap" in choice.describe()
    assert registry.connections == 0


def test_the_setting_registry_fails_naming_the_image_it_could_not_pull(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_SOURCE_ENV, "registry")
    monkeypatch.setenv(REGISTRY_IMAGE_ENV, registry.image)
    with pytest.raises(DockerError, match=f"{BASE_SOURCE_ENV}=registry") as caught:
        choose_base_source(pull_timeout=120)
    assert registry.image in str(caught.value)
    assert registry.connections > 0, "the engine tried the configured registry"


def test_auto_probes_a_named_registry_and_falls_back_to_debootstrap(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BASE_SOURCE_ENV, raising=False)  # auto is the default
    monkeypatch.setenv(REGISTRY_IMAGE_ENV, registry.image)
    choice = choose_base_source(pull_timeout=120)
    assert choice.method == "debootstrap", choice
    assert "registry probe failed" in choice.reason and registry.image in choice.reason
    assert registry.connections > 0


def test_auto_without_a_named_registry_uses_the_mirror_and_probes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This machine has a Debian mirror in its apt sources: no registry is tried, so a
    # drill here never reaches for Docker Hub.
    monkeypatch.setenv(BASE_SOURCE_ENV, "auto")
    monkeypatch.delenv(REGISTRY_IMAGE_ENV, raising=False)
    choice = choose_base_source()
    assert choice.method == "debootstrap", choice
    assert "no registry probed" in choice.reason


def test_a_wrong_setting_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BASE_SOURCE_ENV, "docker-hub")
    with pytest.raises(UsageError, match="auto, debootstrap, registry"):
        choose_base_source()


def test_a_registry_base_gets_the_settings_build_sh_writes() -> None:
    files = base_settings(Path(docker_dir()) / "base" / "build.sh")
    assert files["/usr/sbin/policy-rc.d"] == "#!/bin/sh\nexit 101\n"
    assert files["/etc/dpkg/dpkg.cfg.d/90drkit-unsafe-io"] == "force-unsafe-io\n"
    assert 'APT::Install-Recommends "false";' in files["/etc/apt/apt.conf.d/90drkit"]
    assert "path-exclude /usr/share/doc/*" in files["/etc/dpkg/dpkg.cfg.d/90drkit-excludes"]
    assert not any(path.startswith("/etc/apt/sources.list") for path in files)
