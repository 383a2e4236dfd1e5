"""`drkit drill --all` over three small hosts, one of which fails.

Three hosts are backed up here through the real CLI (local connections, real
PostgreSQL and nats-server), then `drkit --policy-dir D drill --all` rebuilds
each in its own container:

- visualkit-hetzner (Caddy + .env files): one byte of its env artifact is
  flipped in the repository, so its drill must fail naming that object;
- conversational-platform (NATS JetStream + .env): the stream comes back with
  the same message count and sequences;
- e2i-droplet (PostgreSQL with roles): its drill policy logs in as
  `enunez` (as policies/e2i-droplet.toml does), so the container creates that
  user with passwordless sudo and the restore runs as the policy says.

The failure must neither hide nor stop the other two: exit 4, and the JSON,
JUnit and Markdown reports hold all three. The images are built (or found)
once by a fixture, so the drill itself must report them as cached, with
their time apart from the RTO.

Needs a Docker engine (scripts/docker-setup.sh); skipped off CI without one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import nats
import pytest

from tests.drills.test_drill import cert_pem
from tests.helpers import drkit, load_callmeback, write_policy
from tests.servers.nats import NatsServer, nats_server
from tests.servers.postgres import PgServer

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]

HOSTS = ["conversational-platform", "e2i-droplet", "visualkit-hetzner"]
MESSAGES = 25


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """The three hosts' images, built here at most once (the drill must find them)."""
    from drkit.drills.engine import DockerError, ensure_engine, stop_engine
    from drkit.drills.images import ensure_base_image, ensure_host_image

    try:
        running = ensure_engine()
    except DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the drills, but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine can be started here: {exc}")
    base = ensure_base_image()
    yield {h: ensure_host_image(h, base_tag=base.tag).tag for h in HOSTS}
    stop_engine(running)


@pytest.fixture
def nats_host() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


async def _load_orders(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    for i in range(1, MESSAGES + 1):
        await js.publish(f"orders.{i % 3}", f"order {i}".encode())
    await nc.close()


def env_file(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o600)


def ssh_connection(user: str) -> str:
    """A policy's [connection] to a host that is never contacted (a drill restores into
    a container); only its login user matters to the drill."""
    return f'[connection]\ntype = "ssh"\naddress = "drilled-host.invalid"\nuser = "{user}"\n'


def setup_hosts(
    tmp: Path, pg: PgServer, nats_host: NatsServer, keys, uniq: str
) -> tuple[Path, Path]:
    """Data, backup policies (local) and drill policies (the policy dir) of the three hosts.

    Returns (policy dir for --all, drills dir).
    """
    repo = {"url": (tmp / "repo").as_uri()}
    backup_dir, policy_dir, drills = tmp / "backup-policies", tmp / "policies", tmp / "drills"
    for d in (backup_dir, policy_dir, drills):
        d.mkdir()
    roots = {h: tmp / h for h in HOSTS}

    # visualkit-hetzner: Caddy (config + a certificate valid 60 more days) and app .env files.
    vk = roots["visualkit-hetzner"]
    env_file(vk / "opt/platform-api/.env", "PORT=3001\nDATABASE_URL=postgres://x\n")
    env_file(vk / "opt/vk-agent/.env", "LIVEKIT_URL=wss://x\n")
    domain = "api.example.invalid"
    certs = vk / "caddy/data/certificates/acme-v02.api.letsencrypt.org-directory" / domain
    certs.mkdir(parents=True)
    pem, key = cert_pem(domain, dt.datetime.now(dt.UTC) + dt.timedelta(days=60))
    (certs / f"{domain}.crt").write_bytes(pem)
    (certs / f"{domain}.key").write_bytes(key)
    (vk / "caddy/etc").mkdir()
    (vk / "caddy/etc/Caddyfile").write_text(f"{domain} {{\n\treverse_proxy 127.0.0.1:3001\n}}\n")
    vk_sources = [
        {"kind": "caddy", "name": "caddy", "config_paths": [str(vk / "caddy/etc")],
         "data_dir": str(vk / "caddy/data")},
        {"kind": "env", "name": "env", "paths": [f"{vk}/opt/*/.env"]},
    ]  # fmt: skip
    (drills / "visualkit-hetzner.toml").write_text(
        f'host = "visualkit-hetzner"\n[[env]]\npath = "{vk}/opt/platform-api/.env"\n'
        'keys = ["PORT", "DATABASE_URL"]\n'
    )

    # conversational-platform: a JetStream stream and the platform's .env.
    cp = roots["conversational-platform"]
    asyncio.run(_load_orders(nats_host.url))
    env_file(cp / "opt/conversational-platform/config/.env", "NATS_TOKEN=t\nJWT_SECRET=j\n")
    cp_sources = [
        {"kind": "nats", "name": "jetstream", "url": nats_host.url, "streams": "all"},
        {"kind": "env", "name": "env",
         "paths": [str(cp / "opt/conversational-platform/config/.env")]},
    ]  # fmt: skip

    # e2i-droplet: a database whose owner role only the globals artifact brings back
    # (restored by enunez through sudo -u postgres).
    db = f"e2i_{uniq}"
    load_callmeback(pg, db, f"e2i_owner_{uniq}", "pw")
    e2i_sources = [
        {"kind": "postgres", "name": "supabase", "database": db, "host": "127.0.0.1",
         "port": pg.port, "user": "postgres", "globals": True},
    ]  # fmt: skip
    (drills / "e2i-droplet.toml").write_text(
        'host = "e2i-droplet"\n'
        '[[sql]]\nname = "calls came back"\nsource = "supabase"\n'
        'query = "SELECT count(*) FROM calls"\nexpect = "3000"\n'
        '[[command]]\nname = "logged in as the policy user"\nrun = ["id", "-un"]\n'
        'contains = "enunez"\n'
    )

    sources = {"visualkit-hetzner": vk_sources, "conversational-platform": cp_sources,
               "e2i-droplet": e2i_sources}  # fmt: skip
    for host, srcs in sources.items():
        write_policy(backup_dir / f"{host}.toml", host, repo, [keys.recipient], srcs)
        # The drilled policy describes the real host: e2i-droplet is reached over SSH as
        # enunez (never contacted here: a drill restores into a container, not the host).
        extra = ssh_connection("enunez") if host == "e2i-droplet" else ""
        write_policy(policy_dir / f"{host}.toml", host, repo, [keys.recipient], srcs, extra)
    return policy_dir, drills


def test_drill_all_reports_every_host_when_one_fails(
    images: dict[str, str],
    pg: PgServer,
    nats_host: NatsServer,
    uniq: str,
    keys,
    tmp_path: Path,
) -> None:
    policy_dir, drills = setup_hosts(tmp_path, pg, nats_host, keys, uniq)
    # The nats helper runs with python3 from PATH; prefer the system one (fast start).
    env = {"PATH": "/usr/bin" + os.pathsep + os.environ.get("PATH", "")}
    for host in HOSTS:
        policy = tmp_path / "backup-policies" / f"{host}.toml"
        drkit("backup", "--policy", str(policy), env=env, check=True)

    # One flipped byte in visualkit-hetzner's env artifact.
    [artifact] = (tmp_path / "repo" / "visualkit-hetzner" / "snapshots").glob("*/env/*")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    report_dir, junit = tmp_path / "report", tmp_path / "junit.xml"
    res = drkit("--policy-dir", str(policy_dir), "drill", "--all", "--drills-dir", str(drills),
                "--identity", str(keys.identity_file), "--report", str(report_dir),
                "--junit", str(junit), "--json", env=env)  # fmt: skip
    assert res.returncode == 4, res.output
    reports = {r["host"]: r for r in json.loads(res.stdout)["drills"]}
    assert sorted(reports) == HOSTS, res.output

    # The broken host fails, naming the object and why.
    broken = reports["visualkit-hetzner"]
    assert broken["verdict"] == "fail"
    # A whole artifact fails its digest; a chunk index (dedup, the default) its own check.
    named_why = ("digest", "chunk index")
    assert f"/env/{artifact.name}" in broken["error"], broken
    assert any(why in broken["error"] for why in named_why), broken

    # The others still ran to the end and passed.
    for host in ("conversational-platform", "e2i-droplet"):
        r = reports[host]
        assert (r["verdict"], r["error"]) == ("pass", None), json.dumps(r, indent=1)
        assert r["checks"] and all(c["status"] == "pass" for c in r["checks"])
    nats_checks = {c["name"]: c for c in reports["conversational-platform"]["checks"]}
    assert nats_checks["stream ORDERS"]["status"] == "pass"
    detail = nats_checks["stream ORDERS"]["detail"]
    assert detail.startswith(f"{MESSAGES} messages, seq 1-{MESSAGES}"), detail
    e2i = {c["name"]: c for c in reports["e2i-droplet"]["checks"]}
    assert e2i["logged in as the policy user"]["status"] == "pass"
    assert e2i["calls came back"]["status"] == "pass"

    # Image time apart from the RTO; unchanged images were not rebuilt by the drill.
    for host, r in reports.items():
        assert r["image"] == images[host]
        assert r["image_built"] is False and r["image_build_seconds"] < 60
        if r["error"] is None:
            assert r["rto_seconds"] > 0 and r["rpo_seconds"] >= 0

    # Every report carries every host.
    written = sorted(p.name.rsplit("-", 2)[0] for p in report_dir.glob("*.json"))
    assert written == HOSTS
    md = (report_dir / "drill-summary.md").read_text()
    assert "| visualkit-hetzner | **FAIL**" in md and any(why in md for why in named_why)
    assert "| conversational-platform | **PASS**" in md and "| e2i-droplet | **PASS**" in md
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    assert sorted(suites) == [f"drill {h}" for h in HOSTS]
    assert suites["drill visualkit-hetzner"].find("testcase/error") is not None
    assert suites["drill e2i-droplet"].get("failures") == "0"
    # ... and each verdict is stored in the repository.
    for host in HOSTS:
        assert list((tmp_path / "repo" / host / "drills").glob("*.json")), host


def test_drill_as_a_sudo_user_restores_root_owned_files(
    images: dict[str, str], keys, tmp_path: Path
) -> None:
    """A policy that logs in as `admin` and reads root's files with sudo_user = "root":
    the drill does the same in the container, and the files come back root-owned."""
    host = "visualkit-hetzner"
    root = tmp_path / host
    env_file(root / "opt/platform-api/.env", "PORT=3001\n")
    repo = {"url": (tmp_path / "repo").as_uri()}
    sources = [{"kind": "env", "name": "env", "paths": [f"{root}/opt/*/.env"], "sudo_user": "root"}]
    backup = write_policy(tmp_path / "backup.toml", host, repo, [keys.recipient], sources)
    drilled = write_policy(
        tmp_path / "drilled.toml", host, repo, [keys.recipient], sources, ssh_connection("admin")
    )
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / f"{host}.toml").write_text(
        f'host = "{host}"\n[[command]]\nname = "login"\nrun = ["id", "-un"]\ncontains = "admin"\n'
        f'[[file]]\npath = "{root}/opt/platform-api/.env"\nowner = "root"\nmode = "0600"\n'
    )
    drkit("backup", "--policy", str(backup), check=True)
    res = drkit("drill", "--policy", str(drilled), "--drills-dir", str(drills),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    [report] = json.loads(res.stdout)["drills"]
    assert (res.returncode, report["verdict"], report["error"]) == (0, "pass", None), report
