"""certbot source: /etc/letsencrypt's live -> archive symlinks survive a round trip.

The layout is generated the way certbot writes it (two lineages, two
versions each, live/ links to the newest, renewal files with absolute paths,
an ACME account). After backup -> delete -> restore the tree is identical,
links included; certbot itself (``certbot certificates``, offline) accepts
the restored lineages. A copy with dereferenced links is reported as
inconsistent in the facts, as certbot reports it broken.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import drkit, write_policy

KINDS = ("cert", "privkey", "chain", "fullchain")
ACCOUNT = "5d0c2f4a9e1b7c3d8f6a2b4c6d8e0f1a"
LINEAGES = {"eznomics.test": ["eznomics.test", "www.eznomics.test"], "api.eznomics.test": None}


def make_letsencrypt(root: Path, make_cert: Callable[..., Any]) -> dict[str, Any]:
    """A certbot config dir; returns each lineage's newest certificate."""
    newest: dict[str, Any] = {}
    acct = root / "accounts" / "acme-v02.api.letsencrypt.org" / "directory" / ACCOUNT
    acct.mkdir(parents=True)
    for f in ("meta.json", "private_key.json", "regr.json"):
        (acct / f).write_text('{"k": "v"}')
        (acct / f).chmod(0o600 if f == "private_key.json" else 0o644)
    for name, names in LINEAGES.items():
        archive, live = root / "archive" / name, root / "live" / name
        archive.mkdir(parents=True)
        live.mkdir(parents=True)
        for version in (1, 2):
            cert = make_cert(names or [name], days=30 * version)
            (archive / f"cert{version}.pem").write_bytes(cert.cert_pem)
            (archive / f"chain{version}.pem").write_bytes(cert.cert_pem)
            (archive / f"fullchain{version}.pem").write_bytes(cert.cert_pem * 2)
            (archive / f"privkey{version}.pem").write_bytes(cert.key_pem)
            (archive / f"privkey{version}.pem").chmod(0o600)
            newest[name] = cert
        for kind in KINDS:
            (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}2.pem")
        (live / "README").write_text("certbot's note\n")
        (root / "renewal").mkdir(exist_ok=True)
        (root / "renewal" / f"{name}.conf").write_text(
            "# renew_before_expiry = 30 days\nversion = 2.1.0\n"
            f"archive_dir = {archive}\n"
            + "".join(f"{kind} = {live}/{kind}.pem\n" for kind in KINDS)
            + "\n# Options used in the renewal process\n[renewalparams]\n"
            f"account = {ACCOUNT}\nauthenticator = nginx\ninstaller = nginx\n"
            "server = https://acme-v02.api.letsencrypt.org/directory\nkey_type = ecdsa\n"
        )
    (root / "renewal-hooks" / "deploy").mkdir(parents=True)
    return newest


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        mode = p.lstat().st_mode & 0o7777
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", mode)
        else:
            out[rel] = ("file", mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def certbot_certificates(root: Path, work: Path) -> str:
    """What certbot itself says about a config dir (offline: reads renewal files)."""
    certbot = shutil.which("certbot")
    if certbot is None:
        pytest.skip("certbot is not installed (apt-get install certbot)")
    res = subprocess.run(
        [
            certbot,
            "certificates",
            "--config-dir",
            str(root),
            "--work-dir",
            str(work / "w"),
            "--logs-dir",
            str(work / "l"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return res.stdout + res.stderr


def policy_for(tmp_path: Path, keys: Any, root: Path) -> Path:
    return write_policy(
        tmp_path / "e2i.toml",
        "e2i-droplet",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "certbot", "name": "letsencrypt", "dir": str(root)}],
    )


def test_certbot_roundtrip_keeps_live_links_and_certbot_accepts_it(
    tmp_path: Path, keys: Any, make_cert: Callable[..., Any], snapshot_facts: Any
) -> None:
    root = tmp_path / "etc" / "letsencrypt"
    newest = make_letsencrypt(root, make_cert)
    policy = policy_for(tmp_path, keys, root)
    drkit("backup", "--policy", str(policy), check=True)

    facts = snapshot_facts(policy, "letsencrypt")
    assert facts["consistent"] is True
    lineages = {lin["name"]: lin for lin in facts["lineages"]}
    assert set(lineages) == set(LINEAGES)
    for name, lin in lineages.items():
        assert lin["consistent"] and lin["problems"] == [] and lin["warnings"] == []
        assert lin["account"] == ACCOUNT
        assert lin["version"] == 2
        assert lin["names"] == newest[name].names
        assert lin["sha256"] == newest[name].sha256
        assert lin["not_after"] == newest[name].not_after
        assert lin["cert_path"] == f"{root}/archive/{name}/cert2.pem"

    before = tree(root)
    shutil.rmtree(root)
    res = drkit(
        "restore",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--yes",
        "--json",
    )
    report = json.loads(res.stdout)
    assert report["verdict"] == "pass", res.output
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["live symlinks"]["status"] == "pass"
    assert "8 live/ symlink(s)" in checks["live symlinks"]["detail"]
    assert checks["files restored"]["status"] == "pass"
    assert tree(root) == before  # links are links, same targets, same contents and modes
    for name in LINEAGES:
        for kind in KINDS:
            link = root / "live" / name / f"{kind}.pem"
            assert link.is_symlink() and os.readlink(link) == f"../../archive/{name}/{kind}2.pem"

    said = certbot_certificates(root, tmp_path)
    assert "invalid" not in said.lower() and "broken" not in said.lower()
    for name in LINEAGES:
        assert f"Certificate Name: {name}" in said
    assert said.count("VALID:") == 2


def test_certbot_dereferenced_copy_is_reported_inconsistent(
    tmp_path: Path, keys: Any, make_cert: Callable[..., Any], snapshot_facts: Any
) -> None:
    good = tmp_path / "good"
    make_letsencrypt(good, make_cert)
    # The classic mistake: a copy that follows links (cp -rL, rsync -L, object sync).
    root = tmp_path / "etc" / "letsencrypt"
    shutil.copytree(good, root, symlinks=False)
    for conf in (root / "renewal").iterdir():
        conf.write_text(conf.read_text().replace(str(good), str(root)))
    # The other lineage keeps its links, but cert.pem points at a version that is not there.
    api = "api.eznomics.test"
    for kind in KINDS:
        (root / "live" / api / f"{kind}.pem").unlink()
        version = 3 if kind == "cert" else 2
        (root / "live" / api / f"{kind}.pem").symlink_to(f"../../archive/{api}/{kind}{version}.pem")
    # Renewal also needs the ACME account the renewal file names.
    shutil.rmtree(root / "accounts")
    policy = policy_for(tmp_path, keys, root)
    drkit("backup", "--policy", str(policy), check=True)

    facts = snapshot_facts(policy, "letsencrypt")
    assert facts["consistent"] is False
    lineages = {lin["name"]: lin for lin in facts["lineages"]}
    deref = lineages["eznomics.test"]
    assert deref["consistent"] is False
    assert len(deref["problems"]) == 4
    assert all("not a symlink" in p for p in deref["problems"])
    assert deref["names"] == LINEAGES["eznomics.test"]  # still inspected from the copy
    assert lineages[api]["problems"] == [
        "live/api.eznomics.test/cert.pem -> ../../archive/api.eznomics.test/cert3.pem: "
        "the target is not in the backup"
    ]
    assert all(
        lin["warnings"]
        == [
            f"renewal/{lin['name']}.conf names ACME account {ACCOUNT}, which is not under accounts/"
        ]
        for lin in lineages.values()
    )
    said = certbot_certificates(root, tmp_path)
    assert "invalid" in said.lower()  # certbot agrees
