"""caddy source: a certmagic data dir round trip, then a real Caddy serving the restored cert.

The Caddyfile points Caddy's ACME issuer at a closed port on 127.0.0.1, so
the test can never reach a real CA: if Caddy did not find the restored
certificate in its storage it would try to issue one, fail, and the TLS
handshake would fail. Serving the certificate whose fingerprint the backup
recorded proves the restore makes Caddy use it without re-issuing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import drkit, write_policy
from tests.servers.ports import free_port

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
SITE = "app.example.test"
WILDCARD = "*.example.test"
LE = "acme-v02.api.letsencrypt.org-directory"


def issuer_key(acme_port: int) -> str:
    """certmagic's storage key for https://127.0.0.1:PORT/directory."""
    return f"127.0.0.1-{acme_port}-directory"


def write(path: Path, data: bytes | str, mode: int, owner: str = "caddy") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    pw = pwd.getpwnam(owner)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def make_layout(base: Path, make_cert: Callable[..., Any], acme_port: int) -> dict[str, Any]:
    """/etc/caddy (Caddyfile + an import) and a data dir laid out like certmagic's."""
    https_port, http_port = free_port(), free_port()
    etc = base / "etc" / "caddy"
    write(
        etc / "Caddyfile",
        "{\n\tadmin off\n"
        f"\thttps_port {https_port}\n\thttp_port {http_port}\n"
        f"\tacme_ca https://127.0.0.1:{acme_port}/directory\n"
        "\tocsp_stapling off\n}\n"
        "import sites/*.caddy\n",
        0o644,
        "root",
    )
    write(
        etc / "sites" / "app.caddy",
        f'{SITE} {{\n\trespond "restored {{host}}"\n}}\n',
        0o644,
        "root",
    )
    data = base / "xdg" / "caddy"
    site = make_cert([SITE, f"www.{SITE.split('.', 1)[1]}"])
    wild = make_cert([WILDCARD])
    certs = {issuer_key(acme_port): (SITE, site), LE: ("wildcard_.example.test", wild)}
    for issuer, (domain, cert) in certs.items():
        d = data / "certificates" / issuer / domain
        write(d / f"{domain}.crt", cert.cert_pem, 0o600)
        write(d / f"{domain}.key", cert.key_pem, 0o600)
        write(d / f"{domain}.json", json.dumps({"sans": cert.names, "issuer_data": {}}), 0o600)
    # A damaged certificate is a finding in the facts, not a failed backup.
    broken = data / "certificates" / LE / "broken.example.test"
    write(broken / "broken.example.test.crt", "-----BEGIN CERTIFICATE-----\nnot base64\n", 0o600)
    write(broken / "broken.example.test.key", wild.key_pem, 0o600)
    users = data / "acme" / LE / "users" / "ops@example.test"
    write(users / "ops.json", '{"status":"valid"}', 0o600)
    write(users / "ops.key", wild.key_pem, 0o600)
    write(data / "instance.uuid", "3f0c7a1e-2b7d-4c55-9a1e-5f7f0c1d2e3a", 0o600)
    write(data / "locks" / "issue_cert_app.example.test.lock", '{"created":"now"}', 0o600)
    # A file someone copied in as root: the restore hands the whole dir to caddy.
    write(data / "ocsp" / "stale-ocsp", "x", 0o600, "root")
    for d in [data, *(p for p in data.rglob("*") if p.is_dir())]:
        d.chmod(0o700)
        os.chown(d, pwd.getpwnam("caddy").pw_uid, pwd.getpwnam("caddy").pw_gid)
    for d in (base / "xdg", base):
        d.chmod(0o755)
    return {"etc": etc, "data": data, "site": site, "wild": wild, "https_port": https_port}


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` -> (kind, mode, content digest or link)."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode & 0o7777)
        else:
            out[rel] = ("file", st.st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def owners(root: Path) -> set[str]:
    return {pwd.getpwuid(p.lstat().st_uid).pw_name for p in [root, *root.rglob("*")]}


@contextlib.contextmanager
def caddy_run(config: Path, xdg: Path, state: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``caddy run`` as the caddy user with ``XDG_DATA_HOME`` = the restored data's parent."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state),
        "XDG_DATA_HOME": str(xdg),
        "XDG_CONFIG_HOME": str(state / "config"),
    }
    log = open(state / "caddy.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [CADDY, "run", "--config", str(config), "--adapter", "caddyfile"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        **as_caddy(),
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def served_certificate(port: int, timeout: float = 15.0) -> tuple[str, str]:
    """(sha256 of the certificate Caddy presents for SITE, the HTTPS response body)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed: identity is checked by fingerprint
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=SITE) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
                request = f"GET / HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n\r\n"
                tls.sendall(request.encode())
                response = b""
                while chunk := tls.recv(65536):
                    response += chunk
            break
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert der is not None
    return hashlib.sha256(der).hexdigest(), response.split(b"\r\n\r\n", 1)[1].decode()


def as_caddy() -> dict[str, Any]:
    caddy = pwd.getpwnam("caddy")
    return {"user": caddy.pw_uid, "group": caddy.pw_gid, "extra_groups": []}


@pytest.fixture
def caddy_user() -> None:
    try:
        pwd.getpwnam("caddy")
    except KeyError:
        pytest.fail("the caddy user is missing: install Debian's caddy package")


def test_caddy_roundtrip_restores_certificates_that_caddy_serves_without_reissuing(
    tmp_path: Path,
    open_dir: Path,
    keys: Any,
    make_cert: Callable[..., Any],
    snapshot_facts: Any,
    caddy_user: None,
) -> None:
    acme_port = free_port()  # nothing listens there: issuance would fail, never leave
    lay = make_layout(open_dir, make_cert, acme_port)
    etc, data = lay["etc"], lay["data"]
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "caddy", "config_paths": [str(etc)], "data_dir": str(data)}],
    )
    drkit("backup", "--policy", str(policy), check=True)

    facts = snapshot_facts(policy, "caddy")
    certs = {c["domain"]: c for c in facts["certificates"]}
    assert set(certs) == {SITE, "wildcard_.example.test", "broken.example.test"}
    assert certs["broken.example.test"]["error"] == "not a PEM certificate"
    site, wild = certs[SITE], certs["wildcard_.example.test"]
    assert site["names"] == lay["site"].names and wild["names"] == [WILDCARD]
    assert site["sha256"] == lay["site"].sha256 and wild["sha256"] == lay["wild"].sha256
    assert site["not_after"] == lay["site"].not_after
    assert wild["not_after"] == lay["wild"].not_after
    assert site["issuer_key"] == issuer_key(acme_port) and wild["issuer_key"] == LE
    assert site["has_key"] and wild["has_key"]
    assert facts["acme_accounts"] == [LE]
    assert set(facts["config_files"]) == {str(etc / "Caddyfile"), str(etc / "sites/app.caddy")}
    # The site block of the imported file, on the main file's https_port, with the
    # fingerprint a restored Caddy must serve.
    assert facts["sites"] == [
        {"name": SITE, "port": lay["https_port"], "sha256": site["sha256"], "domain": SITE}
    ]
    paths = {e["path"] for e in facts["entries"]}
    assert not any("/locks" in p for p in paths)
    key_entry = next(e for e in facts["entries"] if e["path"].endswith(f"{SITE}.key"))
    assert key_entry["mode"] == "0600" and key_entry["owner"] == "caddy"

    before = tree(data)
    before_etc = tree(etc)
    shutil.rmtree(data)
    shutil.rmtree(etc)
    # --no-reload: this machine's own Caddy is not the test's (this test runs one below).
    res = drkit(
        "restore",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--yes",
        "--json",
        "--no-reload",
    )
    report = json.loads(res.stdout)
    # Not reloaded, so not probed: never a plain pass.
    assert report["verdict"] == "warn", res.output
    assert any(s.startswith("caddy: ") and "owner set to caddy" in s for s in report["steps"])
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert checks == {"files restored": "pass", "data dir owner": "pass", "caddy reloaded": "warn"}
    reload = next(c for c in report["checks"] if c["name"] == "caddy reloaded")
    assert f"https://{SITE}:{lay['https_port']} not probed" in reload["detail"]

    # Same files, modes and contents; no locks; everything owned by caddy.
    expected = {k: v for k, v in before.items() if not k.startswith("locks")}
    assert tree(data) == expected
    assert tree(etc) == before_etc
    assert owners(data) == {"caddy"}

    # The service user can read the restored config and data (validate provisions TLS).
    state = open_dir / "caddy-state"
    state.mkdir()
    os.chown(state, pwd.getpwnam("caddy").pw_uid, pwd.getpwnam("caddy").pw_gid)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(state)}
    env |= {"XDG_DATA_HOME": str(data.parent), "XDG_CONFIG_HOME": str(state / "config")}
    check = subprocess.run(
        [CADDY, "validate", "--config", str(etc / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        **as_caddy(),
    )
    assert check.returncode == 0 and "Valid configuration" in check.stderr + check.stdout

    with caddy_run(etc / "Caddyfile", data.parent, state) as proc:
        fingerprint, body = served_certificate(lay["https_port"])
        assert proc.poll() is None
    assert fingerprint == site["sha256"]
    assert body == f"restored {SITE}"
    log = (state / "caddy.log").read_text()
    assert "obtaining certificate" not in log and "could not get certificate" not in log
