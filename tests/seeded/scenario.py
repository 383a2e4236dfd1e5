"""One seeded host's scenario, end to end: seed, back up with the shipped policy, restore
onto a fresh host and drill, the restore and the drill running side by side.

``run_scenario()`` starts two containers of the host's image (the source, then the
fresh target, in the background), seeds the source with the caller's ``seed``,
backs it up over SSH with ``policies/<host>.toml`` rewritten by ``policy.py``,
hands the snapshot's facts to ``check_facts``, then starts ``drkit drill --host``
(its own container, with the shipped ``restore_drills/``) and meanwhile runs
``drkit restore --target ssh://USER@...`` onto the fresh container with no
--force, handing the result and the container to ``check_target`` before it is
removed. The fresh target's Caddyfile is Debian's package default: the restore
replaces it without --force (issue 15 item 3). The drill's result is returned for
the caller to assert.

A host whose image cannot run some of its policy's sources (e2i-droplet: the provider
snapshot, which asks DigitalOcean's API) backs up and restores only ``only`` (``backup
--only``, ``restore --only``). Containers of an image with a Docker engine of its own
(e2i-droplet) run it, with the host's containers, in all three: source, target, drill.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.drills.container import HostContainer
from tests.e2e.test_shipped_vultr import is_package_default, not_passed, snapshot_facts
from tests.helpers import CliResult, drkit
from tests.seeded.containers import host_containers, ssh_login, write_known_hosts
from tests.seeded.policy import DRILLS, encryption_files, shipped_policy, ssh_connection

TARGET_PREFIX = "fresh-"  # the target container's host name: fresh-<host>


@dataclass
class Phases:
    """Seconds per phase of a scenario, printed at the end (``pytest -s``)."""

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    _clock: float = field(default_factory=time.monotonic)
    _started: float = field(default_factory=time.monotonic)

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = now - self._clock
        self._clock = now

    def report(self) -> str:
        self.seconds["total"] = time.monotonic() - self._started
        return f"{self.name} phases (s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in self.seconds.items()
        )


def run_scenario(
    host: str,
    tmp_path: Path,
    keys: Any,
    phases: Phases,
    *,
    seed: Callable[[HostContainer], None],
    check_facts: Callable[[dict[str, Any]], None],
    check_target: Callable[[CliResult, HostContainer], None],
    user: str = "root",
    box_env: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    package_defaults: Sequence[tuple[str, str]] = (("/etc/caddy/Caddyfile", "caddy"),),
    only: Sequence[str] = (),
    prepare_target: Callable[[HostContainer], None] = lambda _box: None,
    restore_args: Sequence[str] = (),
) -> CliResult:
    """The scenario of the module doc for ``host`` (its image: ``docker/hosts/<host>``),
    logging in as ``user`` on both containers; ``box_env``: the containers' entrypoint
    environment; ``env``: drkit's (e.g. a credential the policy references);
    ``package_defaults``: (path, package) of files the fresh target holds as the package
    shipped them (asserted before the restore, which replaces them without --force);
    ``only``: the sources backed up and restored (default: all; module doc);
    ``prepare_target``: run on the fresh target before the restore (what a fresh machine of
    the host holds before drkit, e.g. the service passwords its setup sets);
    ``restore_args``: more ``restore`` options (e.g. ``--pg-port``). Returns ``drkit drill
    --host HOST --json``'s result."""
    login = ssh_login(tmp_path / "ssh")
    target_name = TARGET_PREFIX + host
    with host_containers(host, [host, target_name], login, user=user, env=box_env) as boxes:
        source = boxes[host]
        phases.mark("source container")
        seed(source)
        phases.mark("seed")

        policies = tmp_path / "policies"
        known = write_known_hosts(tmp_path / "known_hosts", source)
        policy = shipped_policy(
            host,
            policies,
            connection=ssh_connection(source.port(22), login.identity, known, user=user),
            repository={"url": (tmp_path / "repo").as_uri()},
            encryption=encryption_files(tmp_path, host, keys.recipient),
        )
        cli_env = {**(env or {}), "DRKIT_POLICY_DIR": str(policies)}
        ident = ["--identity", str(keys.identity_file)]
        only_args = [a for name in only for a in ("--only", name)]
        backup = drkit("backup", "--host", host, *only_args, env=cli_env)
        assert backup.returncode == 0, backup.output
        phases.mark("backup")
        boxes.remove(host)  # in the background: nothing more is read from it
        check_facts(snapshot_facts(policy, keys.identity_file))

        with ThreadPoolExecutor(1) as pool:
            drill_run = pool.submit(
                drkit,
                "drill",
                "--host",
                host,
                "--drills-dir",
                str(DRILLS),
                *ident,
                "--json",
                env=cli_env,
            )
            drill_started = time.monotonic()
            target = boxes[target_name]
            phases.mark("target container (waited)")
            for path, package in package_defaults:
                assert is_package_default(target, path, package), path
            prepare_target(target)
            restored = drkit(
                "restore",
                "--host",
                host,
                *only_args,
                *restore_args,
                "--target",
                f"ssh://{user}@127.0.0.1:{target.port(22)}",
                "--target-identity",
                str(login.identity),
                "--target-known-hosts",
                str(tmp_path / "target_known_hosts"),
                "--accept-new-host-key",
                *ident,
                "--yes",
                "--json",
                env=cli_env,
            )
            phases.mark("restore")
            check_target(restored, target)
            phases.mark("restore checks")
            boxes.remove(target_name)
            drill = drill_run.result()
            phases.seconds["drill (alongside)"] = time.monotonic() - drill_started
        phases.mark("drill (waited)")
    phases.mark("containers removed")
    return drill


def passed_report(res: CliResult, *, drill: bool) -> dict[str, Any]:
    """The JSON report of a restore (or of the only host of a drill) that exited 0 with
    verdict pass; AssertionError naming every check that did not pass otherwise."""
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    report: dict[str, Any] = out["drills"][0] if drill else out
    assert report["verdict"] == "pass", not_passed(report) or res.output
    return report


def assert_caddy_facts(caddy: dict[str, Any], fingerprints: dict[str, str]) -> None:
    """A caddy source's facts hold a certificate with its key per name of
    ``fingerprints`` (domain -> sha256) and a site on 443 served with it."""
    certs = {c["domain"]: c for c in caddy["certificates"]}
    assert {d: c["sha256"] for d, c in certs.items()} == fingerprints, caddy
    assert all(c["has_key"] and c["names"] == [d] for d, c in certs.items()), caddy
    sites = {(s["name"], s["port"], s["sha256"]) for s in caddy["sites"]}
    assert sites == {(d, 443, sha) for d, sha in fingerprints.items()}, caddy["sites"]
