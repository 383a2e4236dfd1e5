"""Malformed repository documents (manifest, facts, drill report, drkit.json) give a
clear error naming the object and exit 1 or 2, never a traceback; nothing is used
from them. Lock objects, chunk indexes and S3 answers: tests/unit/test_malformed_*."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from drkit.pipeline.age import parse_recipient
from drkit.pipeline.codec import encode
from drkit.repository.manifest import SIGNED_KIND, dump_document
from drkit.signing import SigningKey
from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import CliResult, drkit, write_policy

HOST = "vultr"


def _site(tmp_path: Path, keys: Keys) -> tuple[Path, RepoTarget, str]:
    root = tmp_path / "repo"
    target = RepoTarget("local", {"url": root.as_uri()}, root=root)
    env_file = tmp_path / "app" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("TOKEN=x\n")
    policy = write_policy(
        tmp_path / "p.toml",
        HOST,
        target.policy,
        [keys.recipient],
        [{"kind": "env", "name": "env", "paths": [str(env_file)]}],
    )
    res = drkit("backup", "--policy", str(policy), "--json", check=True)
    return policy, target, str(json.loads(res.stdout)["results"][0]["snapshot"])


def _clean(res: CliResult, code: tuple[int, ...], *names: str) -> None:
    assert res.returncode in code, res.output
    assert "Traceback" not in res.output
    for name in names:
        assert name in res.output, (name, res.output)


@pytest.mark.parametrize(
    "body, what",
    [
        (b"[1, 2]", "not a JSON object"),
        (b"\x00garbage", "not JSON"),
        (
            json.dumps({"format": "drkit-manifest", "version": 2, "sources": "x"}).encode(),
            "not signed",
        ),
    ],
    ids=["list", "garbage", "unsigned-wrong-shape"],
)
def test_a_malformed_manifest_is_named_and_skipped(
    tmp_path: Path, keys: Keys, body: bytes, what: str
) -> None:
    policy, target, real = _site(tmp_path, keys)
    bad = "20261101T000000.000Z-bad000"
    target.write(f"{HOST}/snapshots/{bad}/manifest.json", body)
    verify = drkit("verify", "--policy", str(policy), "--identity", str(keys.identity_file))
    _clean(verify, (1,), f"{HOST}/snapshots/{bad}/manifest.json", what)
    plan = drkit(
        "restore",
        "--plan",
        "--policy",
        str(policy),
        "--json",
        "--identity",
        str(keys.identity_file),
    )
    _clean(plan, (0,), real)
    named = drkit(
        "restore",
        "--plan",
        "--policy",
        str(policy),
        "--snapshot",
        bad,
        "--identity",
        str(keys.identity_file),
    )
    _clean(named, (1, 2), bad, what)


@pytest.mark.parametrize(
    "marker",
    [
        b"not json",
        b"[]",
        json.dumps({"format": "drkit-repository", "version": "two"}).encode(),
        json.dumps({"format": "other", "version": 1}).encode(),
    ],
    ids=["garbage", "list", "string-version", "wrong-format"],
)
def test_a_malformed_format_marker_stops_every_command(
    tmp_path: Path, keys: Keys, marker: bytes
) -> None:
    policy, target, _real = _site(tmp_path, keys)
    target.write("drkit.json", marker)
    ident = ("--identity", str(keys.identity_file))
    for args in (
        ("verify", *ident),
        ("snapshots",),
        ("status",),
        ("backup",),
        ("prune", "--dry-run"),
    ):
        res = drkit(*args, "--policy", str(policy))
        _clean(res, (1, 2, 3), "drkit.json", "format marker")


def test_facts_that_are_not_an_object_are_a_clear_error(tmp_path: Path, keys: Keys) -> None:
    """Even signed by a trusted key (a writer's bug), facts of the wrong shape stop the
    restore with the object's name before any step runs."""
    policy, target, real = _site(tmp_path, keys)
    prefix = f"{HOST}/snapshots/{real}/"
    out = io.BytesIO()
    digests = encode(
        io.BytesIO(b"[1, 2]"), [parse_recipient(keys.recipient)], lambda s: out.write(s.read())
    )
    target.write(prefix + "facts.json.age", out.getvalue())
    manifest = json.loads(target.read(prefix + "manifest.json"))
    manifest["facts"].update(
        plain_size=digests.plain_size,
        plain_sha256=digests.plain_sha256,
        stored_size=digests.stored_size,
        stored_sha256=digests.stored_sha256,
    )
    resigned = SigningKey.load().sign(SIGNED_KIND, manifest)
    target.write(prefix + "manifest.json", dump_document(resigned))
    dest = tmp_path / "dest"
    res = drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--dest",
        str(dest),
        "--identity",
        str(keys.identity_file),
    )
    _clean(res, (1,), f"{prefix}facts.json.age", "unreadable facts")
    assert not dest.exists()


def test_unsigned_or_malformed_drill_reports_decide_nothing(tmp_path: Path, keys: Keys) -> None:
    """A planted failing report must not raise an alarm, a planted passing one must not
    make prune keep a snapshot, garbage must not crash status."""
    policy, target, real = _site(tmp_path, keys)
    report = {
        "format": "drkit-drill",
        "version": 1,
        "host": HOST,
        "drill_id": "d1",
        "snapshot": real,
        "snapshots": [real],
        "verdict": "fail",
        "started": "2026-01-01T00:00:00+00:00",
        "rto_seconds": 1.0,
    }
    target.write(f"{HOST}/drills/d1.json", json.dumps(report).encode())
    target.write(f"{HOST}/drills/d2.json", b"{not json")
    target.write(f"{HOST}/drills/d3.json", b"[]")
    status = drkit("status", "--policy", str(policy), "--json")
    _clean(status, (0,))
    row = json.loads(status.stdout)["hosts"][0]
    assert "last_drill" not in row and row["drill_failed"] is False
    # The same report signed by this machine (trusted for drill reports) counts.
    signed = SigningKey.load().sign("drill-report", report)
    target.write(f"{HOST}/drills/d1.json", json.dumps(signed).encode())
    status = drkit("status", "--policy", str(policy), "--json")
    _clean(status, (1,))
    assert json.loads(status.stdout)["hosts"][0]["drill_failed"] is True


def test_a_format_1_repository_is_raised_to_2_by_the_next_backup(
    tmp_path: Path, keys: Keys
) -> None:
    """So a drkit that does not sign refuses it, rather than writing snapshots that
    newer readers ignore as untrusted; the creation time is kept."""
    policy, target, _real = _site(tmp_path, keys)
    old = {"format": "drkit-repository", "version": 1, "created": "2026-01-01T00:00:00+00:00"}
    target.write("drkit.json", json.dumps(old).encode())
    drkit("backup", "--policy", str(policy), check=True)
    marker = json.loads(target.read("drkit.json"))
    assert (marker["version"], marker["created"]) == (2, old["created"])
