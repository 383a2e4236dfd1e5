"""drkit drill end to end: a vultr-like host backed up here, rebuilt in a fresh container.

Needs a Docker engine (scripts/docker-setup.sh). Off CI the tests skip when none
can be started; in CI (CI=true) that is a failure, so a drill can't silently
not run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import forge
from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, load_callmeback, write_policy
from tests.servers.pm2 import Pm2Home, bin_path_env, pm2_home, write_apps
from tests.servers.ports import free_port
from tests.servers.postgres import PgServer

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    from drkit.drills.engine import DockerError, ensure_engine, stop_engine

    try:
        running = ensure_engine()
    except DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the drills, but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine can be started here: {exc}")
    yield
    stop_engine(running)


def cert_pem(name: str, not_after: dt.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=90)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


SERVICES = ("voice-pipeline", "db-proxy", "log-query-service", "deepgram-proxy")  # seed 000
PM2_APPS = ("voice-pipeline", "db-proxy")  # two of them run under PM2 here: small HTTP apps


def vultr_like(
    base: Path, pg: PgServer, uniq: str, *, cert_days: int, apps: tuple[str, ...] = PM2_APPS
) -> dict[str, Any]:
    """Files of a vultr-like host under ``base``: the four services' .env and code (``apps``
    are real PM2 apps, see ``start_pm2_apps``), Caddy's config and data dir.

    Returns paths ("root", "caddy", "ecosystem") and "ports" (PM2 app -> port).
    """
    root = base / "root"
    for app in SERVICES:
        (root / app).mkdir(parents=True)
        (root / app / ".env").write_text(f"PORT=3000\nDB_NAME=callmeback_{uniq}\n")
        (root / app / ".env").chmod(0o600)
        (root / app / "server.js").write_text(f"// {app}\n")
    ports = {app: free_port() for app in apps}
    ecosystem = write_apps(root, ports)
    caddy = base / "caddy"
    domain = "db.example.invalid"
    certdir = caddy / "data/certificates/acme-v02.api.letsencrypt.org-directory" / domain
    certdir.mkdir(parents=True)
    pem, key = cert_pem(domain, dt.datetime.now(dt.UTC) + dt.timedelta(days=cert_days))
    (certdir / f"{domain}.crt").write_bytes(pem)
    (certdir / f"{domain}.key").write_bytes(key)
    (certdir / f"{domain}.json").write_text(json.dumps({"sans": [domain], "issuer_data": {}}))
    (caddy / "etc").mkdir()
    # The data dir is not Caddy's default: the Caddyfile says where it is, as a host with
    # a moved data dir does, so the Caddy reloaded after a restore serves these certificates.
    (caddy / "etc/Caddyfile").write_text(
        f"{{\n\tstorage file_system {{\n\t\troot {caddy / 'data'}\n\t}}\n}}\n"
        f"{domain} {{\n\treverse_proxy 127.0.0.1:3000\n}}\n"
    )
    return {"root": root, "caddy": caddy, "ecosystem": ecosystem, "ports": ports}


@contextmanager
def start_pm2_apps(
    base: Path, paths: dict[str, Any], stopped: tuple[str, ...] = ()
) -> Iterator[Pm2Home]:
    """A PM2 daemon (PM2_HOME under ``base``, as root) running the host's apps, online but
    ``stopped`` (``pm2 stop``, as seed 000 does); the daemon is stopped by PID afterwards."""
    with pm2_home(base) as pm2:
        pm2.run("start", str(paths["ecosystem"]))
        pm2.wait_online(set(paths["ports"]))
        for name in stopped:
            pm2.run("stop", name)
        yield pm2


def make_policy(
    tmp: Path, pg: PgServer, db: str, keys: Any, paths: dict[str, Any], *,
    globals_: bool = True, pm2: Pm2Home | None = None,
) -> Path:  # fmt: skip
    sources: list[dict[str, Any]] = [
        {"kind": "postgres", "name": "callmeback", "database": db, "host": "127.0.0.1",
         "port": pg.port, "user": "postgres", "globals": globals_},
        {"kind": "env", "name": "env", "paths": [f"{paths['root']}/*/.env"]},
        {"kind": "files", "name": "apps", "paths": [str(paths["root"])], "exclude": [".env"]},
        {"kind": "caddy", "name": "caddy", "config_paths": [str(paths["caddy"] / "etc")],
         "data_dir": str(paths["caddy"] / "data")},
    ]  # fmt: skip
    if pm2 is not None:
        eco = [str(paths["ecosystem"])]
        sources.append(
            {"kind": "pm2", "name": "pm2", "user": pm2.user, "pm2_home": str(pm2.home),
             "ecosystem": eco}
        )  # fmt: skip
    return write_policy(
        tmp / "vultr.toml", "vultr", {"url": (tmp / "repo").as_uri()}, [keys.recipient], sources
    )


def write_spec(directory: Path, root: Path, extra: str = "") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "vultr.toml").write_text(
        f"""host = "vultr"
[[sql]]
name = "calls were restored"
source = "callmeback"
query = "SELECT count(*) FROM calls"
expect = "3000"
[[env]]
path = "{root}/db-proxy/.env"
keys = ["PORT", "DB_NAME"]
[[file]]
path = "{root}/db-proxy/.env"
mode = "0600"
[[command]]
name = "postgres is up"
run = ["pg_isready"]
{extra}"""
    )
    return directory


def test_vultr_drill_passes_then_fails_for_the_right_reasons(
    engine: None, pg: PgServer, uniq: str, keys, tmp_path: Path
) -> None:
    db = f"callmeback_{uniq}"
    load_callmeback(pg, db, f"cmb_user_{uniq}", "pw")
    # Two PM2 apps online, and one an operator had stopped (`pm2 stop log-query-service`).
    paths = vultr_like(tmp_path, pg, uniq, cert_days=60, apps=(*PM2_APPS, "log-query-service"))
    with start_pm2_apps(tmp_path, paths, stopped=("log-query-service",)) as pm2:
        policy = make_policy(tmp_path, pg, db, keys, paths, pm2=pm2)
        # The policy says `pm2`: the test's pm2 comes from npm, so it is put on PATH.
        drkit("backup", "--policy", str(policy), env=bin_path_env(), check=True)
    # A bucket writer's copy of the snapshot under a newer id (its manifest edited to
    # match): unsigned for that id, so the drill must restore the real one.
    real = json.loads(drkit("snapshots", "--policy", str(policy), "--json").stdout)
    real_id = real["snapshots"][-1]["snapshot"]
    planted = real_id[:-6] + "ffffff"
    bucket = RepoTarget("local", {}, root=tmp_path / "repo")
    forge.copy_snapshot(bucket, "vultr", real_id, planted)
    forge.edit_manifest(bucket, "vultr", planted, lambda m: m.update(snapshot=planted))
    # The apps answer inside the drill container, with PORT and APP_NAME from PM2's dump.
    port = paths["ports"]["db-proxy"]
    health = f'[[http]]\nname = "db-proxy answers"\nurl = "http://127.0.0.1:{port}/health"\n'
    specs = write_spec(tmp_path / "drills", paths["root"], health + 'contains = "db-proxy ok"\n')
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--report", str(tmp_path / "report"),
                "--junit", str(tmp_path / "junit.xml"), "--json")  # fmt: skip
    assert res.returncode == 0, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "pass", report
    assert report["snapshot"] == real_id and planted not in res.stdout
    names = {(c["source"], c["name"]): c["status"] for c in report["checks"]}
    assert names[("callmeback", f"row counts in {db}")] == "pass"
    assert names[("drill", "calls were restored")] == "pass"
    assert names[("drill", f"env {paths['root']}/db-proxy/.env")] == "pass"
    assert any(n.startswith("certificate db.example.invalid") and s == "pass"
               for (_, n), s in names.items())  # fmt: skip
    # PM2 apps online: the pm2 source's checks, and an app answering over HTTP.
    assert names[("pm2", "app voice-pipeline")] == "pass"
    assert names[("pm2", "app db-proxy")] == "pass"
    assert names[("pm2", "app log-query-service")] == "pass"  # stopped, as at backup time
    assert names[("drill", "db-proxy answers")] == "pass"
    assert report["rto_seconds"] > 0 and report["rpo_seconds"] >= 0
    md = (tmp_path / "report" / "drill-summary.md").read_text()
    assert "RTO" in md and "RPO" in md and "| vultr | **PASS**" in md
    assert "<testsuite" in (tmp_path / "junit.xml").read_text()
    # The verdict is stored in the repository too.
    assert list((tmp_path / "repo" / "vultr" / "drills").glob("*.json"))

    # An env file the drill expects but the backup never had -> FAIL naming it.
    billing = f'[[env]]\npath = "{paths["root"]}/billing/.env"\nkeys = ["STRIPE_KEY"]\n'
    specs = write_spec(tmp_path / "drills2", paths["root"], billing)
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    assert res.returncode == 4, res.output
    [report] = json.loads(res.stdout)["drills"]
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == [f"env {paths['root']}/billing/.env"], report


def test_drill_fails_on_flipped_byte_missing_globals_and_expired_cert(
    engine: None, pg: PgServer, uniq: str, keys, tmp_path: Path
) -> None:
    db = f"callmeback_{uniq}"
    load_callmeback(pg, db, f"cmb_user_{uniq}", "pw")
    paths = vultr_like(tmp_path, pg, uniq, cert_days=-2)  # expired two days ago
    specs = write_spec(tmp_path / "drills", paths["root"])
    # 1. No globals artifact: the owning role is missing in the fresh container.
    policy = make_policy(tmp_path, pg, db, keys, paths, globals_=False)
    drkit("backup", "--policy", str(policy), check=True)
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    assert res.returncode == 4, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "fail"
    assert f"cmb_user_{uniq}" in (report["error"] or "") and "does not exist" in report["error"]
    # 2. With globals the restore works, but the certificate has expired.
    policy = make_policy(tmp_path, pg, db, keys, paths)
    drkit("backup", "--policy", str(policy), check=True)
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    [report] = json.loads(res.stdout)["drills"]
    assert res.returncode == 4 and report["error"] is None
    expired = [c for c in report["checks"] if c["status"] == "fail"]
    assert expired and all("expired" in c["detail"] for c in expired)
    assert all(c["name"].startswith("certificate db.example.invalid") for c in expired)
    # 3. One flipped byte in the newest snapshot's dump -> FAIL naming the object.
    [dump] = sorted(
        (tmp_path / "repo" / "vultr" / "snapshots").glob("*/callmeback/database.pgdump")
    )[-1:]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 1
    dump.write_bytes(bytes(data))
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    [report] = json.loads(res.stdout)["drills"]
    assert res.returncode == 4
    # Caught by the digest check before applying, or (a dump staged until verified,
    # precheck skipped) by age's authentication while loading, or (dedup, the default:
    # the object is the chunk index) by the index's own check: named either way, and
    # nothing of it applied.
    err = report["error"]
    assert "callmeback/database.pgdump" in err, err
    assert "digest" in err or "authentication" in err or "chunk index" in err, err


def test_drill_refuses_a_blocked_plan_before_restoring_anything(
    engine: None, keys: Any, tmp_path: Path
) -> None:
    """pm2 runs here through a path the drill container does not have: the drill is
    refused up front, as `drkit restore` would be, not after the earlier steps ran and
    `pm2 resurrect` exited 127."""
    root = tmp_path / "root"
    ports = {"db-proxy": free_port()}
    ecosystem = write_apps(root, ports)
    link = tmp_path / "pm2-here-only" / "pm2"  # this machine's pm2, under the test's dir
    link.parent.mkdir()
    with pm2_home(tmp_path) as pm2:
        link.symlink_to(pm2.pm2)
        pm2.run("start", str(ecosystem))
        pm2.wait_online(set(ports))
        sources: list[dict[str, Any]] = [
            {"kind": "files", "name": "apps", "paths": [str(root)]},
            {"kind": "pm2", "name": "pm2", "user": pm2.user, "pm2_home": str(pm2.home),
             "ecosystem": [str(ecosystem)], "pm2_bin": str(link)},
        ]  # fmt: skip
        policy = write_policy(
            tmp_path / "vultr.toml", "vultr", {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient], sources,
        )  # fmt: skip
        drkit("backup", "--policy", str(policy), check=True)
    specs = tmp_path / "drills"
    specs.mkdir()
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    assert res.returncode == 4, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "fail", report
    error = report["error"]
    assert error.startswith("host vultr: step 2 (pm2) is refused: "), error
    assert f"pm2 ({link}) is not installed for {pm2.user} on the target" in error
    assert error.endswith("; nothing was restored"), error
    # Refused before step 1: no source was restored, so no source's check ran.
    assert [c["source"] for c in report["checks"]] == ["drill"], report["checks"]
    # The failed verdict is stored like any other drill's.
    assert list((tmp_path / "repo" / "vultr" / "drills").glob("*.json"))
