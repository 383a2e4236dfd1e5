"""Drill images and containers on a real Docker engine (started here when none runs).

The first run builds the Debian base image (debootstrap from the machine's
mirror) and the vultr image: minutes, once. After that both are found by
their content hash and a second ``ensure_host_image()`` must not rebuild.
The container test logs in over SSH on the port published on 127.0.0.1
with a test key and runs the vultr host's tools inside with ``docker exec``.
The isolation tests use the smallest image (visualkit-hetzner): a drill
container resolves no names and reaches nothing beyond this machine, yet its
ports answer on 127.0.0.1. The tag tests at the top need no engine.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.drills import images
from drkit.drills.container import (
    NETWORK_ENV,
    HostContainer,
    host_container,
    network_mode,
    start_container,
)
from drkit.drills.engine import DockerError, Engine, docker, ensure_engine, stop_engine
from drkit.drills.images import ImageBuild, ensure_base_image, ensure_host_image, host_image_tag
from drkit.errors import UsageError

PG_ISREADY = "/usr/lib/postgresql/15/bin/pg_isready"
DOCKER_TIMEOUT = 2400  # the first build of both images, on vfs


# --- tags: no engine needed ------------------------------------------------------


@pytest.fixture
def docker_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of docker/ that images.py reads instead of the real one."""
    copy = tmp_path / "docker"
    shutil.copytree(images.docker_dir(), copy)
    monkeypatch.setenv("DRKIT_DOCKER_DIR", str(copy))
    return copy


def test_tag_changes_with_the_context_base_and_ca(docker_copy: Path) -> None:
    tag = host_image_tag("vultr", "drkit-base:aaa", b"")
    assert tag.startswith("drkit-host-vultr:")
    assert host_image_tag("vultr", "drkit-base:aaa", b"") == tag
    assert host_image_tag("vultr", "drkit-base:bbb", b"") != tag
    assert host_image_tag("vultr", "drkit-base:aaa", b"-----BEGIN CERTIFICATE-----") != tag

    dockerfile = docker_copy / "hosts" / "vultr" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# changed\n")
    changed = host_image_tag("vultr", "drkit-base:aaa", b"")
    assert changed != tag
    # The shared entrypoint is part of every host's context.
    entrypoint = docker_copy / "hosts" / "common" / "entrypoint.sh"
    entrypoint.write_text(entrypoint.read_text() + "# changed\n")
    assert host_image_tag("vultr", "drkit-base:aaa", b"") != changed


def test_context_holds_common_files_host_files_and_the_ca(docker_copy: Path) -> None:
    files = images.context_files("vultr")
    assert {"Dockerfile", "entrypoint.sh", "drkit-svc", "setup-image.sh"} <= set(files)
    # A stray CA file in the directory never replaces the chosen bundle.
    (docker_copy / "hosts" / "vultr" / images.CA_NAME).write_text("stray")
    assert images.CA_NAME not in images.context_files("vultr")


def test_unknown_host_names_the_hosts_that_have_images(docker_copy: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown drill image 'nosuch'.*images: .*vultr"):
        host_image_tag("nosuch", "drkit-base:aaa", b"")


def test_build_ca_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.CA_ENV, raising=False)
    expected = images.SYSTEM_CA if images.SYSTEM_CA.is_file() else None
    assert images.build_ca_bundle() == expected
    monkeypatch.setenv(images.CA_ENV, "none")
    assert images.build_ca_bundle() is None
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv(images.CA_ENV, str(bundle))
    assert images.build_ca_bundle() == bundle
    monkeypatch.setenv(images.CA_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(UsageError, match=r"DRKIT_BUILD_CA=.*missing\.pem: no such file"):
        images.build_ca_bundle()


# --- a real engine -----------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    try:
        running = ensure_engine()
    except DockerError as exc:
        pytest.skip(f"no Docker engine can be started here: {exc}")
    yield running
    stop_engine(running)  # only if this module started it


@pytest.fixture(scope="module")
def vultr_images(engine: Engine) -> tuple[ImageBuild, ImageBuild]:
    base = ensure_base_image()
    host = ensure_host_image("vultr", base_tag=base.tag)
    return base, host


@pytest.fixture
def ssh_keys(tmp_path: Path) -> tuple[Path, Path]:
    """A key the container authorizes and one it does not."""
    paths = []
    for name in ("drill", "stranger"):
        key = tmp_path / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"drkit-test-{name}", "-f", key],
            check=True,
        )
        paths.append(key)
    return paths[0], paths[1]


def _ssh(
    container: HostContainer, key: Path, known_hosts: Path, command: str
) -> subprocess.CompletedProcess[str]:
    options = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": str(known_hosts),
        "ConnectTimeout": "10",
    }
    argv = ["ssh", "-i", str(key), "-p", str(container.port(22))]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    argv += [f"root@{container.address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.docker
@pytest.mark.timeout(DOCKER_TIMEOUT)
def test_unchanged_images_are_not_rebuilt(vultr_images: tuple[ImageBuild, ImageBuild]) -> None:
    base, host = vultr_images
    again_base = ensure_base_image()
    again = ensure_host_image("vultr", base_tag=again_base.tag)
    assert (again_base.tag, again_base.built) == (base.tag, False)
    assert (again.tag, again.built) == (host.tag, False)
    assert again.seconds < 15
    labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", host.tag).stdout
    assert b'"org.drkit.host":"vultr"' in labels
    assert f'"org.drkit.base":"{base.tag}"'.encode() in labels


@pytest.mark.docker
@pytest.mark.timeout(DOCKER_TIMEOUT)
def test_vultr_container_serves_ssh_and_its_tools(
    vultr_images: tuple[ImageBuild, ImageBuild], ssh_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _, image = vultr_images
    key, stranger = ssh_keys
    with host_container(
        image.tag, host="vultr", authorized_keys=key.with_suffix(".pub").read_text()
    ) as container:
        # Every exposed port, published by drkit on 127.0.0.1 (the container is on an
        # internal network, where Docker itself publishes nothing).
        assert set(container.ports) == {22, 80, 443, 5432}
        assert container.network and docker("port", container.id).stdout.strip() == b""

        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(container.known_hosts_line())
        done = _ssh(container, key, known_hosts, "id -un; hostname")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["root", "vultr"]
        refused = _ssh(container, stranger, known_hosts, "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr

        def run(*argv: str, user: str | None = None) -> str:
            return container.exec(list(argv), user=user).stdout.decode().strip()

        assert run("psql", "-Atc", "SELECT 6 * 7", user="postgres") == "42"
        assert re.match(r"v?2\.\d+", run("caddy", "version"))
        assert run("node", "--version").startswith("v")
        assert run("pm2", "--version").splitlines()[-1].split(".")[0].isdigit()
        assert run("zstd", "--version").startswith("*** Zstandard")
        assert run("sudo", "-u", "postgres", "id", "-un") == "postgres"

        # The services answer on their published ports, too.
        with urllib.request.urlopen(f"http://127.0.0.1:{container.port(80)}/", timeout=10) as r:
            assert r.status == 200
        if Path(PG_ISREADY).exists():
            ready = subprocess.run(
                [PG_ISREADY, "-h", "127.0.0.1", "-p", str(container.port(5432))], check=False
            )
            assert ready.returncode == 0
    gone = docker("inspect", container.id, check=False)
    assert gone.returncode != 0, "the container was not removed"


@pytest.mark.docker
@pytest.mark.timeout(DOCKER_TIMEOUT)
def test_a_service_that_does_not_start_fails_the_start(
    vultr_images: tuple[ImageBuild, ImageBuild],
) -> None:
    _, image = vultr_images
    host = f"vultr-broken-{secrets.token_hex(3)}"
    with pytest.raises(DockerError) as failure:
        start_container(
            image.tag,
            host=host,
            authorized_keys="",
            ports=[22],
            env={"DRKIT_SERVICES": "sshd nosuchd"},
            ready_timeout=120,
        )
    message = str(failure.value)
    assert f"drill container for {host}" in message
    assert "unknown service 'nosuchd'" in message
    left = docker("ps", "--all", "--quiet", "--filter", f"label=org.drkit.host={host}").stdout
    assert left.strip() == b"", "the failed container was not removed"


@pytest.fixture(scope="module")
def small_image(engine: Engine) -> str:
    base = ensure_base_image()
    return ensure_host_image("visualkit-hetzner", base_tag=base.tag).tag


# A TEST-NET-2 address (RFC 5737): never routed anywhere, so even a failing
# isolation sends nothing to a real host.
UNROUTED = "198.51.100.7"


def _outside(container: HostContainer) -> dict[str, int]:
    """Exit codes of trying to resolve a public name and to reach a public address."""
    probes = {
        "resolve": "getent hosts example.com",
        "curl": "curl -sS -m 5 -o /dev/null https://example.com/",
        "connect": f"timeout 5 bash -c 'exec 3<>/dev/tcp/{UNROUTED}/443'",
    }
    return {
        name: container.exec(["sh", "-c", cmd], check=False, timeout=60).returncode
        for name, cmd in probes.items()
    }


@pytest.mark.docker
@pytest.mark.timeout(DOCKER_TIMEOUT)
def test_isolated_container_reaches_nothing_outside_but_answers_on_loopback(
    small_image: str,
) -> None:
    with host_container(small_image, host="visualkit-hetzner", authorized_keys="") as container:
        network = container.network
        assert network is not None and container.network_address
        internal = docker("network", "inspect", "--format", "{{.Internal}}", network).stdout
        assert internal.strip() == b"true"
        failed = _outside(container)
        assert all(code != 0 for code in failed.values()), failed
        # The container itself works: its own names resolve (/etc/hosts) and its ports
        # answer on 127.0.0.1 through drkit's forwarder, SSH included.
        assert container.exec(["getent", "hosts", "visualkit-hetzner"]).returncode == 0
        assert set(container.ports) == {22, 80, 443}
        with urllib.request.urlopen(f"http://127.0.0.1:{container.port(80)}/", timeout=10) as r:
            assert r.status == 200
        with socket.create_connection(("127.0.0.1", container.port(22)), timeout=10) as s:
            assert s.recv(4) == b"SSH-"
    assert docker("network", "inspect", network, check=False).returncode != 0, "network left"
    assert docker("inspect", container.id, check=False).returncode != 0, "container left"


@pytest.mark.docker
@pytest.mark.timeout(DOCKER_TIMEOUT)
def test_bridge_mode_publishes_on_loopback_and_resolves_nothing(small_image: str) -> None:
    with host_container(
        small_image, host="visualkit-hetzner", authorized_keys="", network="bridge"
    ) as container:
        assert container.network is None
        raw = docker("port", container.id).stdout.decode()
        assert raw.count("127.0.0.1:") == 3 and "0.0.0.0" not in raw
        resolve = container.exec(["getent", "hosts", "example.com"], check=False)
        assert resolve.returncode != 0


def test_unknown_network_mode_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NETWORK_ENV, "host")
    with pytest.raises(UsageError, match=r"DRKIT_DRILL_NETWORK=host: expected one of isolated"):
        network_mode()
