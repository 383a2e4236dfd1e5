"""Key layout of a repository (format version 1; see docs/repository-format.md).

```
drkit.json                                 format marker, written by init
<host>/snapshots/<id>/manifest.json        written last: the commit
<host>/snapshots/<id>/facts.json.age       facts, encrypted
<host>/snapshots/<id>/<source>/<artifact>  artifact data (format per artifact)
<host>/drills/<drill-id>.json              drill verdicts
```
"""

from __future__ import annotations

import datetime as dt
import json
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from drkit import __version__
from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.documents import lazy_adapter, parse_document
from drkit.repository.manifest import (
    SIGNED_KIND,
    Manifest,
    check_envelope,
    dump_document,
    load_json,
    snapshot_time,
)
from drkit.repository.store import Store
from drkit.repository.trust import Trust
from drkit.signing import UntrustedError

REPO_MARKER = "drkit.json"
# 2: manifests and drill reports are signed. A drkit that knows only 1 refuses the
# repository rather than writing snapshots that newer readers would not trust.
REPO_FORMAT_VERSION = 2
DRILL_KIND = "drill-report"
_READERS = 8  # manifests fetched at once when a host's snapshots are read whole
_OPENED: weakref.WeakKeyDictionary[Store, Repository] = weakref.WeakKeyDictionary()


class RepoMarker(BaseModel):
    """``drkit.json``, checked on every read: a repository of an unknown shape or a newer
    format is refused before anything in it is used."""

    model_config = ConfigDict(extra="allow", defer_build=True)
    format: Literal["drkit-repository"]
    version: Annotated[StrictInt, Field(ge=1)]
    created: StrictStr | None = None
    created_by: StrictStr | None = None


_MARKER = lazy_adapter(lambda: RepoMarker)
MANIFEST = "manifest.json"
FACTS = "facts.json.age"


def snapshot_prefix(host: str, snapshot: str) -> str:
    return f"{host}/snapshots/{snapshot}/"


def object_key(host: str, snapshot: str, relative: str) -> str:
    return snapshot_prefix(host, snapshot) + relative


def manifest_key(host: str, snapshot: str) -> str:
    return object_key(host, snapshot, MANIFEST)


def drill_key(host: str, drill_id: str) -> str:
    return f"{host}/drills/{drill_id}.json"


@dataclass(frozen=True)
class SnapshotRef:
    host: str
    snapshot: str
    committed: bool


@dataclass(frozen=True)
class Rejected:
    """A committed snapshot that is not trusted: why, and the object that says so."""

    host: str
    snapshot: str
    reason: str


@dataclass
class HostSnapshots:
    """One host's committed snapshots, read whole and checked: ``trusted`` oldest first,
    ``untrusted`` with the reason each is refused (never used for any decision)."""

    host: str
    trusted: list[Manifest] = field(default_factory=list)
    untrusted: list[Rejected] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [m.snapshot for m in self.trusted]

    def newest_first(self) -> Iterator[Manifest]:
        return reversed(self.trusted)


def repository_of(store: Store) -> Repository | None:
    """The Repository last opened over ``store`` in this process, or None: how the
    chunk store of a backup finds the trusted snapshots whose packs it may reuse
    (repository/chunks.py) while its callers still hand it only the store."""
    return _OPENED.get(store)


class Repository:
    """Layout-aware access to a Store: snapshots, manifests, markers.

    Everything read is checked against ``trust`` (built from local policies): a
    manifest is used only when its signature is from a key the host's policy
    trusts, it names the host and snapshot it is stored under, and its times are
    not in the future. ``Repository(store)`` trusts no one: it can list and write
    markers, but reads no snapshot.
    """

    def __init__(self, store: Store, trust: Trust | None = None) -> None:
        self.store = store
        self.trust = trust or Trust()
        self._format_checked = False
        self._marker_version: int | None = None
        _OPENED[store] = self

    @property
    def url(self) -> str:
        return self.store.url

    def init(self) -> bool:
        """Write the format marker if missing; True if it was created. A marker of an
        older format is raised to this one (keeping its creation time): a drkit that
        does not sign then refuses the repository instead of writing snapshots that
        would be ignored as untrusted."""
        if self.store.stat(REPO_MARKER) is not None:
            version = self.check_format()
            if version is None or version >= REPO_FORMAT_VERSION:
                return False
            created = json.loads(self.store.get_bytes(REPO_MARKER)).get("created")
        else:
            created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        marker = {
            "format": "drkit-repository",
            "version": REPO_FORMAT_VERSION,
            "created": created,
            "created_by": f"drkit {__version__}",
        }
        self.store.put_bytes(REPO_MARKER, json.dumps(marker, indent=2).encode() + b"\n")
        self._format_checked, self._marker_version = True, REPO_FORMAT_VERSION
        return True

    def check_format(self) -> int | None:
        """Refuse a repository whose marker is malformed or of a newer format. Done
        before the first snapshot is read, by every command (not only init/backup).
        Returns the marker's version (None: no marker yet)."""
        if self._format_checked:
            return self._marker_version
        origin = f"{self.url}/{REPO_MARKER}"
        try:
            raw = self.store.get_bytes(REPO_MARKER)
        except ObjectNotFound:
            self._format_checked = True
            return None  # created implicitly by a first backup; marker is written then
        data = load_json(raw, origin, "format marker")
        marker: RepoMarker = parse_document(_MARKER(), data, origin, "format marker")
        if marker.version > REPO_FORMAT_VERSION:
            raise RepositoryError(
                f"{origin}: repository format {marker.version} is newer than this drkit "
                f"understands ({REPO_FORMAT_VERSION}); upgrade drkit"
            )
        self._format_checked = True
        self._marker_version = marker.version
        return marker.version

    def hosts(self) -> list[str]:
        """Hosts with at least one snapshot directory (two listings per host, not one
        of every object in the repository)."""
        return [h for h in self.store.list_dirs() if "snapshots" in self.store.list_dirs(f"{h}/")]

    def snapshots(self, host: str) -> list[SnapshotRef]:
        """Every snapshot directory of ``host``, committed or not, oldest first. A raw
        listing: nothing in it is trusted until ``manifest`` has checked it."""
        seen: dict[str, bool] = {}
        for info in self.store.list(f"{host}/snapshots/"):
            parts = info.key.split("/")
            if len(parts) < 4:
                continue
            sid = parts[2]
            seen[sid] = seen.get(sid, False) or parts[3] == MANIFEST
        return [SnapshotRef(host, sid, committed) for sid, committed in sorted(seen.items())]

    def read_host(self, host: str) -> HostSnapshots:
        """Every committed snapshot of ``host``, each manifest read and checked
        (``_READERS`` at a time). Listing errors and a malformed format marker raise
        RepositoryError; a snapshot that fails any check goes to ``untrusted``."""
        self.check_format()
        refs = [r for r in self.snapshots(host) if r.committed]
        out = HostSnapshots(host)
        with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="drkit-manifest") as pool:
            results = list(pool.map(lambda r: self._checked(host, r.snapshot), refs))
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, Manifest):
                out.trusted.append(result)
            elif not isinstance(result, ObjectNotFound):  # pruned since it was listed
                out.untrusted.append(Rejected(host, ref.snapshot, str(result)))
        return out

    def manifests(self, host: str) -> Iterator[Manifest]:
        """The host's trusted manifests, oldest first."""
        yield from self.read_host(host).trusted

    def manifest(self, host: str, snapshot: str) -> Manifest:
        """The checked manifest of ``host``'s ``snapshot``.

        Raises ObjectNotFound when it is not committed, UntrustedError when its
        signature, host, id or times do not check, RepositoryError when it is
        malformed; each names the object.
        """
        self.check_format()
        result = self._checked(host, snapshot)
        if isinstance(result, RepositoryError):
            raise result
        return result

    def _checked(self, host: str, snapshot: str) -> Manifest | RepositoryError:
        # Read anew each time (no cache): a run's later decisions must see what the
        # repository holds then, not what it held when the run started.
        try:
            return self._read_manifest(host, snapshot)
        except RepositoryError as exc:
            return exc

    def _read_manifest(self, host: str, snapshot: str) -> Manifest:
        key = manifest_key(host, snapshot)
        origin = f"{self.url}/{key}"
        try:
            when = snapshot_time(snapshot)
        except ValueError:
            raise UntrustedError(f"{origin}: {snapshot!r} is not a drkit snapshot id") from None
        latest = self.trust.latest_acceptable()
        if when > latest:
            raise UntrustedError(
                f"{origin}: snapshot id is dated {when:%Y-%m-%d %H:%M:%S} UTC, later than "
                "now (more than the allowed clock skew): check the clocks (NTP) of this "
                "machine and of the one that backed it up; it is trusted once its time comes"
            )
        try:
            raw = self.store.get_bytes(key)
        except ObjectNotFound:
            raise ObjectNotFound(
                f"{self.url}: host {host} has no committed snapshot {snapshot}"
            ) from None
        data = load_json(raw, origin, "manifest")
        check_envelope(data, origin)
        assert isinstance(data, dict)
        self.trust.snapshot_signers(host).verify(SIGNED_KIND, data, origin)
        manifest = Manifest.from_document(data, origin)
        if (manifest.host, manifest.snapshot) != (host, snapshot):
            raise UntrustedError(
                f"{origin}: manifest names host {manifest.host!r} snapshot "
                f"{manifest.snapshot!r}, not where it is stored"
            )
        for label, text in (("started", manifest.started), ("finished", manifest.finished)):
            try:
                at = dt.datetime.fromisoformat(text)
            except ValueError:
                raise RepositoryError(
                    f"{origin}: unreadable manifest ({label}: not a time)"
                ) from None
            at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
            if at > latest:
                raise UntrustedError(f"{origin}: {label} {text} is later than now")
        return manifest

    def write_manifest(self, manifest: Manifest) -> None:
        """Sign and store ``manifest`` (the commit). Raises UsageError when this
        machine's key is not one the host's policy trusts."""
        key = self.trust.signer_for(manifest.host)
        signed = key.sign(SIGNED_KIND, manifest.document())
        self.store.put_bytes(manifest_key(manifest.host, manifest.snapshot), dump_document(signed))

    def write_drill_report(self, host: str, drill_id: str, document: dict[str, object]) -> str:
        """Sign and store a drill report; returns its key. Raises UsageError when this
        machine's key is not trusted for the host's drill reports."""
        key = self.trust.signer_for(host, "drill reports")
        where = drill_key(host, drill_id)
        self.store.put_bytes(where, dump_document(key.sign(DRILL_KIND, document)))
        return where

    def drill_reports(self, host: str) -> tuple[list[dict[str, object]], list[Rejected]]:
        """The host's drill reports whose signature checks (parsed JSON objects naming
        this host, not dated in the future), and those refused with the reason.
        Listing errors raise RepositoryError."""
        trusted: list[dict[str, object]] = []
        rejected: list[Rejected] = []
        for info in self.store.list(f"{host}/drills/"):
            if not info.key.endswith(".json"):
                continue
            name = info.key.rsplit("/", 1)[-1][:-5]
            origin = f"{self.url}/{info.key}"
            try:
                data = load_json(self.store.get_bytes(info.key), origin, "drill report")
                if not isinstance(data, dict):
                    raise RepositoryError(f"{origin}: unreadable drill report (not a JSON object)")
                self.trust.drill_signers(host).verify(DRILL_KIND, data, origin)
                if data.get("host") != host:
                    raise UntrustedError(f"{origin}: report names host {data.get('host')!r}")
            except ObjectNotFound:
                continue
            except RepositoryError as exc:
                rejected.append(Rejected(host, name, str(exc)))
                continue
            trusted.append(data)
        return trusted, rejected

    def delete_snapshot(self, host: str, snapshot: str) -> None:
        """Remove the manifest first (uncommit), then the data."""
        self.store.delete(manifest_key(host, snapshot))
        for info in list(self.store.list(snapshot_prefix(host, snapshot))):
            self.store.delete(info.key)
