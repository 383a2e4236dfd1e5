"""A host's drill container: started from its image, reachable only on 127.0.0.1.

``start_container()`` runs the image (``docker run -d --init``) with every
port the image exposes published on an ephemeral 127.0.0.1 port (never on a
public interface), reads the ports back, and waits until the entrypoint
reports ready and sshd answers with its banner. ``host_container()`` does
the same as a context manager and removes the container afterwards unless
``keep``.

Network (``network=`` or ``$DRKIT_DRILL_NETWORK``): a restored host must not
phone out (Caddy would ask Let's Encrypt for the restored site names, apps
would call their APIs), so by default (``isolated``) the container joins a
network of its own created ``--internal`` (no route beyond this machine)
with ``--dns 127.0.0.1`` (no name resolves). Docker publishes no ports on an
internal network, so drkit publishes them itself on 127.0.0.1
(``drills/forward.py``) while the drill runs. ``bridge`` keeps Docker's
default bridge and its ``-p 127.0.0.1::<port>`` publishing, with only the
DNS cut: for engines whose container addresses this machine cannot reach
(Docker Desktop).

Everything acts on the container id that ``docker run`` printed, never on
names or label patterns, so two drills (or a user's own containers) never
touch each other.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from drkit.drills.engine import DockerError, docker, tail
from drkit.drills.forward import PortForwarder
from drkit.errors import UsageError

LOOPBACK = "127.0.0.1"
NETWORK_ENV = "DRKIT_DRILL_NETWORK"
NETWORK_MODES = ("isolated", "bridge")
READY_MARKER = "/run/drkit/ready"  # written by docker/hosts/common/entrypoint.sh
SSH_PORT = 22
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


@dataclass
class HostContainer:
    """A running drill container.

    ``ports`` maps each container port to its published port on 127.0.0.1;
    ``ready_seconds`` is the time from ``docker run`` to sshd answering.
    ``network`` is the drill's own internal network (None in bridge mode),
    ``network_address`` the container's address on it, ``forwarder`` what
    publishes its ports then.
    """

    id: str
    host: str
    image: str
    ports: dict[int, int]
    ssh_user: str = "root"
    ready_seconds: float = 0.0
    address: str = field(default=LOOPBACK)
    network: str | None = None
    network_address: str = ""
    publish: list[int] = field(default_factory=list)
    forwarder: PortForwarder | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"drill container for {self.host} ({self.id[:12]})"

    def port(self, container_port: int) -> int:
        """The 127.0.0.1 port publishing ``container_port``; ``DockerError`` if none does."""
        try:
            return self.ports[container_port]
        except KeyError:
            raise DockerError(
                f"{self.label}: port {container_port} is not published "
                f"(published: {', '.join(map(str, sorted(self.ports))) or 'none'})"
            ) from None

    def exec(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 300,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the container (``docker exec``); output captured.

        ``env`` values reach the command without appearing in any argv.
        Raises ``DockerError`` naming the host and command when it exits
        non-zero (if ``check``) or times out.
        """
        args = ["exec"]
        if input is not None:
            args.append("-i")
        if user is not None:
            args += ["--user", user]
        for name in env or {}:
            args += ["--env", name]
        done = docker(
            *args,
            self.id,
            *argv,
            input=input,
            timeout=timeout,
            check=False,
            env=dict(env) if env else None,
            what=f"{self.label}: {argv[0]}",
        )
        if check and done.returncode != 0:
            raise DockerError(
                f"{self.label}: {' '.join(argv[:4])} exited {done.returncode}: {tail(done.stderr)}"
            )
        return done

    def host_public_key(self) -> str:
        """sshd's host key (``ssh-ed25519 AAAA...``), made when this container started."""
        key = self.exec(["cat", HOST_KEY]).stdout.decode().split()
        return " ".join(key[:2])

    def known_hosts_line(self) -> str:
        """A known_hosts entry pinning this container's host key at its published ssh port."""
        return f"[{self.address}]:{self.port(SSH_PORT)} {self.host_public_key()}\n"

    def status(self) -> tuple[str, int]:
        """(state, exit code) as the engine reports them, e.g. ("running", 0)."""
        done = docker(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.id,
            what=f"{self.label}: inspect",
        )  # fmt: skip
        state, code = done.stdout.decode().split()
        return state, int(code)

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines the entrypoint and services wrote to the console."""
        done = docker("logs", "--tail", str(lines), self.id, check=False, timeout=30)
        return (done.stdout + done.stderr).decode("utf-8", "replace").strip()

    def remove(self) -> None:
        """Remove the container, its anonymous volumes and its network; missing ones are fine."""
        if self.forwarder is not None:
            self.forwarder.close()
        done = docker("rm", "--force", "--volumes", self.id, check=False, timeout=120)
        if done.returncode != 0 and b"No such container" not in done.stderr:
            raise DockerError(f"{self.label}: docker rm: {tail(done.stderr)}")
        if self.network is not None:
            remove_network(self.network)


def network_mode(mode: str | None = None) -> str:
    """``mode``, else ``$DRKIT_DRILL_NETWORK``, else ``isolated``; ``UsageError`` if unknown."""
    chosen = mode or os.environ.get(NETWORK_ENV) or NETWORK_MODES[0]
    if chosen not in NETWORK_MODES:
        raise UsageError(f"{NETWORK_ENV}={chosen}: expected one of {', '.join(NETWORK_MODES)}")
    return chosen


def create_network(host: str) -> str:
    """A new ``--internal`` network for one drill container; returns its name."""
    name = f"drkit-drill-{secrets.token_hex(4)}"
    docker(
        "network", "create", "--internal", "--label", "org.drkit.drill=1",
        "--label", f"org.drkit.host={host}", name,
        what=f"create the drill network for {host}",
    )  # fmt: skip
    return name


def remove_network(name: str) -> None:
    """Remove a drill network; a missing one is not an error."""
    done = docker("network", "rm", name, check=False, timeout=60)
    if done.returncode != 0 and b"No such network" not in done.stderr:
        raise DockerError(f"docker network rm {name}: {tail(done.stderr)}")


def image_ports(image: str) -> list[int]:
    """The TCP ports ``image`` exposes (its Dockerfile's EXPOSE lines), sorted."""
    done = docker(
        "image", "inspect", "--format", "{{json .Config.ExposedPorts}}", image,
        what=f"inspect image {image}",
    )  # fmt: skip
    exposed = json.loads(done.stdout) or {}
    return sorted(int(key.split("/")[0]) for key in exposed if key.endswith("/tcp"))


def start_container(
    image: str,
    *,
    host: str,
    authorized_keys: str,
    ssh_user: str = "root",
    ports: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 300,
    network: str | None = None,
) -> HostContainer:
    """Start ``image`` as ``host``'s drill container and wait until it is ready.

    ``authorized_keys``: public key lines that may log in as ``ssh_user``
    (created with passwordless sudo when not root). ``ports``: container
    ports to publish on 127.0.0.1 (default: all the image exposes). ``env``:
    extra environment for the entrypoint. ``network``: ``isolated`` or
    ``bridge`` (default: ``network_mode()``; see the module doc). The time
    limit covers the engine's copy of the image, which takes most of it
    with vfs.

    Raises ``DockerError`` with the container's console tail when it exits
    or is not ready in time; the container (and its network) is removed then.
    """
    mode = network_mode(network)
    publish = list(ports) if ports is not None else image_ports(image)
    if SSH_PORT not in publish:
        publish.append(SSH_PORT)
    variables = {
        **(env or {}),
        "DRKIT_AUTHORIZED_KEYS": authorized_keys,
        "DRKIT_SSH_USER": ssh_user,
    }
    args = ["run", "--detach", "--init", "--hostname", host, "--dns", LOOPBACK]
    args += ["--label", "org.drkit.drill=1", "--label", f"org.drkit.host={host}"]
    net = create_network(host) if mode == "isolated" else None
    if net is not None:
        args += ["--network", net]
    else:
        for port in publish:
            args += ["--publish", f"{LOOPBACK}::{port}"]
    for name in variables:
        args += ["--env", name]
    started = time.monotonic()
    try:
        done = docker(
            *args, image, env=variables, timeout=ready_timeout,
            what=f"start {host}'s drill container",
        )  # fmt: skip
    except BaseException:
        if net is not None:
            remove_network(net)
        raise
    container = HostContainer(
        id=done.stdout.decode().strip(), host=host, image=image, ports={}, ssh_user=ssh_user,
        network=net, publish=publish,
    )  # fmt: skip
    try:
        _wait_ready(container, started + ready_timeout)
    except BaseException:
        container.remove()
        raise
    container.ready_seconds = time.monotonic() - started
    return container


@contextmanager
def host_container(
    image: str,
    *,
    host: str,
    authorized_keys: str,
    ssh_user: str = "root",
    ports: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 300,
    keep: bool = False,
    network: str | None = None,
) -> Iterator[HostContainer]:
    """``start_container()``, then remove the container on exit unless ``keep``."""
    container = start_container(
        image,
        host=host,
        authorized_keys=authorized_keys,
        ssh_user=ssh_user,
        ports=ports,
        env=env,
        ready_timeout=ready_timeout,
        network=network,
    )
    try:
        yield container
    finally:
        if not keep:
            container.remove()


def published_ports(container: HostContainer) -> dict[int, int]:
    """Container port -> 127.0.0.1 port, read from the engine.

    Raises ``DockerError`` if any port is bound elsewhere than loopback:
    a drill's services must never be reachable from the network.
    """
    done = docker(
        "inspect", "--format", "{{json .NetworkSettings.Ports}}", container.id,
        what=f"{container.label}: inspect ports",
    )  # fmt: skip
    ports: dict[int, int] = {}
    for key, bindings in (json.loads(done.stdout) or {}).items():
        for binding in bindings or []:
            if binding["HostIp"] != LOOPBACK:
                raise DockerError(
                    f"{container.label}: port {key} is published on {binding['HostIp']}, "
                    f"not {LOOPBACK}"
                )
            ports[int(key.split("/")[0])] = int(binding["HostPort"])
    return ports


def _wait_ready(container: HostContainer, deadline: float) -> None:
    """Until the ready marker exists and sshd sends its banner on the published port.

    Fills ``container.ports`` once the container runs (a container that
    exited at once has none, and its console says why).
    """
    marker = False
    while True:
        state, code = container.status()
        if state != "running":
            raise DockerError(
                f"{container.label}: the container {state} (exit {code}) before it was ready:\n"
                f"{container.logs()}"
            )
        if not container.ports:
            container.ports = (
                _forward(container) if container.network else published_ports(container)
            )
        if not marker:
            marker = container.exec(["test", "-e", READY_MARKER], check=False).returncode == 0
        if marker and _ssh_banner(container.port(SSH_PORT)):
            return
        if time.monotonic() > deadline:
            what = "sshd did not answer" if marker else "its services did not start"
            raise DockerError(f"{container.label}: {what} in time:\n{container.logs()}")
        time.sleep(0.2)


def _forward(container: HostContainer) -> dict[int, int]:
    """Publish an isolated container's ports on 127.0.0.1 (``PortForwarder``)."""
    assert container.network is not None
    done = docker(
        "inspect", "--format", "{{json .NetworkSettings.Networks}}", container.id,
        what=f"{container.label}: inspect networks",
    )  # fmt: skip
    networks = json.loads(done.stdout) or {}
    address = (networks.get(container.network) or {}).get("IPAddress") or ""
    if not address:
        raise DockerError(f"{container.label}: no address on its network {container.network}")
    container.network_address = address
    container.forwarder = PortForwarder(address, container.publish, container.label)
    return container.forwarder.ports


def _ssh_banner(port: int) -> bool:
    """Whether an SSH server answers with its banner on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False
