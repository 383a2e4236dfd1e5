"""Only your own backups are restored: forgeries by someone holding the bucket
credentials and the public recipient (tests/forge.py) are refused by every command.

Each test backs up real data, plants a forgery, then runs the real CLI: verify
names the forgery (exit 1); snapshots, status, backup --due, prune --dry-run,
restore --plan and restore ignore it and take the real newest snapshot; nothing
from it is applied. Runs on a local directory and on SeaweedFS.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drkit.repository.chunks import recipient_set
from tests import forge
from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import CliResult, drkit, write_policy

HOST = "vultr"
FUTURE = "20990101T000000.000Z-f0f0f0"


class Site:
    """A host with one .env file, its policy and a repository target."""

    def __init__(self, tmp_path: Path, repo: RepoTarget, keys: Keys, **policy: Any) -> None:
        self.repo, self.keys = repo, keys
        self.app = tmp_path / "root" / "app"
        self.app.mkdir(parents=True)
        self.env_file = self.app / ".env"
        self.env_file.write_text("TOKEN=real-1\n")
        self.policy = write_policy(
            tmp_path / f"{HOST}.toml",
            HOST,
            repo.policy,
            [keys.recipient],
            [{"kind": "env", "name": "env", "paths": [str(self.env_file)]}],
            extra=policy.get("extra", ""),
        )
        self.dest = tmp_path / "restored"

    def run(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        return drkit(*args, "--policy", str(self.policy), env={**self.repo.env, **(env or {})})

    def backup(self) -> str:
        res = self.run("backup", "--json")
        assert res.returncode == 0, res.output
        return str(json.loads(res.stdout)["results"][0]["snapshot"])

    def ident(self) -> tuple[str, str]:
        return ("--identity", str(self.keys.identity_file))


def _snapshot_ids(site: Site) -> tuple[list[str], list[str]]:
    data = json.loads(site.run("snapshots", "--json").stdout)
    return [r["snapshot"] for r in data["snapshots"]], [u["snapshot"] for u in data["untrusted"]]


def _assert_ignored(site: Site, real: str, forged: str, reason: str) -> None:
    """Every reading command refuses ``forged`` and takes ``real`` as the newest."""
    verify = site.run("verify", "--json", *site.ident())
    assert verify.returncode == 1, verify.output
    assert "Traceback" not in verify.output
    failed = [r for r in json.loads(verify.stdout)["results"] if not r["ok"]]
    assert [r["snapshot"] for r in failed] == [forged]
    assert reason in failed[0]["problems"][0] and forged in failed[0]["problems"][0]

    trusted, untrusted = _snapshot_ids(site)
    assert real in trusted and forged not in trusted and untrusted == [forged]

    status = json.loads(site.run("status", "--json").stdout)["hosts"][0]
    assert status["last_snapshot"] == real
    assert [u["snapshot"] for u in status["untrusted"]] == [forged]

    plan = site.run("restore", "--plan", "--json", "--dest", str(site.dest), *site.ident())
    assert plan.returncode == 0, plan.output
    assert forged not in plan.stdout and real in plan.stdout

    res = site.run("restore", "--yes", "--dest", str(site.dest), *site.ident())
    assert res.returncode == 0, res.output
    restored = site.dest / str(site.env_file).lstrip("/")
    assert restored.read_text() == site.env_file.read_text()
    assert not (site.dest / "etc").exists()  # nothing the forgery carried was written


def _plant_complete(site: Site, snapshot: str, sign_with: Any = None) -> None:
    evil = forge.evil_tar({str(site.env_file): b"TOKEN=attacker\n", "/etc/cron.d/x": b"* * * *"})
    forge.forge_snapshot(
        site.repo,
        HOST,
        snapshot,
        site.keys.recipient,
        "env",
        "env",
        "env.tar",
        evil,
        facts={"env": {"kind": "env"}},
        sign_with=sign_with,
    )


def _newest_id() -> str:
    """A snapshot id newer than any taken so far, and already past once returned: a
    forgery dated in the future would be refused as such first (a race with the clock
    that a loaded machine lost), not for the reason each test checks."""
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).replace(microsecond=0)
    while dt.datetime.now(dt.UTC) <= at:
        time.sleep(0.05)
    return at.strftime("%Y%m%dT%H%M%S.000Z-abcdef")


def test_a_complete_new_snapshot_is_refused(tmp_path: Path, repo: RepoTarget, keys: Keys) -> None:
    site = Site(tmp_path, repo, keys)
    real = site.backup()
    forged = _newest_id()
    _plant_complete(site, forged)
    _assert_ignored(site, real, forged, "not signed")


def test_a_snapshot_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, repo: RepoTarget, keys: Keys
) -> None:
    site = Site(tmp_path, repo, keys)
    real = site.backup()
    forged = _newest_id()
    _plant_complete(site, forged, sign_with=forge.attacker_key(tmp_path))
    _assert_ignored(site, real, forged, "which is not trusted")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m["sources"][0]["artifacts"][0].update(stored_size=1), "does not check"),
        (lambda m: m.update(facts=None), "does not check"),
        (lambda m: m.update(signature=None), "not signed"),
        (lambda m: m["sources"][0]["artifacts"][0].update(stored_size="12"), "does not check"),
    ],
    ids=["digest", "facts-null", "unsigned", "string-size"],
)
def test_a_modified_manifest_is_refused(
    tmp_path: Path,
    repo: RepoTarget,
    keys: Keys,
    change: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    site = Site(tmp_path, repo, keys)
    real = site.backup()
    site.env_file.write_text("TOKEN=real-2\n")
    newest = site.backup()
    forge.edit_manifest(site.repo, HOST, newest, change)
    site.env_file.write_text("TOKEN=real-1\n")  # what the older, real snapshot restores
    _assert_ignored(site, real, newest, reason)


def test_a_future_dated_copy_is_refused_by_every_command(
    tmp_path: Path, repo: RepoTarget, keys: Keys
) -> None:
    """A copy of a real snapshot under a future id: it must not make the host look
    fresh, make --due skip, be restored, or make prune keep it and drop real ones."""
    site = Site(tmp_path, repo, keys, extra='schedule = "0 * * * *"\n[retention]\nkeep_last = 1')
    old = site.backup()
    real = site.backup()
    forge.copy_snapshot(site.repo, HOST, real, FUTURE)
    _assert_ignored(site, real, FUTURE, "later than now")

    dry = json.loads(site.run("prune", "--dry-run", "--json").stdout)["results"][0]
    decisions = {d["snapshot"]: d for d in dry["snapshots"]}
    assert decisions[real]["keep"] and not decisions[old]["keep"]
    assert FUTURE not in decisions
    assert [s["snapshot"] for s in dry["skipped"]] == [FUTURE]

    # Two hours on, the hourly schedule is due: the planted "2099" snapshot must not
    # count as the success that makes it not due.
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    due = site.run("backup", "--due", "--json", env={"DRKIT_NOW": later})
    assert due.returncode == 0, due.output
    assert json.loads(due.stdout)["results"][0]["status"] == "success"


def test_a_copy_under_another_host_is_refused(tmp_path: Path, repo: RepoTarget, keys: Keys) -> None:
    """Signed by a key both hosts trust, but for host vultr: under e2i it is refused."""
    site = Site(tmp_path, repo, keys)
    real = site.backup()
    for key in site.repo.keys(f"{HOST}/snapshots/{real}/"):
        site.repo.write(key.replace(f"{HOST}/", "e2i/", 1), site.repo.read(key))
    other = write_policy(
        tmp_path / "e2i.toml",
        "e2i",
        repo.policy,
        [keys.recipient],
        [{"kind": "env", "name": "env", "paths": [str(site.env_file)]}],
    )
    res = drkit("verify", "--policy", str(other), "--json", *site.ident(), env=repo.env)
    assert res.returncode == 1, res.output
    [result] = json.loads(res.stdout)["results"]
    assert "not where it is stored" in result["problems"][0]


def test_a_newer_repository_format_is_refused_everywhere(
    tmp_path: Path, repo: RepoTarget, keys: Keys
) -> None:
    site = Site(tmp_path, repo, keys)
    site.backup()
    site.repo.write(
        "drkit.json", json.dumps({"format": "drkit-repository", "version": 99}).encode()
    )
    for args in (
        ("verify", *site.ident()),
        ("restore", "--plan", *site.ident()),
        ("status",),
        ("snapshots",),
        ("backup",),
    ):
        res = site.run(*args)
        # status and snapshots report the host unreadable in its row and go on: exit 3.
        assert res.returncode in ((3,) if args in (("status",), ("snapshots",)) else (1, 2)), (
            args,
            res.output,
        )
        assert "drkit.json" in res.stderr and "newer" in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.output


def test_a_chunk_planted_under_a_guessable_id_is_never_reused(
    tmp_path: Path, repo: RepoTarget, keys: Keys
) -> None:
    """Chunk ids are keyed: the attacker who knows (or guesses) a file's content cannot
    name the chunks a dedup backup will look for. Before, a planted chunk under
    sha256(plain) was reused and the backup could not be restored."""
    known = tmp_path / "known.bin"
    known.write_bytes(bytes(range(256)) * 8192)  # 2 MiB everyone could know
    policy = write_policy(
        tmp_path / f"{HOST}.toml",
        HOST,
        {**repo.policy, "dedup": True},
        [keys.recipient],
        [{"kind": "command", "name": "blob", "command": ["cat", str(known)]}],
    )
    planted = forge.plant_v1_chunks(
        repo, HOST, recipient_set([keys.recipient]), known.read_bytes(), b"junk", keys.recipient
    )
    assert planted >= 2
    res = drkit("backup", "--policy", str(policy), env=repo.env)
    assert res.returncode == 0, res.output
    verify = drkit(
        "verify",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--json",
        env=repo.env,
    )
    assert verify.returncode == 0, verify.output


def test_key_rotation_keeps_old_snapshots_until_their_key_is_removed(
    tmp_path: Path, repo: RepoTarget, keys: Keys
) -> None:
    """Old key A and new key B both pinned: A's snapshot restores and verifies. A removed
    from the signers: A's snapshots are reported untrusted; B's restore."""
    from drkit.signing import SigningKey

    site = Site(tmp_path, repo, keys)
    old_key = SigningKey.load()
    old = site.backup()
    new_key = SigningKey.create(tmp_path / "new-signing.key")
    both = site.policy.read_text().replace(
        f'signers = ["{old_key.public}"]', f'signers = ["{old_key.public}", "{new_key.public}"]'
    )
    site.policy.write_text(both)
    site.env_file.write_text("TOKEN=rotated\n")
    res = site.run("backup", "--json", env={"DRKIT_SIGNING_KEY": str(new_key.path)})
    assert res.returncode == 0, res.output
    new = json.loads(res.stdout)["results"][0]["snapshot"]
    verify = site.run("verify", "--all-snapshots", "--json", *site.ident())
    assert verify.returncode == 0, verify.output
    assert {r["snapshot"] for r in json.loads(verify.stdout)["results"]} == {old, new}
    dest = tmp_path / "old-restore"
    res = site.run("restore", "--yes", "--snapshot", old, "--dest", str(dest), *site.ident())
    assert res.returncode == 0, res.output
    assert (dest / str(site.env_file).lstrip("/")).read_text() == "TOKEN=real-1\n"

    # The old key is retired: its snapshots are no longer trusted, the new ones are.
    site.policy.write_text(both.replace(f'"{old_key.public}", ', ""))
    verify = site.run("verify", "--all-snapshots", "--json", *site.ident())
    assert verify.returncode == 1
    failed = [r for r in json.loads(verify.stdout)["results"] if not r["ok"]]
    assert [r["snapshot"] for r in failed] == [old]
    assert "which is not trusted" in failed[0]["problems"][0]
    assert _snapshot_ids(site) == ([new], [old])
    # And the old machine can no longer back this host up (refused, nothing written):
    # a usage error of this machine's setup, exit 2.
    refused = site.run("backup")
    assert refused.returncode == 2, refused.output
    assert "not in the policy's [encryption] signers" in refused.stderr
    assert _snapshot_ids(site) == ([new], [old])
