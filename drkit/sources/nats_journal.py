"""The journal of a ``nats`` snapshot restore: which streams it owns, so that a restore
killed while it replaces streams can be completed (or rolled back) by ``--resume``.

One file per (policy host, target, NATS URL, source) in the state directory, next to
the rollback copies (``nats-rollback/journal-<key>.json``), written (atomically, fsync)
before the first stream changes and after every change:

- ``pending``: not touched yet (``existed``: it was on the target when the restore
  started; the restore was told to replace it, ``--force-db``);
- ``copied``: the target's stream was copied to ``copy``; it may be deleted already;
- ``replacing``: the target's stream is gone, the backup's is being restored: the
  stream on the server, if any, is this restore's and may be partial;
- ``restored``: the backup's stream is in place and was checked.

The journal is removed when the restore completes or is rolled back whole. While it
exists, a restore without ``--resume`` is refused, naming it (never a silent
half-restore); ``--resume`` needs no ``--force-db`` for the streams it names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.errors import RestoreError
from drkit.paths import private_dir, state_dir

if TYPE_CHECKING:
    from drkit.sources.nats import NatsSource

FORMAT = "drkit-nats-restore-journal"
STATES = ("pending", "copied", "replacing", "restored")


def rollback_dir() -> Path:
    where = state_dir() / "nats-rollback"
    private_dir(where)
    return where


def backup_key(streams: list[dict[str, Any]]) -> str:
    """Which backup a restore is of: each stream's name and recorded state (the same
    from the facts, for the plan, as from the index, for the restore)."""
    rows = sorted(
        [
            s["name"],
            int(s.get("first_seq") or 0),
            int(s.get("last_seq") or 0),
            int(s.get("messages") or 0),
        ]
        for s in streams
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:32]


class Journal:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @staticmethod
    def path_for(source: NatsSource) -> Path:
        target = getattr(source.runner, "target", "local")
        ident = f"{source.runner.host}|{target}|{source.url}|{source.name}"
        key = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return rollback_dir() / f"journal-{key}.json"

    @classmethod
    def load(cls, source: NatsSource) -> Journal | None:
        path = cls.path_for(source)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RestoreError(
                f"{source.label}: the journal of an interrupted restore, {path}, cannot be "
                f"read ({exc}); look at the streams at {source.url} and remove it"
            ) from None
        if data.get("format") != FORMAT or not isinstance(data.get("streams"), dict):
            raise RestoreError(f"{source.label}: {path} is not a drkit NATS restore journal")
        return cls(path, data)

    @classmethod
    def begin(cls, source: NatsSource, key: str, order: list[str], existing: set[str]) -> Journal:
        data = {
            "format": FORMAT,
            "version": 1,
            "host": source.runner.host,
            "url": source.url,
            "source": source.name,
            "backup": key,
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "order": order,
            "streams": {
                n: {"status": "pending", "existed": n in existing, "copy": None, "how": None}
                for n in order
            },
        }
        journal = cls(cls.path_for(source), data)
        journal.save()
        return journal

    # ---- what it says ---------------------------------------------------------
    def entry(self, name: str) -> dict[str, Any]:
        e: dict[str, Any] = self.data["streams"].get(name) or {
            "status": "pending",
            "existed": False,
            "copy": None,
            "how": None,
        }
        return e

    def status(self, name: str) -> str:
        return str(self.entry(name)["status"])

    def owns(self, name: str) -> bool:
        """The restore recorded may replace ``name``: it touched it, or it was told to."""
        e = self.entry(name)
        return e["status"] != "pending" or bool(e["existed"])

    def describe(self) -> str:
        by: dict[str, list[str]] = {s: [] for s in STATES}
        for name in self.data.get("order", []):
            e = self.entry(name)
            text = name
            if e["status"] in ("copied", "replacing") and e.get("copy"):
                text += f" (what the target held is copied in {e['copy']})"
            by[e["status"]].append(text)
        parts = [
            f"{label}: {', '.join(by[s])}"
            for s, label in (
                ("restored", "restored"),
                ("replacing", "being replaced"),
                ("copied", "being replaced"),
                ("pending", "not started"),
            )
            if by[s]
        ]
        return f"started {self.data.get('started', '?')}; " + "; ".join(parts)

    # ---- changes ----------------------------------------------------------------
    def set(self, name: str, status: str, **fields: Any) -> None:
        self.data["streams"][name] = {**self.entry(name), **fields, "status": status}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(self.data, indent=1))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
