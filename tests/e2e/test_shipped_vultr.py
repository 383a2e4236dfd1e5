"""Issue 15 item 4 for the vultr box: the shipped policy, a seeded host, a restore that serves.

A container of the vultr drill image is seeded as seeds 000 and 003 describe
the box (tests/seeded/vultr.py: callmeback with its owner and a service role,
four apps with their .env under PM2, Caddy serving three sites with their
certificates). It is backed up over SSH with ``policies/vultr.toml`` as
shipped but for ``[connection]``, ``[repository]`` and ``[encryption]``
(tests/seeded/policy.py), then:

- the snapshot's facts hold the three certificates with their fingerprints,
  the four env files, the four PM2 apps, every table with its rows and both
  roles;
- ``drkit restore --target`` onto a FRESH container of the same image (its
  Caddyfile is Debian's package default; no --force) passes, and the fresh
  host then serves like the source: same tables, roles that log in with the
  restored .env passwords (each database app's /health queries through its
  role), env files byte for byte, PM2 apps online, every /health answering,
  HTTPS through Caddy for each site with the SAME certificate fingerprint;
- ``drkit drill --host vultr`` with the shipped restore_drills/vultr.toml
  passes, live probes included (run alongside the restore: it makes its own
  container).

One source and one target container (started one after the other in the
background, each removed in the background once done with, or at the end
whatever happened); the drill's container is the drill's own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from drkit.actions.artifact_read import read_facts
from drkit.actions.repository_access import open_repository
from drkit.actions.snapshot_select import select_snapshot
from drkit.drills.container import HostContainer
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy
from tests.drills.test_drill import engine
from tests.e2e.test_vultr_acceptance import checksums, key_names, sql_in
from tests.helpers import CliResult, drkit
from tests.seeded.containers import host_containers, ssh_login, write_known_hosts
from tests.seeded.policy import DRILLS, encryption_files, shipped_policy, ssh_connection
from tests.seeded.vultr import (
    DATABASE,
    HOST,
    OWNER,
    PM2_HOME,
    PORTS,
    SERVICE_ROLE,
    SITES,
    VultrSeed,
    expected_serving,
    seed_vultr,
    serving,
    sql,
)

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

SOURCE, TARGET = "vultr", "fresh-vultr"  # the containers' host names


def snapshot_facts(policy: Path, identity: Path) -> dict[str, Any]:
    """The newest snapshot's facts, decrypted with ``identity``."""
    loaded = load_policy(policy)
    repo = open_repository(loaded)
    manifest = select_snapshot(repo, loaded.host)
    return read_facts(repo, manifest, load_identities(identity))


def roles(box: HostContainer) -> dict[str, bool]:
    """The seeded roles that exist, with whether they may log in."""
    out = sql(
        box,
        f"SELECT rolname, rolcanlogin FROM pg_roles "
        f"WHERE rolname IN ('{OWNER}', '{SERVICE_ROLE}') ORDER BY 1;",
    )
    return {name: flag == "t" for name, flag in (ln.split("|") for ln in out.split())}


def env_state(box: HostContainer, paths: list[str]) -> dict[str, tuple[str, str]]:
    """path -> ("<mode> <owner>:<group>", content) inside the container."""
    out = {}
    for path in paths:
        st = box.exec(["stat", "-c", "%a %U:%G", path]).stdout.decode().strip()
        out[path] = (st, box.exec(["cat", path]).stdout.decode())
    return out


def is_package_default(box: HostContainer, path: str, package: str) -> bool:
    """Whether ``path`` is ``package``'s dpkg conffile with its shipped md5."""
    listed = box.exec(["dpkg-query", "-W", "-f=${Conffiles}", package]).stdout.decode()
    shipped = {f[0]: f[1] for f in (ln.split() for ln in listed.splitlines()) if len(f) >= 2}
    current = box.exec(["md5sum", path]).stdout.decode().split()[0]
    return shipped.get(path) == current


def checks_by_name(report: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(c["source"], c["name"]): (c["status"], c["detail"]) for c in report["checks"]}


def not_passed(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['source']}: {c['name']}: [{c['status']}] {c['detail']}"
        for c in report["checks"]
        if c["status"] != "pass"
    ]


@pytest.fixture
def timings() -> Iterator[dict[str, float]]:
    """Seconds per phase, printed at the end (``-s``) to keep the test's wall time honest."""
    marks: dict[str, float] = {}
    started = time.monotonic()
    yield marks
    marks["total"] = time.monotonic() - started
    print("\ntest_shipped_vultr phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))


def test_shipped_vultr_policy_backs_up_a_seeded_host_restores_and_drills_it(
    engine: None, keys: Any, tmp_path: Path, timings: dict[str, float]
) -> None:
    clock = time.monotonic()

    def mark(phase: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[phase] = now - clock
        clock = now

    login = ssh_login(tmp_path / "ssh")
    with host_containers("vultr", [SOURCE, TARGET], login) as boxes:
        source = boxes[SOURCE]
        mark("source container")
        seed = seed_vultr(source)
        mark("seed")
        source_sums = checksums(lambda q: sql_in(source, DATABASE, q))
        calls = int(sql(source, "SELECT count(*) FROM calls;", DATABASE))

        # ---- backup over SSH with the shipped policy ------------------------------------
        policies = tmp_path / "policies"
        policy = shipped_policy(
            HOST,
            policies,
            connection=ssh_connection(
                source.port(22), login.identity, write_known_hosts(tmp_path / "known_hosts", source)
            ),
            repository={"url": (tmp_path / "repo").as_uri()},
            encryption=encryption_files(tmp_path, HOST, keys.recipient),
        )
        env = {"DRKIT_POLICY_DIR": str(policies)}
        ident = ["--identity", str(keys.identity_file)]
        backup = drkit("backup", "--host", HOST, env=env)
        assert backup.returncode == 0, backup.output
        mark("backup")
        boxes.remove(SOURCE)  # in the background: nothing more is read from it
        assert_facts(snapshot_facts(policy, keys.identity_file), seed, source_sums)

        # ---- the drill runs meanwhile, in a container of its own ------------------------
        with ThreadPoolExecutor(1) as pool:
            drill_run = pool.submit(
                drkit,
                "drill",
                "--host",
                HOST,
                "--drills-dir",
                str(DRILLS),
                *ident,
                "--json",
                env=env,
            )
            drill_started = time.monotonic()

            # ---- restore onto a fresh host of the same image ----------------------------
            target = boxes[TARGET]
            mark("target container (waited)")
            # The fresh host's Caddyfile is Debian's untouched default: replaced without
            # --force (issue 15 item 3), and nothing else there is live data.
            assert is_package_default(target, "/etc/caddy/Caddyfile", "caddy")
            dest = f"ssh://root@127.0.0.1:{target.port(22)}"
            restored = drkit(
                "restore",
                "--host",
                HOST,
                "--target",
                dest,
                "--target-identity",
                str(login.identity),
                "--target-known-hosts",
                str(tmp_path / "target_known_hosts"),
                "--accept-new-host-key",
                *ident,
                "--yes",
                "--json",
                env=env,
            )
            mark("restore")
            assert_restored(restored, target, seed, source_sums, calls)
            mark("restore checks")
            boxes.remove(TARGET)
            drill = drill_run.result()
            timings["drill (alongside)"] = time.monotonic() - drill_started
        assert_drill(drill)
        mark("drill (waited)")
    mark("containers removed")


def assert_facts(facts: dict[str, Any], seed: VultrSeed, source_sums: dict[str, str]) -> None:
    """The snapshot's facts describe the seeded host."""
    caddy = facts["caddy"]
    certs = {c["domain"]: c for c in caddy["certificates"]}
    assert {d: c["sha256"] for d, c in certs.items()} == seed.fingerprints, caddy
    assert all(c["has_key"] and c["names"] == [d] for d, c in certs.items()), caddy
    assert {(s["name"], s["port"], s["sha256"]) for s in caddy["sites"]} == {
        (d, 443, sha) for d, sha in seed.fingerprints.items()
    }, caddy["sites"]
    assert "/etc/caddy/Caddyfile" in ["/" + p.lstrip("/") for p in caddy["config_files"]]

    env_files = {"/" + f["path"].lstrip("/"): f for f in facts["env"]["env_files"]}
    assert set(env_files) == set(seed.env_files)
    for path, content in seed.env_files.items():
        assert env_files[path]["keys"] == key_names(content), path
        assert (env_files[path]["mode"], env_files[path]["owner"]) == ("0600", "root"), path

    pm2 = facts["pm2"]
    assert sorted(a["name"] for a in pm2["apps"]) == sorted(PORTS), pm2["apps"]
    assert pm2["pm2_home"] == PM2_HOME and pm2["user"] == "root"

    pg = facts["callmeback"]
    rows = {t: int(s.split(":")[0]) for t, s in source_sums.items()}
    assert pg["database"] == DATABASE
    assert {t.split(".")[-1]: n for t, n in pg["tables"].items()} == {
        t.split(".")[-1]: n for t, n in rows.items()
    }, pg["tables"]
    assert {OWNER, SERVICE_ROLE} <= set(pg["roles"]), pg["roles"]


def assert_restored(
    res: CliResult, target: HostContainer, seed: VultrSeed, sums: dict[str, str], calls: int
) -> None:
    """The restore passed and the fresh host serves what the source served."""
    assert res.returncode == 0, res.output
    report = json.loads(res.stdout)
    assert report["verdict"] == "pass", not_passed(report) or res.output
    checks = checks_by_name(report)
    for domain, sha in seed.fingerprints.items():
        probe = checks.get(("caddy", f"https {domain}"))
        assert probe is not None and probe[0] == "pass", (domain, sha, report["checks"])

    assert checksums(lambda q: sql_in(target, DATABASE, q)) == sums
    assert roles(target) == {OWNER: True, SERVICE_ROLE: True}
    owner = sql(
        target, f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DATABASE}';"
    )
    assert owner.strip() == OWNER
    paths = sorted(seed.env_files)
    assert env_state(target, paths) == {p: ("600 root:root", seed.env_files[p]) for p in paths}
    # Served: PM2 apps online, each /health (the database apps log in with the restored
    # .env passwords), HTTPS through Caddy, and the backed-up certificate for each site.
    assert serving(target) == expected_serving(seed, calls)


def assert_drill(res: CliResult) -> None:
    """`drkit drill --host vultr` passed, with the shipped drill file's checks and the
    live probes of each site."""
    assert res.returncode == 0, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "pass", not_passed(report) or report
    checks = checks_by_name(report)
    assert checks[("drill", "db-proxy answers /health")][0] == "pass"
    assert checks[("drill", "Caddyfile is valid")][0] == "pass"
    assert checks[("drill", "callmeback answers queries")][0] == "pass"
    for domain in SITES:
        probe = checks.get(("caddy", f"https {domain}"))
        assert probe is not None and probe[0] == "pass", (domain, report["checks"])
    for app in PORTS:
        assert checks[("pm2", f"app {app}")][0] == "pass", app
