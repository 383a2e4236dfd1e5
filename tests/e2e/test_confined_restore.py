"""#16: a restore writes only where the local policy says (archive filter, no escapes).

Each test is a scenario that, before the fix, wrote something it must not. Malicious
archives are re-signed with this machine's (trusted) key: a well-formed snapshot from
a compromised but trusted host. Where an honest backup can make the archive (setuid
file, device node, absolute symlink), it does.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drkit.signing import SigningKey
from tests import forge
from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import CliResult, drkit, write_policy

HOST = "h1"


class Host:
    """A host whose tree lives under ``tmp_path`` (so a restore to / stays there)."""

    def __init__(self, tmp_path: Path, keys: Keys) -> None:
        self.tmp, self.keys = tmp_path, keys
        self.app = tmp_path / "srv" / "app"
        self.app.mkdir(parents=True)
        self.repo = RepoTarget(
            "local", {"url": (tmp_path / "repo").as_uri()}, root=tmp_path / "repo"
        )
        self.dest = tmp_path / "restored"
        self.policy = tmp_path / f"{HOST}.toml"
        self.write([{"kind": "files", "name": "app", "paths": [str(self.app)]}])

    def write(self, sources: list[dict[str, Any]]) -> None:
        write_policy(self.policy, HOST, self.repo.policy, [self.keys.recipient], sources)

    def run(self, *args: str) -> CliResult:
        return drkit(
            *args, "--policy", str(self.policy), "--identity", str(self.keys.identity_file)
        )

    def backup(self) -> None:
        res = drkit("backup", "--policy", str(self.policy))
        assert res.returncode == 0, res.output

    def forge(self, source: str, kind: str, artifact: str, data: bytes, facts: Any = None) -> None:
        """A newer snapshot of ``source`` holding ``data``, signed by the trusted key."""
        snapshot = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).strftime(
            "%Y%m%dT%H%M%S.000Z-abcdef"
        )
        forge.forge_snapshot(
            self.repo,
            HOST,
            snapshot,
            self.keys.recipient,
            source,
            kind,
            artifact,
            data,
            facts={source: facts or {}},
            sign_with=SigningKey.load(),
        )


def tar_of(*members: tuple[str, str, Any]) -> bytes:
    """A tar stream of (name, type, body or link target) as any tar could write it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "dir": tarfile.DIRTYPE,
            }[kind]
            info.linkname = value or ""
            tar.addfile(info)
    return buf.getvalue()


def rel(path: Path) -> str:
    return str(path).lstrip("/")


# ---- item 2: the archive member filter ------------------------------------
EVIL: dict[str, Callable[[Host], list[tuple[str, str, Any]]]] = {
    "outside the policy paths": lambda h: [(rel(h.tmp / "outside.txt"), "file", b"x")],
    "absolute name": lambda h: [(str(h.tmp / "outside.txt"), "file", b"x")],
    "dot-dot": lambda h: [(rel(h.app) + "/../../outside.txt", "file", b"x")],
    "symlink to outside": lambda h: [
        (rel(h.app / "logs"), "symlink", str(h.tmp)),
    ],
    "relative symlink climbing out": lambda h: [
        (rel(h.app / "logs"), "symlink", "../" * 12 + rel(h.tmp)),
    ],
    "hard link to outside": lambda h: [
        (rel(h.app / "shadow"), "hardlink", rel(h.tmp / "secret.txt")),
    ],
    "through a symlink of the same archive": lambda h: [
        (rel(h.app / "sub"), "dir", None),
        (rel(h.app / "cur"), "symlink", "sub"),
        (rel(h.app / "cur" / "x.txt"), "file", b"x"),
    ],
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_a_member_the_policy_does_not_allow_fails_the_step(
    tmp_path: Path, keys: Keys, case: str
) -> None:
    h = Host(tmp_path, keys)
    (h.app / "index.html").write_text("live\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    h.backup()
    evil = EVIL[case](h)
    # Larger than a pipe chunk: its bytes reach tar before the refused member is read.
    page = b"ok\n" * 700_000
    h.forge("app", "files", "files.tar", tar_of((rel(h.app / "index.html"), "file", page), *evil))
    before = sorted(p.name for p in tmp_path.iterdir())
    res = h.run("restore", "--yes", "--force")  # to /, i.e. the original paths under tmp_path
    assert res.returncode == 1, res.output
    assert "Traceback" not in res.output
    named = evil[-1][0]
    assert f"archive member {named!r} refused" in res.stderr, res.stderr
    assert f"host {HOST}: source app (files)" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new outside
    assert (tmp_path / "secret.txt").stat().st_nlink == 1
    assert not (h.app / "cur").exists() and not (h.app / "logs").exists()
    # Staged (#16 item 4): the allowed member before the refused one was not written either.
    assert (h.app / "index.html").read_text() == "live\n"
    assert not [p for p in (tmp_path / "srv").iterdir() if p.name.startswith(".drkit-staging-")]


def test_setid_and_device_members_are_refused_unless_the_policy_allows_setid(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    tool = h.app / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)
    h.backup()
    res = h.run("restore", "--yes", "--dest", str(h.dest))
    assert res.returncode == 1, res.output
    assert f"archive member {rel(tool)!r} refused: mode 4755" in res.stderr
    assert "allow_setid = true" in res.stderr
    restored = h.dest / rel(tool)
    assert not restored.exists()

    h.write([{"kind": "files", "name": "app", "paths": [str(h.app)], "allow_setid": True}])
    res = h.run("restore", "--yes", "--dest", str(h.dest))
    assert res.returncode == 0, res.output
    assert restored.stat().st_mode & 0o7777 == 0o4755

    if os.getuid() != 0:
        pytest.skip("mknod needs root")
    tool.unlink()
    os.mknod(h.app / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(h.app / "pipe")
    h.backup()
    dest = tmp_path / "again"
    res = h.run("restore", "--yes", "--dest", str(dest))
    assert res.returncode == 1, res.output
    assert "a character device" in res.stderr or "a fifo" in res.stderr
    assert not (dest / rel(h.app / "null")).exists()
    assert not (dest / rel(h.app / "pipe")).exists()


# ---- item 3: no path escapes ----------------------------------------------
def _release_tree(h: Host) -> Path:
    """/srv/app/current -> /srv/app/releases/5 (absolute, as deploy tools write it)."""
    release = h.app / "releases" / "5"
    release.mkdir(parents=True)
    (release / ".env").write_text("TOKEN=at-backup\n")
    (h.app / "current").symlink_to(release)
    h.write(
        [
            {"kind": "files", "name": "app", "paths": [str(h.app)]},
            {"kind": "env", "name": "env", "paths": [str(h.app / "current" / ".env")]},
        ]
    )
    h.backup()
    (release / ".env").write_text("TOKEN=live\n")  # changed since: must survive --dest
    return release


def test_an_honest_absolute_symlink_never_leads_a_dest_restore_outside(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    release = _release_tree(h)
    link = f"{h.dest}/{rel(h.app / 'current')}"

    plan = h.run("restore", "--plan", "--dest", str(h.dest))
    assert "REFUSED" in plan.stdout and link in plan.stdout, plan.output
    res = h.run("restore", "--yes", "--force", "--dest", str(h.dest))
    assert res.returncode == 1, res.output
    assert "step 2 (env) is refused" in res.stderr and link in res.stderr
    assert (release / ".env").read_text() == "TOKEN=live\n"
    assert not h.dest.exists()  # refused in the plan: step 1 was not applied either

    # Again between steps: files applied first (it plants the link), then env alone.
    res = h.run("restore", "--yes", "--only", "app", "--dest", str(h.dest))
    assert res.returncode == 0, res.output
    assert os.readlink(link) == str(release)
    res = h.run("restore", "--yes", "--force", "--only", "env", "--dest", str(h.dest))
    assert res.returncode == 1, res.output
    assert f"{link} on the target is a symlink to {release}, outside --dest" in res.stderr
    assert (release / ".env").read_text() == "TOKEN=live\n"


def test_an_honest_absolute_symlink_still_restores_to_the_original_paths(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    release = _release_tree(h)
    res = h.run("restore", "--yes", "--force")
    assert res.returncode == 0, res.output
    assert (release / ".env").read_text() == "TOKEN=at-backup\n"


# ---- item 1: targets from the policy only ---------------------------------
def _facts_target_case(kind: str, h: Host) -> tuple[dict[str, Any], str, bytes, dict[str, Any]]:
    """(policy source, artifact, archive, forged facts naming ../victim as the target)."""
    t = h.tmp
    if kind == "caddy":
        source = {
            "kind": "caddy",
            "name": "web",
            "config_paths": [str(t / "etc" / "caddy")],
            "data_dir": str(t / "caddydata"),
        }
        archive = tar_of((rel(t / "caddydata" / "x.txt"), "file", b"x"))
        return source, "caddy.tar", archive, {"data_dir": "../victim"}
    if kind == "pm2":
        source = {"kind": "pm2", "name": "web", "user": "root", "pm2_home": str(t / "pm2home")}
        archive = tar_of((rel(t / "pm2home" / "dump.pm2"), "file", b"[]"))
        return source, "pm2.tar", archive, {"pm2_home": "../victim", "user": "root", "apps": []}
    if kind == "docker_volume":
        source = {"kind": "docker_volume", "name": "web", "volume": "shop"}
        archive = tar_of(("./data.txt", "file", b"x"))
        return source, "volume.tar", archive, {"volume": "../victim", "files": 1, "bytes": 1}
    source = {
        "kind": "nats",
        "name": "web",
        "mode": "stop-copy",
        "store_dir": str(t / "store"),
        "container": "drkit-no-such-container",
    }
    archive = tar_of((rel(t / "store" / "jetstream" / "x"), "file", b"x"))
    facts = {"mode": "stop-copy", "store_dir": "../victim", "container": "evil"}
    return source, "store.tar", archive, facts


@pytest.mark.parametrize("kind", ["caddy", "docker_volume", "nats", "pm2"])
def test_a_restore_target_named_by_the_facts_is_ignored(
    tmp_path: Path, keys: Keys, kind: str
) -> None:
    h = Host(tmp_path, keys)
    (h.app / "index.html").write_text("x\n")
    h.backup()  # the repository exists; the snapshot used is the forged one below
    victim = tmp_path / "victim"  # = --dest/../victim
    victim.mkdir()
    (victim / "keep.txt").write_text("keep\n")
    source, artifact, archive, facts = _facts_target_case(kind, h)
    h.write([source])
    h.forge("web", kind, artifact, archive, facts)

    plan = h.run("restore", "--plan", "--force", "--dest", str(h.dest))
    assert "the policy's is used" in plan.stdout, plan.output
    res = h.run("restore", "--yes", "--force", "--dest", str(h.dest))
    assert res.returncode == 0, res.output
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]  # not emptied, not moved
    assert (victim / "keep.txt").stat().st_uid == os.getuid()  # no chown -R caddy:
    assert [p.name for p in tmp_path.iterdir() if "victim" in p.name] == ["victim"]


# ---- item 7: a truncated listing is not silent -----------------------------
def test_files_past_a_truncated_listing_are_never_overwritten_unseen(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    bulk, late = tmp_path / "srv" / "bulk", tmp_path / "srv" / "late"
    bulk.mkdir()
    late.mkdir()
    for i in range(20_000):  # bulk/ and its files fill the listing: late/ is past the cut
        (bulk / f"f{i:05d}").write_bytes(b"")
    for i in range(11):
        (late / f"conf{i}").write_text("at backup\n")
    h.write([{"kind": "files", "name": "app", "paths": [str(bulk), str(late)]}])
    h.backup()
    for i in range(11):
        (late / f"conf{i}").write_text("live, changed since\n")

    res = h.run("restore", "--yes")
    assert res.returncode == 1, res.output
    assert "listing was cut at 20000 entries" in res.stderr and "--force" in res.stderr
    assert all((late / f"conf{i}").read_text() == "live, changed since\n" for i in range(11))

    res = h.run("restore", "--yes", "--force", "--json")
    assert res.returncode == 0, res.output
    assert (late / "conf0").read_text() == "at backup\n"
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["files past the listing's cut"]["status"] == "warn"
    assert json.loads(res.stdout)["verdict"] == "warn"
