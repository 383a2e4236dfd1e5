"""``repository.dedup``: chunks stored once in packs, shared across snapshots, checked,
collected.

Runs on the local repository and on S3 (SeaweedFS). The data is a command
source streaming a file, restored by a command writing it back, so every
byte is compared.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from drkit.pipeline.chunk_index import read_index
from drkit.repository.chunks import PACK_SIZE_ENV
from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.e2e.test_postgres_roundtrip import callmeback, full_schema, pg_source  # noqa: F401
from tests.helpers import drkit, table_checksums, write_policy
from tests.servers.postgres import PgServer

HOST = "dd1"
MiB = 1 << 20


def dump_like(seed: int, size: int) -> bytes:
    """Text rows with some repetition, like a dump: compressible, not trivially."""
    rnd = random.Random(seed)
    words = [f"w{rnd.randrange(10**6)}" for _ in range(5000)]
    rows, n = [], 0
    while n < size:
        row = f"{n}\t{' '.join(rnd.choice(words) for _ in range(12))}\t{rnd.random()}\n"
        rows.append(row)
        n += len(row)
    return "".join(rows).encode()[:size]


def setup(tmp_path: Path, keys: Keys, repo: RepoTarget, data: bytes) -> tuple[Path, Path, Path]:
    src, out = tmp_path / "data.bin", tmp_path / "restored.bin"
    src.write_bytes(data)
    policy = write_policy(
        tmp_path / f"{HOST}.toml",
        HOST,
        {**repo.policy, "dedup": True},
        [keys.recipient],
        [
            {
                "kind": "command",
                "name": "db",
                "artifact": "dump",
                "command": ["cat", str(src)],
                "restore_command": ["sh", "-c", f"cat > {out}"],
            }
        ],
    )
    return policy, src, out


def backup(policy: Path, repo: RepoTarget, now: str | None = None) -> dict:
    env = {**repo.env, PACK_SIZE_ENV: str(MiB)}  # small packs: several per test
    env = {**env, "DRKIT_NOW": now} if now else env
    res = drkit("backup", "--policy", str(policy), "--json", env=env)
    assert res.returncode == 0, res.output
    return json.loads(res.stdout)["results"][0]


def restore(policy: Path, keys: Keys, repo: RepoTarget, *extra: str) -> object:
    # Backups here are taken "in 2030" ($DRKIT_NOW): read them from then too, or they
    # are refused as dated in the future.
    return drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        *extra,
        env={**repo.env, "DRKIT_NOW": "2031-01-01T00:00Z"},
    )


def pack_keys(repo: RepoTarget) -> list[str]:
    return repo.keys(f"{HOST}/packs/")


def test_second_backup_stores_only_changed_chunks_and_both_restore(
    tmp_path: Path, keys: Keys, repo: RepoTarget
) -> None:
    data = dump_like(1, 12 * MiB)
    policy, src, out = setup(tmp_path, keys, repo, data)
    first = backup(policy, repo)
    chunks_1 = pack_keys(repo)
    assert len(chunks_1) >= 3  # 1 MiB packs
    assert not repo.keys(f"{HOST}/chunks/")  # no object per chunk
    stored_1 = sum(len(repo.read(k)) for k in chunks_1)

    # A few rows changed in the middle, a few appended: most chunks are unchanged.
    changed = bytearray(data)
    changed[6 * MiB : 6 * MiB + 100] = b"X" * 100
    changed += dump_like(2, 64 << 10)
    src.write_bytes(bytes(changed))
    second = backup(policy, repo)
    new = sorted(set(pack_keys(repo)) - set(chunks_1))
    assert 1 <= len(new) <= 2, new
    assert sum(len(repo.read(k)) for k in new) < stored_1 / 3

    # The second restores to the changed data, the first to the original: shared chunks
    # serve both. (Snapshots named: two backups can start within the same second.)
    res = restore(policy, keys, repo, "--snapshot", second["snapshot"])
    assert res.returncode == 0, res.output
    assert out.read_bytes() == bytes(changed)
    res = restore(policy, keys, repo, "--snapshot", first["snapshot"])
    assert res.returncode == 0, res.output
    assert out.read_bytes() == data

    ok = drkit(
        "verify",
        "--policy",
        str(policy),
        "--all-snapshots",
        "--json",
        "--identity",
        str(keys.identity_file),
        env=repo.env,
    )
    assert ok.returncode == 0, ok.output
    # Each snapshot's figure is what verify read: every chunk it names, shared or new.
    for result in json.loads(ok.stdout)["results"]:
        assert result["bytes"] > 0.9 * stored_1, result


def test_altered_or_missing_pack_fails_verify_and_restore_naming_it(
    tmp_path: Path, keys: Keys, repo: RepoTarget
) -> None:
    data = dump_like(3, 6 * MiB)
    policy, src, out = setup(tmp_path, keys, repo, data)
    first = backup(policy, repo)
    first_packs = pack_keys(repo)
    src.write_bytes(data + b"more rows\n")
    second = backup(policy, repo)  # shares the first's packs
    index_key = next(k for k in repo.keys("/db/dump") if second["snapshot"] in k)
    reader, refs = read_index(repo.read(index_key), index_key)
    named = {r.at.pack for r in refs if r.at is not None}
    victim, gone = [k for k in first_packs if k.rsplit("/", 1)[-1] in named][:2]
    repo.flip_byte(victim)
    for extra in (["--identity", str(keys.identity_file)], ["--no-decrypt"]):
        bad = drkit("verify", "--policy", str(policy), "--all-snapshots", *extra, env=repo.env)
        assert bad.returncode != 0
        assert victim in bad.output, bad.output
        # The report names every snapshot that needs the damaged pack.
        needed = [ln for ln in bad.output.splitlines() if "is needed by snapshot(s)" in ln]
        assert needed and all(
            first["snapshot"] in ln and second["snapshot"] in ln for ln in needed
        ), bad.output
    # restore checks everything before it applies anything: the target is not written.
    res = restore(policy, keys, repo)
    assert res.returncode != 0 and victim in res.output, res.output
    assert not out.exists()
    repo.flip_byte(victim)

    # Without the identity, verify still finds a pack that is gone.
    saved = repo.read(gone)
    if repo.root is not None:
        (repo.root / gone).unlink()
    else:
        repo.s3.delete_object(Bucket=repo.bucket, Key=f"{repo.prefix}/{gone}")
    no_id = drkit("verify", "--policy", str(policy), "--no-decrypt", env=repo.env)
    assert no_id.returncode != 0 and gone in no_id.output, no_id.output
    repo.write(gone, saved)
    ok = restore(policy, keys, repo)
    assert ok.returncode == 0, ok.output
    assert out.read_bytes() == data + b"more rows\n"

    # An altered index (a chunk size changed, written as version 2 text, which is still
    # read) is refused, named, with or without the identity.
    lines = [f"drkit-chunk-index 2 {reader.codec} {reader.rset}"]
    for i, r in enumerate(refs):
        assert r.at is not None
        at = r.at
        size = r.size - (i == 0)
        lines.append(f"{r.id.hex()} {size} {at.pack} {at.offset} {at.length} {at.digest.hex()}")
    lines.append(f"end {reader.plain_size - 1} {reader.tree_digest}")
    repo.write(index_key, ("\n".join(lines) + "\n").encode())
    for extra in (["--no-decrypt"], ["--identity", str(keys.identity_file)]):
        res = drkit("verify", "--policy", str(policy), *extra, env=repo.env)
        assert res.returncode != 0 and index_key in res.output, res.output


def test_failed_source_commits_nothing_and_prune_collects_its_chunks(
    tmp_path: Path, keys: Keys, repo: RepoTarget
) -> None:
    data = dump_like(4, 6 * MiB)
    policy, src, out = setup(tmp_path, keys, repo, data)
    good = backup(policy, repo)
    kept_chunks = pack_keys(repo)

    # A source that streams new data then fails: chunks were stored, nothing committed.
    fail = tmp_path / "fail.sh"
    fail.write_text(
        f"#!/bin/sh\nhead -c 3000000 {src}; echo NEW; head -c 20000000 /dev/urandom; exit 3\n"
    )
    fail.chmod(0o755)
    policy.write_text(policy.read_text().replace(f'["cat", "{src}"]', f'["{fail}"]'))
    res = drkit("backup", "--policy", str(policy), env={**repo.env, PACK_SIZE_ENV: str(MiB)})
    assert res.returncode != 0 and "db" in res.output
    assert len(repo.keys("manifest.json")) == 1
    orphans = sorted(set(pack_keys(repo)) - set(kept_chunks))
    assert orphans, "the failed run stored chunks before failing"

    # prune (no grace) removes the orphans and keeps every chunk the snapshot names.
    res = drkit(
        "prune", "--policy", str(policy), "--grace", "0s", "--dry-run", "--json", env=repo.env
    )
    assert res.returncode == 0, res.output
    assert sorted(set(pack_keys(repo)) - set(kept_chunks)) == orphans  # a dry run removes none
    res = drkit("prune", "--policy", str(policy), "--grace", "0s", env=repo.env)
    assert res.returncode == 0, res.output
    assert (
        f"removed 0 snapshot(s), 0 incomplete (kept 0), 0 upload(s), {len(orphans)} pack(s): "
        in res.stdout
        and " bytes; kept 1" in res.stdout
    ), res.stdout
    assert pack_keys(repo) == kept_chunks
    res = restore(policy, keys, repo, "--snapshot", good["snapshot"])
    assert res.returncode == 0, res.output
    assert out.read_bytes() == data


def test_prune_removes_chunks_only_the_removed_snapshot_used(
    tmp_path: Path, keys: Keys, repo: RepoTarget
) -> None:
    policy, src, out = setup(tmp_path, keys, repo, dump_like(5, 4 * MiB))
    policy.write_text(policy.read_text() + "[retention]\nkeep_last = 1\n")
    backup(policy, repo, now="2030-01-01T03:00Z")
    first_chunks = set(pack_keys(repo))
    newer = dump_like(6, 4 * MiB)  # all different
    src.write_bytes(newer)
    backup(policy, repo, now="2030-01-02T03:00Z")
    second_only = set(pack_keys(repo)) - first_chunks
    res = drkit(
        "prune",
        "--policy",
        str(policy),
        "--grace",
        "0s",
        "--json",
        env={**repo.env, "DRKIT_NOW": "2030-01-03T00:00Z"},
    )
    assert res.returncode == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert len(result["removed"]) == 1
    assert set(pack_keys(repo)) == second_only
    res = restore(policy, keys, repo)
    assert res.returncode == 0, res.output
    assert out.read_bytes() == newer


def test_postgres_roundtrip_with_dedup(
    pg: PgServer,
    callmeback: tuple[str, str, str],  # noqa: F811 (the fixture)
    repo: RepoTarget,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """The PostgreSQL dump (staged restore, parallel post-data) through chunks: drop the
    database and its role, restore, same schema and table contents."""
    db, role, _password = callmeback
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {**repo.policy, "dedup": True},
        [keys.recipient],
        [pg_source(pg, db)],
    )
    schema, sums = full_schema(pg, db), table_checksums(pg, db)
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    assert repo.keys("vultr/packs/")
    pg.psql("postgres", f"DROP DATABASE {db};")
    pg.psql("postgres", f"DROP ROLE {role};")
    res = drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        env=repo.env,
    )
    assert res.returncode == 0, res.output
    assert full_schema(pg, db) == schema
    assert table_checksums(pg, db) == sums


@pytest.mark.parametrize("asked_by", ["env", "policy"])
def test_prune_repacks_mostly_garbage_packs_and_restore_follows_the_moves(
    tmp_path: Path, keys: Keys, repo: RepoTarget, asked_by: str
) -> None:
    """$DRKIT_REPACK, or ``[repository] repack`` in the policy, through the CLI: the first
    snapshot's packs mix what the second keeps with what only the first had; prune
    removes the first, repacks its packs (signed move record) and the second still
    restores and verifies through the record."""
    a = [dump_like(10 + i, 1536 << 10) for i in range(3)]
    b = [dump_like(20 + i, 1536 << 10) for i in range(3)]
    mixed = b"".join(x + y for x, y in zip(a, b, strict=True))
    policy, src, out = setup(tmp_path, keys, repo, mixed)
    policy.write_text(policy.read_text() + "[retention]\nkeep_last = 1\n")
    backup(policy, repo, now="2030-01-01T03:00Z")
    src.write_bytes(b"".join(b))
    second = backup(policy, repo, now="2030-01-02T03:00Z")
    before = set(pack_keys(repo))
    env = {**repo.env, "DRKIT_NOW": "2030-01-03T00:00Z"}
    if asked_by == "env":
        env["DRKIT_REPACK"] = "0.3"
    else:
        policy.write_text(
            policy.read_text().replace("[repository]\n", "[repository]\nrepack = 0.3\n")
        )
        dry = drkit("prune", "--policy", str(policy), "--grace", "0s", "--dry-run", env=env)
        assert dry.returncode == 0, dry.output
        assert "would repack " in dry.stdout, dry.stdout
    res = drkit("prune", "--policy", str(policy), "--grace", "0s", "--json", env=env)
    assert res.returncode == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["packs_repacked"] > 0 and result["packs_written"] == 1, result
    assert len(repo.keys(f"{HOST}/moves/")) == 1
    assert len(before - set(pack_keys(repo))) >= result["packs_repacked"]
    res = restore(policy, keys, repo)
    assert res.returncode == 0, res.output
    assert out.read_bytes() == b"".join(b)
    res = drkit(
        "verify",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--snapshot",
        second["snapshot"],
        "--json",
        env={**repo.env, "DRKIT_NOW": "2031-01-01T00:00Z"},
    )
    assert res.returncode == 0, res.output
