"""Restoring a ``nats`` snapshot-mode backup: all or nothing across its streams.

1. The index and every stream artifact are read and checked before anything on the
   server changes: decrypted and digested by the feed, the index's entries parsed,
   each snapshot's S2 framing and each export's records walked to their end record.
2. Streams are then replaced one by one (origins first). Before an existing stream
   is deleted (``--force-db``), a copy of it is taken into a private file under the
   state directory (its snapshot, or its export for a memory stream).
3. If any stream fails, every stream this run touched is put back as it was: the
   ones it created are deleted, the ones it replaced are restored from their copy,
   in reverse order. The error says so; the executor's progress does not mark the
   step done, so ``restore --resume`` (or a plain restore) redoes the whole step once
   the cause is fixed. A rollback that itself fails says which streams are left how,
   and keeps the copies, naming their files.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from drkit.errors import DrkitError, RestoreError
from drkit.paths import private_dir, state_dir
from drkit.sources.base import Feed, RestoreOptions, RestoreReport
from drkit.sources.nats_check import check_artifact
from drkit.sources.nats_helper import HelperStream, Prefixed
from drkit.sources.nats_streams import (
    INDEX,
    export_compare,
    read_index,
    restore_order,
    state_compare,
    stream_facts,
    summary,
)

if TYPE_CHECKING:
    from drkit.sources.nats import NatsSource

SNAPSHOT_CHUNK = 128 * 1024


@dataclass
class Touched:
    """A stream this run changed: ``copy`` holds what it was (None: it did not exist)."""

    name: str
    how: str  # how the copy is restored: snapshot or export
    copy: Path | None


class StreamsRestore:
    def __init__(self, source: NatsSource, feed: Feed, opts: RestoreOptions) -> None:
        self.source, self.feed, self.opts = source, feed, opts
        self.label = source.label
        self.url = source.url

    def run(self) -> RestoreReport:
        holder: list[dict[str, Any]] = []
        self.feed(INDEX, lambda s: holder.append(read_index(s, self.label)))
        entries = restore_order(holder[0]["streams"])
        existing = self.source._existing([e["name"] for e in entries], RestoreError)
        if existing and not self.opts.force_db:
            raise RestoreError(
                f"{self.label}: stream(s) {', '.join(sorted(existing))} already exist at "
                f"{self.url}; use --force-db to delete and replace them"
            )
        report = RestoreReport()
        if not entries:
            report.actions.append("the snapshot holds no streams")
            return report
        self.validate(entries)
        report.actions.append(
            f"checked {len(entries)} stream artifact(s) (decrypted, digests, framing) before "
            "replacing any stream"
        )
        touched: list[Touched] = []
        try:
            for entry in entries:
                report.actions.append(self.apply(entry, entry["name"] in existing, touched))
        except BaseException as exc:
            if not touched:
                raise
            undo = self.rollback(touched)
            if isinstance(exc, DrkitError):
                raise RestoreError(f"{exc}; {undo}") from exc
            raise
        for t in touched:
            if t.copy is not None:
                t.copy.unlink(missing_ok=True)
        return report

    # ---- 1. everything checked first ------------------------------------------
    def validate(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            how = e.get("how", "snapshot")
            what = f"{self.label}: stream {e['name']} ({e['artifact']})"
            self.feed(e["artifact"], partial(_check, how=how, what=what))

    # ---- 2. replace, one stream at a time -------------------------------------
    def apply(self, entry: dict[str, Any], exists: bool, touched: list[Touched]) -> str:
        name, how = entry["name"], entry.get("how", "snapshot")
        copy = None
        if exists:
            live_how = self._live_how(name)
            copy = self.save(name, live_how)
            touched.append(Touched(name, live_how, copy))
            self.source.helper_json("delete", name, error=RestoreError)
        else:
            touched.append(Touched(name, how, None))
        header = json.dumps({"config": entry["config"], "state": entry["state"]}).encode()
        result: list[dict[str, Any]] = []

        def consume(stream: BinaryIO) -> None:
            data = cast(BinaryIO, Prefixed(header + b"\n", stream))
            op = "restore" if how == "snapshot" else "import"
            result.append(json.loads(self.source.helper(op, name, data=data, error=RestoreError)))

        self.feed(entry["artifact"], consume)
        got = stream_facts({"name": name, **result[0]})
        if how == "snapshot":
            wrong, extra = state_compare(stream_facts(entry), got)
        else:
            wrong, extra = export_compare(entry, got)
        if wrong:
            raise RestoreError(f"{self.label}: stream {name} restored with {'; '.join(wrong)}")
        verb = "replaced" if exists else "restored"
        note = " (republished: new sequence numbers)" if how == "export" else ""
        return f"{verb} stream {name}{note}: {summary(got)}" + (f" ({extra})" if extra else "")

    def _live_how(self, name: str) -> str:
        info = self.source.helper_json("info", name, error=RestoreError)["streams"]
        memory = bool(info) and info[0]["config"].get("storage") == "memory"
        return "export" if memory else "snapshot"

    def save(self, name: str, how: str) -> Path:
        """A copy of the live stream ``name`` in a private file (header line, then its
        snapshot or export), to put it back if the restore fails."""
        where = state_dir() / "nats-rollback"
        private_dir(where)
        fd, path = tempfile.mkstemp(prefix=f"{self.source.runner.host}-", dir=where)
        args = (name, str(SNAPSHOT_CHUNK)) if how == "snapshot" else (name,)
        try:
            with os.fdopen(fd, "wb") as out, HelperStream(self.source, how, *args) as stream:
                out.write(json.dumps(cast(HelperStream, stream).header).encode() + b"\n")
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return Path(path)

    # ---- 3. all or nothing ----------------------------------------------------
    def rollback(self, touched: list[Touched]) -> str:
        """Put every touched stream back as it was, last first; returns what was done."""
        done, failed = [], []
        for t in reversed(touched):
            try:
                if self.source._existing([t.name], RestoreError):
                    self.source.helper_json("delete", t.name, error=RestoreError)
                    if t.copy is None:
                        done.append(f"{t.name} removed (it did not exist before)")
                if t.copy is None:
                    continue
                op = "restore" if t.how == "snapshot" else "import"
                with t.copy.open("rb") as data:
                    self.source.helper(op, t.name, data=data, error=RestoreError)
                t.copy.unlink()
                done.append(f"{t.name} put back as it was")
            except DrkitError as exc:
                kept = f" (its copy is kept in {t.copy})" if t.copy is not None else ""
                failed.append(f"{t.name}: {exc}{kept}")
        text = "rolled back: " + ", ".join(done) if done else "nothing to roll back"
        if failed:
            return (
                f"{text}; ROLLBACK FAILED for {'; '.join(failed)}: those streams are neither "
                "as before nor restored; fix the cause and restore again with --force-db"
            )
        return (
            f"{text}; the streams at {self.url} are as before this restore "
            "(--resume retries the whole step)"
        )


def _check(stream: BinaryIO, *, how: str, what: str) -> None:
    check_artifact(stream, how, what)
