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

Name (``name=``): a drill names its container ``drkit-drill-<host>-<snapshot>``
(``container_name()``: only the characters Docker allows). A container that
already holds the name is removed first only when its labels say it is a
drill's of the same host, not kept (``--keep``), and that drill is over: the
container stopped, or the drkit process on this machine that started it has
gone (a killed run: ``org.drkit.owner`` is the boot id, pid and start time of
that process). Any other (kept, still in use, another machine's, not a
drill's) is left alone and this container gets the name with ``-2``
(``-3``...) appended.

Engine (``engine=``): a drill of a host whose policy has Docker-backed sources
(``drills/nested.py``) runs a Docker engine of its own inside the container:
started with ``NESTED_ENGINE_FLAGS`` (not ``--privileged``, which engines
without CAP_SYS_RESOURCE refuse) and ``DRKIT_ENGINE=1``, on which the image's
entrypoint starts ``dockerd`` (vfs), loads the images the host's containers
need and starts them (``docker/hosts/common/drkit-engine``) before it reports
ready. Only images labelled ``org.drkit.engine=dockerd`` have one; asking
another is refused before anything starts. The inner engine's containers sit
behind the container's own network, so the isolation above holds for them too.

Otherwise everything acts on the container id that ``docker run`` printed,
never on names or label patterns, so two drills (or a user's own containers)
never touch each other.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.drills.engine import DockerError, docker, tail
from drkit.drills.forward import PortForwarder
from drkit.errors import UsageError
from drkit.logs import Log
from drkit.paths import state_dir

LOOPBACK = "127.0.0.1"
NETWORK_ENV = "DRKIT_DRILL_NETWORK"
NETWORK_MODES = ("isolated", "bridge")
READY_MARKER = "/run/drkit/ready"  # written by docker/hosts/common/entrypoint.sh
SSH_PORT = 22
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
DRILL_LABEL = "org.drkit.drill"
HOST_LABEL = "org.drkit.host"
OWNER_LABEL = "org.drkit.owner"  # <boot id>:<pid>:<start time> of the drkit that started it
KEEP_LABEL = "org.drkit.keep"  # started with --keep: never removed by another drill
ENGINE_LABEL = "org.drkit.engine"  # "dockerd": the image can run an engine of its own
ENGINE_LOG = "/var/log/drkit/dockerd.log"  # inside the container
REMOVE_TIMEOUT = 900.0  # seconds for `docker rm` (see HostContainer.remove)
# What a Docker engine inside the container needs (docker/README.md, "A drill with its
# own engine"): --privileged fails on engines without CAP_SYS_RESOURCE; the inner runc
# needs seccomp off ("unable to join session keyring"); vfs data in a volume of its
# own, removed with the container (docker rm --volumes).
NESTED_ENGINE_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "systempaths=unconfined",
    "--device-cgroup-rule", "a *:* rwm", "--cgroupns", "private",
    "--volume", "/var/lib/docker",
)  # fmt: skip


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
    name: str = ""
    ssh_user: str = "root"
    ready_seconds: float = 0.0
    address: str = field(default=LOOPBACK)
    network: str | None = None
    network_address: str = ""
    publish: list[int] = field(default_factory=list)
    forwarder: PortForwarder | None = field(default=None, repr=False)
    engine: bool = False

    @property
    def label(self) -> str:
        return f"drill container for {self.host} ({self.name or self.id[:12]})"

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
        # vfs deletes every file of the container's copy of its image, and of an inner
        # engine's images and containers (its volume): minutes on a busy machine.
        done = docker("rm", "--force", "--volumes", self.id, check=False, timeout=REMOVE_TIMEOUT)
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
        "network", "create", "--internal", "--label", f"{DRILL_LABEL}=1",
        "--label", f"{HOST_LABEL}={host}", name,
        what=f"create the drill network for {host}",
    )  # fmt: skip
    return name


def remove_network(name: str) -> None:
    """Remove a drill network; a missing one is not an error."""
    done = docker("network", "rm", name, check=False, timeout=60)
    missing = re.search(rb"No such network|network \S+ not found", done.stderr)
    if done.returncode != 0 and not missing:
        raise DockerError(f"docker network rm {name}: {tail(done.stderr)}")


def image_ports(image: str) -> list[int]:
    """The TCP ports ``image`` exposes (its Dockerfile's EXPOSE lines), sorted."""
    done = docker(
        "image", "inspect", "--format", "{{json .Config.ExposedPorts}}", image,
        what=f"inspect image {image}",
    )  # fmt: skip
    exposed = json.loads(done.stdout) or {}
    return sorted(int(key.split("/")[0]) for key in exposed if key.endswith("/tcp"))


def image_has_engine(image: str) -> bool:
    """Whether ``image`` can run a Docker engine of its own (``org.drkit.engine=dockerd``)."""
    done = docker(
        "image", "inspect", "--format", "{{json .Config.Labels}}", image,
        what=f"inspect image {image}",
    )  # fmt: skip
    return (json.loads(done.stdout) or {}).get(ENGINE_LABEL) == "dockerd"


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
    name: str | None = None,
    keep: bool = False,
    engine: bool | None = None,
) -> HostContainer:
    """Start ``image`` as ``host``'s drill container and wait until it is ready.

    ``authorized_keys``: public key lines that may log in as ``ssh_user``
    (created with passwordless sudo when not root). ``ports``: container
    ports to publish on 127.0.0.1 (default: all the image exposes). ``env``:
    extra environment for the entrypoint. ``network``: ``isolated`` or
    ``bridge`` (default: ``network_mode()``; see the module doc). ``name``:
    the container's name, or a suffixed one when another container holds it
    (``claim_name()``); None lets Docker choose. ``keep``: labelled as kept,
    so that no later drill removes it as a leftover. ``engine``: run a
    Docker engine inside (module doc); None: when the image has one. The time
    limit covers the engine's copy of the image, which takes most of it
    with vfs, and the inner engine's start.

    Raises ``DockerError`` with the container's console tail when it exits
    or is not ready in time (the container and its network are removed then),
    and before anything starts when ``engine`` is asked of an image without one.
    """
    mode = network_mode(network)
    has_engine = image_has_engine(image)
    if engine and not has_engine:
        raise DockerError(
            f"{host}'s drill needs a Docker engine inside its container, but image {image} "
            f"has none (its Dockerfile must install docker.io and set LABEL "
            f"{ENGINE_LABEL}=dockerd; docker/README.md, 'A drill with its own engine')"
        )
    engine = has_engine if engine is None else engine
    publish = list(ports) if ports is not None else image_ports(image)
    if SSH_PORT not in publish:
        publish.append(SSH_PORT)
    variables = {
        **(env or {}),
        "DRKIT_AUTHORIZED_KEYS": authorized_keys,
        "DRKIT_SSH_USER": ssh_user,
    }
    args = ["run", "--detach", "--init", "--hostname", host, "--dns", LOOPBACK]
    args += ["--label", f"{DRILL_LABEL}=1", "--label", f"{HOST_LABEL}={host}"]
    args += ["--label", f"{OWNER_LABEL}={owner()}"]
    if keep:
        args += ["--label", f"{KEEP_LABEL}=1"]
    if engine:
        args += NESTED_ENGINE_FLAGS
        variables["DRKIT_ENGINE"] = "1"
    net = create_network(host) if mode == "isolated" else None
    if net is not None:
        args += ["--network", net]
    else:
        for port in publish:
            args += ["--publish", f"{LOOPBACK}::{port}"]
    for variable in variables:
        args += ["--env", variable]
    started = time.monotonic()
    try:
        container_id, chosen = _run(args, image, name, host, variables, ready_timeout)
    except BaseException:
        if net is not None:
            remove_network(net)
        raise
    container = HostContainer(
        id=container_id, host=host, image=image, ports={}, name=chosen, ssh_user=ssh_user,
        network=net, publish=publish, engine=engine,
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
    name: str | None = None,
    engine: bool | None = None,
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
        name=name,
        keep=keep,
        engine=engine,
    )
    try:
        yield container
    finally:
        if not keep:
            container.remove()


def container_name(host: str, snapshot: str) -> str:
    """``drkit-drill-<host>-<snapshot>``, each run of characters Docker does not allow in a
    name (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``) replaced by ``-``."""
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"drkit-drill-{host}-{snapshot}")


def _run(
    args: list[str], image: str, name: str | None, host: str, env: dict[str, str],
    timeout: float,
) -> tuple[str, str]:  # fmt: skip
    """``docker run ARGS [--name N] IMAGE``: (container id, name or "")."""
    what = f"start {host}'s drill container"
    if name is None:
        return docker(*args, image, env=env, timeout=timeout, what=what).stdout.decode().strip(), ""
    for _attempt in range(3):  # another drill may take the name between claim and run
        chosen = claim_name(name, host)
        try:
            done = docker(*args, "--name", chosen, image, env=env, timeout=timeout, what=what)
        except DockerError as exc:
            if "is already in use" in str(exc):
                continue
            raise
        return done.stdout.decode().strip(), chosen
    raise DockerError(f"{what}: the names {name}(-N) were taken as fast as they were freed")


def claim_name(name: str, host: str) -> str:
    """``name`` when no container holds it or a killed drill of ``host`` on this machine
    left the one that does (removed here, with its drill network); else the first
    free ``name-2``, ``name-3``... (see the module doc)."""
    for n in itertools.count(1):
        candidate = name if n == 1 else f"{name}-{n}"
        done = docker("container", "inspect", candidate, check=False, timeout=30)
        if done.returncode != 0:
            if b"No such container" in done.stderr:
                return candidate
            raise DockerError(f"docker container inspect {candidate}: {tail(done.stderr)}")
        [info] = json.loads(done.stdout)
        if _left_by_killed_drill(info, host):
            _remove_leftover(info, host)
            return candidate
    raise AssertionError("unreachable")


def _left_by_killed_drill(info: Mapping[str, Any], host: str) -> bool:
    """Whether ``docker container inspect``'s ``info`` is a drill container of ``host``,
    not kept, whose drill is over: it stopped, or the drkit on this machine that
    started it has gone."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(DRILL_LABEL) != "1" or labels.get(HOST_LABEL) != host or KEEP_LABEL in labels:
        return False
    if (info.get("State") or {}).get("Status") in ("exited", "dead"):
        return True  # e.g. after a reboot: nothing uses a stopped drill container
    machine, _, rest = str(labels.get(OWNER_LABEL, "")).partition(":")
    pid, _, start = rest.partition(":")
    if machine != _machine() or not pid.isdigit():
        return False  # another machine's drill, or not ours to judge: leave it
    return _process_start(int(pid)) != start


def _remove_leftover(info: Mapping[str, Any], host: str) -> None:
    """Remove a killed drill's container and its drill network."""
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    drill_networks = [n for n in networks if _drill_network(n)]
    name = str(info.get("Name", "")).lstrip("/")
    network = drill_networks[0] if drill_networks else None
    HostContainer(str(info["Id"]), host, "", {}, name=name, network=network).remove()


def _drill_network(name: str) -> bool:
    done = docker("network", "inspect", "--format", "{{json .Labels}}", name, check=False)
    return done.returncode == 0 and (json.loads(done.stdout) or {}).get(DRILL_LABEL) == "1"


def owner() -> str:
    """``<machine>:<pid>:<start>`` of this process (``OWNER_LABEL``)."""
    return f"{_machine()}:{os.getpid()}:{_process_start(os.getpid()) or ''}"


def _machine() -> str:
    """This boot of this machine: the kernel's boot id (the host name without /proc)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, from /proc), "" when it runs
    but /proc does not say, None when no such process runs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        if Path("/proc/self/stat").exists():
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


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
                f"{container.label}: the container {state} (exit {code}) before it was "
                f"ready (console: {save_console(container)}):\n{container.logs()}"
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
            if container.engine and not marker:
                what += f" (or its own Docker engine: {ENGINE_LOG} in the container)"
            raise DockerError(
                f"{container.label}: {what} in time (console: {save_console(container)}):\n"
                f"{container.logs()}"
            )
        time.sleep(0.2)


def save_console(container: HostContainer) -> Path:
    """The container's whole console (``docker logs``) in ``<state dir>/docker/``, kept
    after the container is removed: what to read when it did not start."""
    path = state_dir() / "docker" / f"console-{container.name or container.id[:12]}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = docker("logs", container.id, check=False, timeout=60)
    path.write_bytes(done.stdout + done.stderr)
    return path


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


# A drill network with no container is a killed drill's (between ``network create`` and
# ``docker run``) once it is this old; a younger one may be a starting drill's.
ORPHAN_NETWORK_AGE = dt.timedelta(minutes=10)


def sweep_leftovers(host: str, log: Log) -> list[str]:
    """Remove what killed drills of ``host`` on this machine left (kill -9, a power cut:
    no ``finally`` ran): their containers (``drills/container.py`` judges by the owner
    label: stopped, or the drkit that started it is gone; kept ones stay) with their
    networks, and drill networks of ``host`` no container uses, older than
    ``ORPHAN_NETWORK_AGE``. The container name of a new drill frees only that name; a
    killed drill of another snapshot had another. Logged; a failure to sweep is said and
    left to the next drill (the drill itself does not need it). Returns what went."""
    labels = ["--filter", f"label={DRILL_LABEL}=1", "--filter", f"label={HOST_LABEL}={host}"]
    removed: list[str] = []
    try:
        ids = docker("ps", "-a", "-q", *labels, what="list drill containers").stdout.split()
        for cid in ids:
            done = docker("container", "inspect", cid.decode(), check=False, timeout=30)
            if done.returncode != 0:  # gone meanwhile
                continue
            [info] = json.loads(done.stdout)
            if _left_by_killed_drill(info, host):
                _remove_leftover(info, host)
                removed.append(f"container {str(info.get('Name', cid)).lstrip('/')}")
        nets = docker("network", "ls", "-q", *labels, what="list drill networks").stdout.split()
        now = dt.datetime.now(dt.UTC)
        for nid in nets:
            done = docker("network", "inspect", nid.decode(), check=False, timeout=30)
            if done.returncode != 0:
                continue
            [net] = json.loads(done.stdout)
            created = dt.datetime.fromisoformat(str(net.get("Created", "")).replace("Z", "+00:00"))
            if not net.get("Containers") and now - created > ORPHAN_NETWORK_AGE:
                remove_network(str(net["Name"]))
                removed.append(f"network {net['Name']}")
    except (DockerError, ValueError, KeyError) as exc:
        log(f"{host}: leftovers of killed drills not swept ({exc}); the next drill tries again")
    if removed:
        log(f"{host}: removed what a killed drill left: {', '.join(removed)}")
    return removed
