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
4. A journal (``nats_journal``) records, before the first stream changes and after
   each change, which streams this restore owns. A drkit killed mid-step leaves it:
   a restore without ``--resume`` is then refused naming it, and ``--resume``
   completes the step without ``--force-db`` (a stream being replaced when it stopped
   is deleted and restored again), or, if a stream fails, puts back every stream the
   interrupted run and itself touched, from the copies. The helper applies a snapshot
   only when all its bytes came (``bytes`` in its metadata): a helper whose drkit was
   killed mid-stream never applies a truncated snapshot.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from drkit.errors import DrkitError, RestoreError
from drkit.sources.base import Feed, RestoreOptions, RestoreReport
from drkit.sources.nats_check import check_artifact
from drkit.sources.nats_helper import MAX_HEADER, HelperStream, Prefixed
from drkit.sources.nats_journal import Journal, backup_key, rollback_dir
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
# Tests only: a named point where drkit stops itself (SIGSTOP), for a kill -9 there.
STOP_AT = "DRKIT_TEST_STOP_AT"


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
        self.sizes: dict[str, int] = {}  # artifact -> plain size (checked before applying)
        self.journal: Journal | None = None

    def run(self) -> RestoreReport:
        holder: list[dict[str, Any]] = []
        self.feed(INDEX, lambda s: holder.append(read_index(s, self.label)))
        entries = restore_order(holder[0]["streams"])
        names = [e["name"] for e in entries]
        key = backup_key([stream_facts(e) for e in entries])
        journal = interrupted(self.source, key, self.opts)
        existing = self.source._existing(names, RestoreError)
        foreign = {n for n in existing if not (journal and journal.owns(n))}
        if foreign and not self.opts.force_db:
            raise RestoreError(
                f"{self.label}: stream(s) {', '.join(sorted(foreign))} already exist at "
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
        if journal is None:
            journal = Journal.begin(self.source, key, names, existing)
        else:
            report.actions.append(
                f"resuming the interrupted restore recorded in {journal.path} "
                f"({journal.describe()})"
            )
        self.journal = journal
        touched: list[Touched] = []
        try:
            for entry in entries:
                report.actions.append(self.apply(entry, entry["name"] in existing, touched))
        except BaseException as exc:
            if not touched:
                journal.remove()
                raise
            undo = self.rollback(touched)
            if isinstance(exc, DrkitError):
                raise RestoreError(f"{exc}; {undo}") from exc
            raise
        for t in touched:
            if t.copy is not None:
                t.copy.unlink(missing_ok=True)
        journal.remove()
        return report

    # ---- 1. everything checked first ------------------------------------------
    def validate(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            how = e.get("how", "snapshot")
            what = f"{self.label}: stream {e['name']} ({e['artifact']})"

            def check(
                stream: BinaryIO, artifact: str = e["artifact"], how: str = how, what: str = what
            ) -> None:
                self.sizes[artifact] = check_artifact(stream, how, what)

            self.feed(e["artifact"], check)

    # ---- 2. replace, one stream at a time -------------------------------------
    def apply(self, entry: dict[str, Any], exists: bool, touched: list[Touched]) -> str:
        name, how = entry["name"], entry.get("how", "snapshot")
        journal = self.journal
        assert journal is not None
        before = journal.entry(name)
        if before["status"] == "restored" and exists:
            touched.append(Touched(name, before["how"] or how, _path(before["copy"])))
            return f"kept stream {name}: restored by the interrupted restore"
        if before["status"] != "pending":
            # The interrupted run's: what the target held (if anything) is in the copy;
            # a stream there now is this restore's, maybe partial.
            copy = _path(before["copy"])
            touched.append(Touched(name, before["how"] or how, copy))
            if exists:
                self.source.helper_json("delete", name, error=RestoreError)
        elif exists:
            live_how = self._live_how(name)
            copy = self.save(name, live_how)
            touched.append(Touched(name, live_how, copy))
            journal.set(name, "copied", copy=str(copy), how=live_how)
            self.source.helper_json("delete", name, error=RestoreError)
        else:
            copy = None
            touched.append(Touched(name, how, None))
        journal.set(name, "replacing")
        header: dict[str, Any] = {"config": entry["config"], "state": entry["state"]}
        if how == "snapshot":  # the helper applies it only if every byte came
            header["bytes"] = self.sizes[entry["artifact"]]
        result: list[dict[str, Any]] = []

        def consume(stream: BinaryIO) -> None:
            data = cast(BinaryIO, Prefixed(json.dumps(header).encode() + b"\n", stream))
            if os.environ.get(STOP_AT) == f"nats-replace:{name}":
                data = cast(BinaryIO, _StopAfterFirst(data))
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
        journal.set(name, "restored")
        verb = "replaced" if copy is not None else "restored"
        note = " (republished: new sequence numbers)" if how == "export" else ""
        return f"{verb} stream {name}{note}: {summary(got)}" + (f" ({extra})" if extra else "")

    def _live_how(self, name: str) -> str:
        info = self.source.helper_json("info", name, error=RestoreError)["streams"]
        memory = bool(info) and info[0]["config"].get("storage") == "memory"
        return "export" if memory else "snapshot"

    def save(self, name: str, how: str) -> Path:
        """A copy of the live stream ``name`` in a private file (header line, then its
        snapshot or export), to put it back if the restore fails."""
        fd, path = tempfile.mkstemp(prefix=f"{self.source.runner.host}-", dir=rollback_dir())
        args = (name, str(SNAPSHOT_CHUNK)) if how == "snapshot" else (name,)
        try:
            with os.fdopen(fd, "wb") as out, HelperStream(self.source, how, *args) as stream:
                out.write(json.dumps(cast(HelperStream, stream).header).encode() + b"\n")
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return Path(path)

    # ---- 3. all or nothing ----------------------------------------------------
    def rollback(self, touched: list[Touched]) -> str:
        """Put every touched stream back as it was, last first; returns what was done.
        Each stream put back is pending again in the journal; the journal goes when
        everything is back, else it stays for ``--resume``."""
        journal = self.journal
        assert journal is not None
        done, failed = [], []
        for t in reversed(touched):
            try:
                if self.source._existing([t.name], RestoreError):
                    self.source.helper_json("delete", t.name, error=RestoreError)
                    if t.copy is None:
                        done.append(f"{t.name} removed (it did not exist before)")
                if t.copy is not None:
                    self.put_back(t)
                    done.append(f"{t.name} put back as it was")
                journal.set(t.name, "pending", copy=None, how=None)
                if t.copy is not None:
                    t.copy.unlink()
            except DrkitError as exc:
                kept = f" (its copy is kept in {t.copy})" if t.copy is not None else ""
                failed.append(f"{t.name}: {exc}{kept}")
        text = "rolled back: " + ", ".join(done) if done else "nothing to roll back"
        if failed:
            return (
                f"{text}; ROLLBACK FAILED for {'; '.join(failed)}: those streams are neither "
                f"as before nor restored; fix the cause and run this restore again with "
                f"--resume (the journal {journal.path} says what it owns)"
            )
        journal.remove()
        return (
            f"{text}; the streams at {self.url} are as before this restore "
            "(--resume retries the whole step)"
        )

    def put_back(self, t: Touched) -> None:
        """Restore a stream from its rollback copy (the helper checks its length)."""
        assert t.copy is not None
        with t.copy.open("rb") as data:
            line = data.readline(MAX_HEADER)
            header = json.loads(line)
            if t.how == "snapshot":
                header["bytes"] = t.copy.stat().st_size - len(line)
            op = "restore" if t.how == "snapshot" else "import"
            body = cast(BinaryIO, Prefixed(json.dumps(header).encode() + b"\n", data))
            self.source.helper(op, t.name, data=body, error=RestoreError)


def interrupted(source: NatsSource, key: str, opts: RestoreOptions) -> Journal | None:
    """The journal of an interrupted restore of this source onto this target, for
    ``--resume`` of the same backup; RestoreError without ``--resume`` (or for another
    backup), naming it."""
    journal = Journal.load(source)
    if journal is None:
        return None
    if not opts.resume:
        raise RestoreError(f"{source.label}: {interrupted_text(source, journal)}")
    if journal.data.get("backup") != key:
        raise RestoreError(
            f"{source.label}: --resume: the interrupted restore recorded in {journal.path} "
            f"was of another backup of the streams at {source.url} ({journal.describe()}); "
            "resume it with the snapshot it restored (--snapshot)"
        )
    return journal


def interrupted_text(source: NatsSource, journal: Journal) -> str:
    return (
        f"an interrupted restore of the streams at {source.url} is recorded in "
        f"{journal.path} ({journal.describe()}): run this restore again with --resume to "
        "complete it (if it fails, every stream it touched is put back as it was)"
    )


class _StopAfterFirst:
    """Tests only (``DRKIT_TEST_STOP_AT``): the process stops itself (SIGSTOP) once the
    metadata and the first data chunk went to the helper, mid-stream, for a kill -9."""

    def __init__(self, data: BinaryIO) -> None:
        self._data, self._reads = data, 0

    def read(self, n: int = -1) -> bytes:
        self._reads += 1
        if self._reads == 3:
            os.kill(os.getpid(), signal.SIGSTOP)
        return self._data.read(n)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
