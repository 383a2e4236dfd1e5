"""Snapshot manifests: the commit record of a snapshot, readable without the identity.

A manifest holds only what listing, pruning and integrity checks need (ids,
times, artifact names, sizes, digests, status). Anything that could be
sensitive (table names, domains, key names, paths) goes in the encrypted
facts object instead.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from drkit.errors import RepositoryError

MANIFEST_FORMAT = "drkit-manifest"
MANIFEST_VERSION = 1


_SNAPSHOT_ID = re.compile(r"(?P<second>\d{8}T\d{6})(?:\.(?P<ms>\d{3}))?Z-[0-9A-Za-z]+")


def new_snapshot_id(now: dt.datetime) -> str:
    """``20261122T032444.318Z-1a2b3c``: sorts by start time to the millisecond (two runs
    started in the same second, e.g. a `--due` tick running two schedules back to back,
    must not be ordered by chance); the random suffix keeps concurrent runs apart."""
    utc = now.astimezone(dt.UTC)
    return f"{utc:%Y%m%dT%H%M%S}.{utc.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def snapshot_time(snapshot_id: str) -> dt.datetime:
    """The start time a snapshot id names; ids written before milliseconds were added
    (``20261122T032444Z-1a2b3c``) still parse and sort (to the second)."""
    m = _SNAPSHOT_ID.fullmatch(snapshot_id)
    if m is None:
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    when = dt.datetime.strptime(m["second"], "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return when + dt.timedelta(milliseconds=int(m["ms"] or 0))


@dataclass(frozen=True)
class ArtifactRecord:
    source: str
    name: str
    key: str  # relative to the snapshot directory
    format: str  # e.g. "zstd+age/v1"; new formats (chunked) get new names
    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str
    # Chunked formats: stored bytes of the chunks this artifact stored first
    # (chunks it shares with earlier snapshots are theirs); 0 otherwise.
    new_bytes: int = 0


@dataclass(frozen=True)
class SourceRecord:
    name: str
    kind: str
    artifacts: list[ArtifactRecord]
    seconds: float


@dataclass(frozen=True)
class Manifest:
    host: str
    snapshot: str
    started: str
    finished: str
    drkit_version: str
    policy_sha256: str
    recipients: list[str]
    sources: list[SourceRecord]
    facts: ArtifactRecord | None
    status: str = "complete"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def artifacts(self) -> list[ArtifactRecord]:
        return [a for s in self.sources for a in s.artifacts]

    @property
    def stored_bytes(self) -> int:
        total = sum(a.stored_size + a.new_bytes for a in self.artifacts)
        return total + (self.facts.stored_size if self.facts else 0)

    def source(self, name: str) -> SourceRecord | None:
        return next((s for s in self.sources if s.name == name), None)

    def to_json(self) -> bytes:
        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, origin: str) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError("not a drkit manifest")
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"manifest version {data.get('version')} is not supported")
            sources = [
                SourceRecord(
                    name=s["name"],
                    kind=s["kind"],
                    seconds=float(s.get("seconds", 0.0)),
                    artifacts=[ArtifactRecord(**a) for a in s["artifacts"]],
                )
                for s in data["sources"]
            ]
            facts = ArtifactRecord(**data["facts"]) if data.get("facts") else None
            return cls(
                host=data["host"],
                snapshot=data["snapshot"],
                started=data["started"],
                finished=data["finished"],
                drkit_version=data["drkit_version"],
                policy_sha256=data["policy_sha256"],
                recipients=list(data.get("recipients", [])),
                sources=sources,
                facts=facts,
                status=data.get("status", "complete"),
                extra=dict(data.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{origin}: unreadable manifest ({exc})") from None
