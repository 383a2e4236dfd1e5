"""What an attacker holding only the bucket credentials and the public recipient can
write (tests only). Nothing here uses an identity or a trusted signing key: the
forgeries use drkit's public code and formats, as an attacker would.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from drkit.pipeline.age import parse_recipient
from drkit.pipeline.codec import FORMAT, encode
from drkit.repository.manifest import MANIFEST_FORMAT, MANIFEST_VERSION, SIGNED_KIND
from drkit.signing import SigningKey
from tests.e2e.repos import RepoTarget


def _sealed(data: bytes, recipient: str) -> tuple[bytes, dict[str, Any]]:
    """``data`` as drkit stores an artifact (zstd + age to ``recipient``), with its digests."""
    out = io.BytesIO()
    d = encode(io.BytesIO(data), [parse_recipient(recipient)], lambda s: out.write(s.read()))
    digests = {
        "plain_size": d.plain_size,
        "plain_sha256": d.plain_sha256,
        "stored_size": d.stored_size,
        "stored_sha256": d.stored_sha256,
    }
    return out.getvalue(), digests


def evil_tar(files: dict[str, bytes]) -> bytes:
    """A tar stream as the env/files sources write (absolute paths without the "/")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, body in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(body), 0o600
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def forge_snapshot(
    target: RepoTarget,
    host: str,
    snapshot: str,
    recipient: str,
    source: str,
    kind: str,
    artifact: str,
    data: bytes,
    facts: dict[str, Any] | None = None,
    sign_with: SigningKey | None = None,
) -> None:
    """A complete, well-formed snapshot of one source: artifact, facts, manifest.
    ``sign_with``: the attacker's own key (not one any policy pins); else unsigned."""
    prefix = f"{host}/snapshots/{snapshot}/"
    blob, digests = _sealed(data, recipient)
    target.write(f"{prefix}{source}/{artifact}", blob)
    facts_blob, facts_digests = _sealed(json.dumps(facts or {}).encode(), recipient)
    target.write(f"{prefix}facts.json.age", facts_blob)
    record = {
        "source": source,
        "name": artifact,
        "key": f"{source}/{artifact}",
        "format": FORMAT,
        "new_bytes": 0,
        **digests,
    }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "host": host,
        "snapshot": snapshot,
        "started": _started(snapshot),
        "finished": _started(snapshot),
        "status": "complete",
        "drkit_version": "0.1.0",
        "policy_sha256": "0" * 64,
        "recipients": [recipient],
        "extra": {},
        "sources": [{"name": source, "kind": kind, "seconds": 0.1, "artifacts": [record]}],
        "facts": {
            "source": "facts.json.age",
            "name": "facts.json.age",
            "key": "facts.json.age",
            "format": FORMAT,
            "new_bytes": 0,
            **facts_digests,
        },
    }
    if sign_with is not None:
        manifest = sign_with.sign(SIGNED_KIND, manifest)
    target.write(f"{prefix}manifest.json", json.dumps(manifest).encode())


def _started(snapshot: str) -> str:
    s = snapshot
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}+00:00"


def edit_manifest(target: RepoTarget, host: str, snapshot: str, change: Any) -> None:
    """Rewrite a real snapshot's manifest (its signature left as it was)."""
    key = f"{host}/snapshots/{snapshot}/manifest.json"
    data = json.loads(target.read(key))
    change(data)
    target.write(key, json.dumps(data).encode())


def copy_snapshot(target: RepoTarget, host: str, snapshot: str, new_id: str) -> None:
    """Every object of a real snapshot copied under another (e.g. future-dated) id."""
    old = f"{host}/snapshots/{snapshot}/"
    for key in target.keys(old):
        target.write(f"{host}/snapshots/{new_id}/{key[len(old) :]}", target.read(key))


def plant_v1_chunks(
    target: RepoTarget, host: str, rset: str, plain: bytes, junk: bytes, recipient: str
) -> int:
    """Plant, under every id an unkeyed (sha256) chunker would give the chunks of
    ``plain``, a chunk that decrypts to ``junk``: a backup that reused them would
    restore junk. Returns how many were planted."""
    from pyfastcdc import FastCDC

    from drkit.pipeline.chunked import AVG_CHUNK, MAX_CHUNK, MIN_CHUNK
    from drkit.repository.chunks import chunk_key

    blob, _ = _sealed(junk, recipient)
    n = 0
    cutter = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    for piece in cutter.cut_buf(plain):
        cid = hashlib.sha256(bytes(piece.data)).digest()
        target.write(chunk_key(host, rset, cid), blob)
        n += 1
    return n


def attacker_key(directory: Path) -> SigningKey:
    return SigningKey.create(directory / "attacker.key")
