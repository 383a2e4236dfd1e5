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
from collections.abc import Iterator
from dataclasses import dataclass

from drkit import __version__
from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.manifest import Manifest
from drkit.repository.store import Store

REPO_MARKER = "drkit.json"
REPO_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FACTS = "facts.json.age"


def snapshot_prefix(host: str, snapshot: str) -> str:
    return f"{host}/snapshots/{snapshot}/"


def object_key(host: str, snapshot: str, relative: str) -> str:
    return snapshot_prefix(host, snapshot) + relative


def manifest_key(host: str, snapshot: str) -> str:
    return object_key(host, snapshot, MANIFEST)


@dataclass(frozen=True)
class SnapshotRef:
    host: str
    snapshot: str
    committed: bool


class Repository:
    """Layout-aware access to a Store: snapshots, manifests, markers."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def url(self) -> str:
        return self.store.url

    def init(self) -> bool:
        """Write the format marker if missing; True if it was created."""
        if self.store.stat(REPO_MARKER) is not None:
            self.check_format()
            return False
        marker = {
            "format": "drkit-repository",
            "version": REPO_FORMAT_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "created_by": f"drkit {__version__}",
        }
        self.store.put_bytes(REPO_MARKER, json.dumps(marker, indent=2).encode() + b"\n")
        return True

    def check_format(self) -> None:
        """Refuse a repository written by an incompatible (newer) format."""
        try:
            raw = self.store.get_bytes(REPO_MARKER)
        except ObjectNotFound:
            return  # created implicitly by a first backup; marker is written then
        try:
            version = int(json.loads(raw)["version"])
        except (ValueError, KeyError, TypeError):
            raise RepositoryError(f"{self.url}/{REPO_MARKER}: unreadable format marker") from None
        if version > REPO_FORMAT_VERSION:
            raise RepositoryError(
                f"{self.url}: repository format {version} is newer than this drkit "
                f"understands ({REPO_FORMAT_VERSION}); upgrade drkit"
            )

    def hosts(self) -> list[str]:
        """Hosts with at least one snapshot directory (two listings per host, not one
        of every object in the repository)."""
        return [h for h in self.store.list_dirs() if "snapshots" in self.store.list_dirs(f"{h}/")]

    def snapshots(self, host: str) -> list[SnapshotRef]:
        """Every snapshot directory of ``host``, committed or not, oldest first."""
        seen: dict[str, bool] = {}
        for info in self.store.list(f"{host}/snapshots/"):
            parts = info.key.split("/")
            if len(parts) < 4:
                continue
            sid = parts[2]
            seen[sid] = seen.get(sid, False) or parts[3] == MANIFEST
        return [SnapshotRef(host, sid, committed) for sid, committed in sorted(seen.items())]

    def manifests(self, host: str) -> Iterator[Manifest]:
        for ref in self.snapshots(host):
            if ref.committed:
                yield self.manifest(host, ref.snapshot)

    def manifest(self, host: str, snapshot: str) -> Manifest:
        key = manifest_key(host, snapshot)
        try:
            raw = self.store.get_bytes(key)
        except ObjectNotFound:
            raise ObjectNotFound(
                f"{self.url}: host {host} has no committed snapshot {snapshot}"
            ) from None
        return Manifest.from_json(raw, f"{self.url}/{key}")

    def write_manifest(self, manifest: Manifest) -> None:
        self.store.put_bytes(manifest_key(manifest.host, manifest.snapshot), manifest.to_json())

    def delete_snapshot(self, host: str, snapshot: str) -> None:
        """Remove the manifest first (uncommit), then the data."""
        self.store.delete(manifest_key(host, snapshot))
        for info in list(self.store.list(snapshot_prefix(host, snapshot))):
            self.store.delete(info.key)
