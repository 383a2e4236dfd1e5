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
from typing import Annotated, Any

from pydantic import ConfigDict, Field, Strict, StrictInt, StrictStr, with_config

from drkit.errors import RepositoryError
from drkit.repository.documents import lazy_adapter, parse_document

MANIFEST_FORMAT = "drkit-manifest"
# 2: signed (drkit.signing). Version 1 manifests were unsigned: they are read for
# listing as untrusted, never used.
MANIFEST_VERSION = 2
SIGNED_KIND = "manifest"


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


_Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
_Size = Annotated[StrictInt, Field(ge=0)]
_Name = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")]
# Relative to the snapshot directory: names only, no "..", no absolute path.
_Key = Annotated[
    StrictStr,
    Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._+-]{0,127})?$"),
]
_Host = Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
_Text = Annotated[StrictStr, Field(max_length=256)]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class ArtifactRecord:
    source: _Name
    name: _Name
    key: _Key  # relative to the snapshot directory
    format: _Text  # e.g. "zstd+age/v1"; new formats (chunked) get new names
    plain_size: _Size
    plain_sha256: _Sha256
    stored_size: _Size
    stored_sha256: _Sha256
    # Chunked formats: stored bytes of the chunks this artifact stored first
    # (chunks it shares with earlier snapshots are theirs); 0 otherwise.
    new_bytes: _Size = 0


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class SourceRecord:
    name: _Name
    kind: _Text
    artifacts: list[ArtifactRecord]
    seconds: Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)] = 0.0
    # How many warnings the source filed while backed up (its facts say what: e.g. a
    # NATS memory stream that no snapshot can hold): a count, so `snapshots` and the
    # metrics show them without the identity, and the plaintext names nothing.
    warnings: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 0


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class Manifest:
    host: _Host
    snapshot: Annotated[StrictStr, Field(pattern=_SNAPSHOT_ID.pattern)]
    started: _Text
    finished: _Text
    drkit_version: _Text
    policy_sha256: _Text
    recipients: list[StrictStr]
    sources: list[SourceRecord]
    facts: ArtifactRecord | None
    status: Annotated[StrictStr, Field(pattern=r"^[a-z]{1,20}$")] = "complete"
    extra: dict[StrictStr, Any] = field(default_factory=dict)

    @property
    def artifacts(self) -> list[ArtifactRecord]:
        return [a for s in self.sources for a in s.artifacts]

    @property
    def stored_bytes(self) -> int:
        total = sum(a.stored_size + a.new_bytes for a in self.artifacts)
        return total + (self.facts.stored_size if self.facts else 0)

    def source(self, name: str) -> SourceRecord | None:
        return next((s for s in self.sources if s.name == name), None)

    def document(self) -> dict[str, Any]:
        """The manifest as the JSON object that is signed and stored (without signature)."""
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **asdict(self)}

    def to_json(self) -> bytes:
        """Unsigned: what documentation and tests show. Repositories store the signed
        form (Repository.write_manifest)."""
        return dump_document(self.document())

    @classmethod
    def from_document(cls, data: object, origin: str) -> Manifest:
        """Check ``data`` (parsed JSON) against the manifest schema.

        Raises RepositoryError naming ``origin`` and every field that is wrong. Says
        nothing of trust: Repository.manifest checks the signature first.
        """
        check_envelope(data, origin)
        assert isinstance(data, dict)
        body = {k: v for k, v in data.items() if k not in ("format", "version", "signature")}
        manifest: Manifest = parse_document(_MANIFEST(), body, origin, "manifest")
        return manifest

    @classmethod
    def from_json(cls, raw: bytes, origin: str) -> Manifest:
        return cls.from_document(load_json(raw, origin, "manifest"), origin)


_MANIFEST = lazy_adapter(lambda: Manifest)


def dump_document(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def load_json(raw: bytes, origin: str, what: str) -> object:
    """Parsed JSON of a repository document. Raises RepositoryError naming ``origin``."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{origin}: unreadable {what} (not JSON: {exc})") from None


def check_envelope(data: object, origin: str) -> None:
    """A manifest's format and version. Raises RepositoryError naming ``origin``."""
    if not isinstance(data, dict):
        raise RepositoryError(f"{origin}: unreadable manifest (not a JSON object)")
    if data.get("format") != MANIFEST_FORMAT:
        raise RepositoryError(f"{origin}: unreadable manifest (not a drkit manifest)")
    version = data.get("version")
    if version == 1:
        raise RepositoryError(
            f"{origin}: manifest version 1 (written before drkit signed its snapshots); not trusted"
        )
    if version != MANIFEST_VERSION:
        raise RepositoryError(f"{origin}: manifest version {version!r} is not supported")
