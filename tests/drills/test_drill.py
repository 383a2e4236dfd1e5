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
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import drkit, load_callmeback, write_policy
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


def vultr_like(base: Path, pg: PgServer, uniq: str, *, cert_days: int) -> dict[str, Path]:
    """Files of a vultr-like host under ``base``: four apps' .env, app code, Caddy."""
    root = base / "root"
    for app in ("voice-pipeline", "db-proxy", "log-query-service", "deepgram-proxy"):
        (root / app).mkdir(parents=True)
        (root / app / ".env").write_text(f"PORT=3000\nDB_NAME=callmeback_{uniq}\n")
        (root / app / ".env").chmod(0o600)
        (root / app / "server.js").write_text(f"// {app}\n")
    caddy = base / "caddy"
    domain = "db.example.invalid"
    certdir = caddy / "data/certificates/acme-v02.api.letsencrypt.org-directory" / domain
    certdir.mkdir(parents=True)
    pem, key = cert_pem(domain, dt.datetime.now(dt.UTC) + dt.timedelta(days=cert_days))
    (certdir / f"{domain}.crt").write_bytes(pem)
    (certdir / f"{domain}.key").write_bytes(key)
    (caddy / "etc").mkdir()
    (caddy / "etc/Caddyfile").write_text(f"{domain} {{\n\treverse_proxy 127.0.0.1:3000\n}}\n")
    return {"root": root, "caddy": caddy}


def make_policy(tmp: Path, pg: PgServer, db: str, keys, paths, *, globals_: bool = True) -> Path:
    return write_policy(
        tmp / "vultr.toml", "vultr", {"url": (tmp / "repo").as_uri()}, [keys.recipient],
        [
            {"kind": "postgres", "name": "callmeback", "database": db, "host": "127.0.0.1",
             "port": pg.port, "user": "postgres", "globals": globals_},
            {"kind": "env", "name": "env", "paths": [f"{paths['root']}/*/.env"]},
            {"kind": "files", "name": "apps", "paths": [str(paths["root"])],
             "exclude": [".env"]},
            {"kind": "caddy", "name": "caddy", "config_paths": [str(paths["caddy"] / "etc")],
             "data_dir": str(paths["caddy"] / "data")},
        ],
    )  # fmt: skip


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
    paths = vultr_like(tmp_path, pg, uniq, cert_days=60)
    policy = make_policy(tmp_path, pg, db, keys, paths)
    drkit("backup", "--policy", str(policy), check=True)
    specs = write_spec(tmp_path / "drills", paths["root"])
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(specs),
                "--identity", str(keys.identity_file), "--report", str(tmp_path / "report"),
                "--junit", str(tmp_path / "junit.xml"), "--json")  # fmt: skip
    assert res.returncode == 0, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "pass", report
    names = {(c["source"], c["name"]): c["status"] for c in report["checks"]}
    assert names[("callmeback", f"row counts in {db}")] == "pass"
    assert names[("drill", "calls were restored")] == "pass"
    assert names[("drill", f"env {paths['root']}/db-proxy/.env")] == "pass"
    assert any(n.startswith("certificate db.example.invalid") and s == "pass"
               for (_, n), s in names.items())  # fmt: skip
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
    assert [c["name"] for c in failed] == [f"env {paths['root']}/billing/.env"]


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
    assert "callmeback/database.pgdump" in report["error"] and "digest" in report["error"]
