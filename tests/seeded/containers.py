"""Containers of a host's drill image for the seeded scenarios, and SSH logins into them.

``host_containers()`` starts a scenario's containers in the background, one
after the other (with vfs each start copies the whole image, ~20 s for vultr:
the later ones overlap the seeding and the backup), and removes each one when
the test says it is done with it, or at exit whatever happened. Containers are on drkit's
isolated network (no route beyond this machine, no DNS): a seeded Caddy must
never ask Let's Encrypt for anything.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from drkit.drills.container import HostContainer, start_container
from drkit.drills.images import ensure_base_image, ensure_host_image


@dataclass(frozen=True)
class Login:
    """An SSH key pair made for one test: ``identity`` (private) and its ``public`` line."""

    identity: Path
    public: str


def ssh_login(directory: Path, comment: str = "drkit-seeded-test") -> Login:
    """A new ed25519 key pair under ``directory`` (ssh-keygen, no passphrase)."""
    directory.mkdir(parents=True, exist_ok=True)
    identity = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(identity)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return Login(identity, identity.with_suffix(".pub").read_text().strip())


def write_known_hosts(path: Path, *boxes: HostContainer) -> Path:
    """A known_hosts file pinning each container's host key at its published ssh port."""
    path.write_text("".join(box.known_hosts_line() for box in boxes))
    path.chmod(0o600)
    return path


def _start(
    image: str, hostname: str, login: Login, user: str, env: Mapping[str, str] | None
) -> HostContainer:
    tag = ensure_host_image(image, base_tag=ensure_base_image().tag).tag
    return start_container(tag, host=hostname, authorized_keys=login.public, ssh_user=user, env=env)


def _remove(started: Future[HostContainer]) -> None:
    # Waits for a start still under way; one that failed removed its container itself.
    if started.exception() is None:
        started.result().remove()


class Boxes:
    """The scenario's containers by hostname: ``boxes[name]`` waits for its start;
    ``remove(name)`` removes it in the background as soon as it is no longer needed."""

    def __init__(self, starts: dict[str, Future[HostContainer]], pool: ThreadPoolExecutor):
        self._starts = starts
        self._pool = pool
        self._removals: dict[str, Future[None]] = {}

    def __getitem__(self, hostname: str) -> HostContainer:
        assert hostname not in self._removals, f"{hostname}'s container was removed"
        return self._starts[hostname].result()

    def remove(self, hostname: str) -> None:
        if hostname not in self._removals:
            self._removals[hostname] = self._pool.submit(_remove, self._starts[hostname])

    def remove_all(self) -> None:
        """Remove every container (those not removed yet), and wait until all are gone."""
        for hostname in self._starts:
            self.remove(hostname)
        for removal in self._removals.values():
            removal.result()


@contextmanager
def host_containers(
    image: str,
    hostnames: list[str],
    login: Login,
    *,
    user: str = "root",
    env: Mapping[str, str] | None = None,
) -> Iterator[Boxes]:
    """A container of ``docker/hosts/<image>`` per hostname (its name inside), ``user``'s
    login by ``login`` (another user than root gets passwordless sudo), the entrypoint's
    environment ``env`` (e.g. ``DRKIT_NATS_ARGS``), started one after the other in the
    background in the order given (two vfs copies at once take as long as one after the
    other, so the first is ready sooner). At exit each is removed (in parallel: vfs takes
    tens of seconds per container), whatever happened, once its start finished."""
    with ThreadPoolExecutor(1) as starter, ThreadPoolExecutor(len(hostnames)) as remover:
        starts = {n: starter.submit(_start, image, n, login, user, env) for n in hostnames}
        boxes = Boxes(starts, remover)
        try:
            yield boxes
        finally:
            boxes.remove_all()
