"""``nats``: JetStream streams, KV buckets (``KV_<bucket>``), object stores (``OBJ_<bucket>``).

``mode = "snapshot"`` (default, no downtime): the JetStream snapshot API,
spoken by a stdlib-only helper (``jetstream.py``) that drkit runs with the
host's ``python3`` through the runner, because NATS listens on the host's
loopback and drkit reaches hosts only through runners. Artifacts:
``<stream>.snapshot`` per stream (the server's snapshot bytes, consumers
included) and ``streams.json`` (each stream's config and state from its
snapshot response: what a restore needs). Memory streams cannot be
snapshotted: named ones fail the backup, ``streams = "all"`` skips them and
lists them under ``skipped`` in the facts (a restore check warns about them).

``mode = "stop-copy"``: ``docker stop`` the NATS container, tar ``store_dir``,
``docker start`` it again (also when the tar fails). Stream counts are read
first, while the server still runs, so a restore can be checked.

Restore refuses streams (or a non-empty store dir) that already exist unless
forced; a forced restore deletes each existing stream first (a store dir is
moved aside, never deleted). Streams are restored origins first (mirrors and
sourcing streams after the streams they read), and each restored stream's
message count, sequences and consumers are checked against the backup's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, BinaryIO, cast

from drkit import secrets
from drkit.errors import DrkitError, RestoreError, SourceError, UsageError
from drkit.policy.models import NatsSource as NatsConfig
from drkit.remote.base import Process, exit_text
from drkit.sources import jetstream
from drkit.sources.base import Artifact, Check, Feed, RestoreOptions, RestoreReport, StepPlan
from drkit.sources.tarball import TarSource

INDEX = "streams.json"
STORE_TAR = "store.tar"
SNAPSHOT_CHUNK = 128 * 1024
# After a stop-copy restore the container needs a moment before NATS answers.
SERVER_WAIT = 30.0
_MAX_INDEX = 64 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
# The helper travels on stdin; argv holds only this bootstrap (short error messages).
_BOOT = "import sys;exec(compile(sys.stdin.buffer.read(int(sys.argv[1])),'drkit-jetstream','exec'))"
_HELPER = Path(jetstream.__file__).read_bytes()
_COMPARED = ("messages", "first_seq", "last_seq")


def auth_fields(value: str) -> dict[str, str]:
    """CONNECT fields for a resolved credential: ``USER:PASSWORD`` (as in a NATS URL's
    ``user:pass@``) or else a token. Raises UsageError for .creds / nkey material."""
    if "-----BEGIN" in value:
        raise UsageError(
            "NATS .creds (JWT + nkey) credentials are not supported by the drkit helper yet; "
            "use a token or USER:PASSWORD"
        )
    user, sep, password = value.partition(":")
    return {"user": user, "pass": password} if sep else {"auth_token": value}


def stream_kind(name: str) -> tuple[str, str | None]:
    """("kv" | "object_store" | "stream", bucket name or None) of a stream name."""
    if name.startswith("KV_"):
        return "kv", name[3:]
    if name.startswith("OBJ_"):
        return "object_store", name[4:]
    return "stream", None


def artifact_name(stream: str) -> str:
    """``<stream>.snapshot``; names outside [A-Za-z0-9_-] get a digest-based name."""
    if _SAFE_NAME.match(stream):
        return f"{stream}.snapshot"
    return f"stream-{hashlib.sha256(stream.encode()).hexdigest()[:16]}.snapshot"


def origins(entry: dict[str, Any]) -> list[str]:
    """Streams that ``entry`` mirrors or sources, from its config (index) or facts."""
    if "config" not in entry:
        return list(entry.get("origins", []))
    cfg = entry["config"] or {}
    names = [s.get("name") for s in (cfg.get("sources") or [])]
    if cfg.get("mirror"):
        names.append(cfg["mirror"].get("name"))
    return [n for n in names if n]


def restore_order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streams ordered so a mirror or sourcing stream comes after the streams it reads
    (when those are in the backup too); otherwise by name. Cycles keep name order."""
    by_name = {e["name"]: e for e in entries}
    deps = {n: {o for o in origins(e) if o in by_name and o != n} for n, e in by_name.items()}
    ordered: list[dict[str, Any]] = []
    done: set[str] = set()
    while len(done) < len(by_name):
        ready = sorted(n for n in by_name if n not in done and deps[n] <= done)
        for name in ready or sorted(n for n in by_name if n not in done):  # else a cycle
            ordered.append(by_name[name])
            done.add(name)
    return ordered


def stream_facts(entry: dict[str, Any], snapshot_bytes: int | None = None) -> dict[str, Any]:
    """What a drill can check about one stream, from its config and state."""
    cfg, state = entry.get("config") or {}, entry.get("state") or {}
    kind, bucket = stream_kind(entry["name"])
    out = {
        "name": entry["name"],
        "type": kind,
        "kv": kind == "kv",
        "object_store": kind == "object_store",
        "bucket": bucket,
        "storage": cfg.get("storage"),
        "subjects": cfg.get("subjects") or [],
        "origins": origins(entry),
        "messages": state.get("messages", 0),
        "bytes": state.get("bytes", 0),
        "first_seq": state.get("first_seq", 0),
        "last_seq": state.get("last_seq", 0),
        "num_subjects": state.get("num_subjects", 0),
        "num_deleted": state.get("num_deleted", 0),
        "consumers": state.get("consumer_count", 0),
    }
    if snapshot_bytes is not None:
        out["snapshot_bytes"] = snapshot_bytes
    return out


def state_diff(expected: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """How a live stream ``state`` differs from a stream's facts (empty: it matches).

    Consumers are not compared: ephemeral ones (watchers, ordered consumers) come
    and go, and a snapshot's durable consumers are restored with it."""
    return [
        f"{key} {state.get(key, 0)}, expected {expected.get(key, 0)}"
        for key in _COMPARED
        if state.get(key, 0) != expected.get(key, 0)
    ]


def summary(s: dict[str, Any]) -> str:
    return (
        f"{s['messages']} messages, seq {s['first_seq']}-{s['last_seq']}, "
        f"{s['consumers']} consumer(s)"
    )


class NatsSource(TarSource):
    kind = "nats"
    config: NatsConfig
    ARTIFACT = STORE_TAR

    def __init__(self, name: str, config: NatsConfig, runner: Any) -> None:
        super().__init__(name, config, runner)
        self._restart: str | None = None  # stop-copy: container to start again
        self._restarted = False  # stop-copy restore: the container runs on the restored store

    @property
    def url(self) -> str:
        url = self.config.url
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            # The URL is not a secret field: never print it, never use it.
            raise UsageError(
                f"{self.label}: credentials in url are refused; use credentials = env:NAME"
            )
        return url

    def _env(self) -> dict[str, str] | None:
        if not self.config.credentials:
            return None
        try:
            fields = auth_fields(secrets.resolve(self.config.credentials))
        except UsageError as exc:
            ref = self.config.credentials
            raise UsageError(f"{self.label}: credentials {ref}: {exc}") from None
        return {"DRKIT_NATS_AUTH": json.dumps(fields)}

    def _stopcopy(self, facts: dict[str, Any]) -> bool:
        return bool(facts.get("mode", self.config.mode) == "stop-copy")

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        if self.config.mode == "stop-copy":
            yield from self._store_artifacts()
        else:
            yield from self._snapshot_artifacts()

    def _snapshot_artifacts(self) -> Iterator[Artifact]:
        wanted = self.config.streams
        info = self.helper_json("info", *(["--all"] if wanted == "all" else wanted))
        if info["missing"]:
            raise SourceError(
                f"{self.label}: stream(s) {', '.join(info['missing'])} not found at {self.url}"
            )
        chosen, skipped = [], []
        for s in info["streams"]:
            name = s["config"]["name"]
            if s["config"].get("storage") != "memory":
                chosen.append(name)
            elif wanted == "all":
                skipped.append({"name": name, "reason": "memory storage cannot be snapshotted"})
            else:
                raise SourceError(
                    f"{self.label}: stream {name} at {self.url} uses memory storage, which "
                    "JetStream cannot snapshot; remove it from streams"
                )
        self.facts.update(mode="snapshot", url=self.url, server=info.get("server", {}))
        self.facts.update(streams=[], skipped=skipped)
        index: list[dict[str, Any]] = []
        for name in sorted(chosen):
            stream = HelperStream(self, "snapshot", name, str(SNAPSHOT_CHUNK))
            artifact = artifact_name(name)
            counter = _Counter()
            yield Artifact(artifact, lambda s=stream: s, counter.add)  # type: ignore[misc]
            entry = {"name": name, "artifact": artifact, **stream.header}
            index.append(entry)
            self.facts["streams"].append(stream_facts(entry, counter.size))
        body = json.dumps({"format": "drkit-nats-index", "version": 1, "streams": index})
        yield Artifact(INDEX, lambda: io.BytesIO(body.encode()))

    def _store_artifacts(self) -> Iterator[Artifact]:
        c = self.config
        if not c.container or not c.store_dir:
            raise UsageError(
                f"{self.label}: mode stop-copy needs container (the Docker container running "
                "nats-server) and store_dir (its JetStream store directory on the host)"
            )
        self.facts.update(mode="stop-copy", url=self.url, store_dir=c.store_dir)
        self.facts["container"] = c.container
        if self.container_running(c.container):
            try:  # counts for the restore check; the copy itself does not need them
                live = self.helper_json("info", "--all")["streams"]
                self.facts["live_streams"] = [
                    stream_facts({"name": s["config"]["name"], **s})
                    for s in live
                    if s["config"].get("storage") != "memory"
                ]
            except DrkitError as exc:
                self.facts["live_streams_error"] = str(exc)
            self.stop_container(c.container)
        try:
            yield self.tar_artifact([c.store_dir], [])
        finally:
            self.finish()
        self.facts.update(self.listing_facts())
        self.facts["streams"] = store_streams(self.facts["entries"])

    def container_running(self, container: str, *, missing_ok: bool = False) -> bool:
        """Whether ``container`` runs; ``missing_ok``: a container that does not exist
        (a fresh host) counts as not running instead of failing."""
        argv = ["docker", "inspect", "-f", "{{.State.Running}}", container]
        try:
            res = self.runner.run(argv, user=self.run_as)
        except OSError as exc:  # no docker client at all (local runner)
            raise SourceError(f"{self.label}: inspecting container {container}: {exc}") from None
        if res.returncode != 0:
            if missing_ok and "no such" in res.stderr.lower():
                return False
            raise SourceError(
                f"{self.label}: inspecting container {container}: `{' '.join(argv)}` "
                f"{exit_text(res.returncode)}: {res.stderr.strip()}"
            )
        return res.stdout.strip() == b"true"

    def stop_container(self, container: str) -> None:
        """``docker stop``; ``finish`` starts it again."""
        self._restart = container
        self.runner.check(
            ["docker", "stop", container],
            what=f"{self.label}: stopping container {container}",
            user=self.run_as,
        )

    def finish(self) -> None:
        container, self._restart = self._restart, None
        if container:
            self.runner.check(
                ["docker", "start", container],
                what=f"{self.label}: starting container {container} again",
                user=self.run_as,
            )

    # ---- restore plan, restore, check ---------------------------------
    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        if self._stopcopy(facts):
            return self._describe_store(facts, opts)
        streams = restore_order(facts.get("streams", []))
        if not streams:
            return StepPlan(["the snapshot holds no streams"])
        existing = self._existing([s["name"] for s in streams], RestoreError)
        actions = []
        for s in streams:
            verb = "DELETE and replace (--force)" if s["name"] in existing else "create"
            actions.append(f"stream {s['name']} at {self.url}: {verb}, {summary(s)}")
        if existing and not opts.force:
            return StepPlan(
                actions,
                f"stream(s) {', '.join(sorted(existing))} already exist at {self.url}; "
                "use --force to delete and replace them",
            )
        return StepPlan(actions)

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        if self._stopcopy(facts):
            return self._restore_store(feed, facts, opts)
        holder: list[dict[str, Any]] = []
        feed(INDEX, lambda s: holder.append(_read_index(s, self.label)))
        entries = restore_order(holder[0]["streams"])
        existing = self._existing([e["name"] for e in entries], RestoreError)
        if existing and not opts.force:
            raise RestoreError(
                f"{self.label}: stream(s) {', '.join(sorted(existing))} already exist at "
                f"{self.url}; use --force to delete and replace them"
            )
        report = RestoreReport()
        for entry in entries:
            name = entry["name"]
            if name in existing:
                self.helper_json("delete", name, error=RestoreError)
            header = json.dumps({"config": entry["config"], "state": entry["state"]}).encode()
            result: list[dict[str, Any]] = []

            def consume(
                stream: BinaryIO,
                name: str = name,
                header: bytes = header,
                result: list[dict[str, Any]] = result,
            ) -> None:
                data = cast(BinaryIO, _Prefixed(header + b"\n", stream))
                out = self.helper("restore", name, data=data, error=RestoreError)
                result.append(json.loads(out))

            feed(entry["artifact"], consume)
            got = stream_facts({"name": name, **result[0]})
            wrong = state_diff(stream_facts(entry), got)
            if wrong:
                raise RestoreError(f"{self.label}: stream {name} restored with {'; '.join(wrong)}")
            verb = "replaced" if name in existing else "restored"
            report.actions.append(f"{verb} stream {name}: {summary(got)}")
        if not entries:
            report.actions.append("the snapshot holds no streams")
        return report

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Each stream's message count and first/last sequence as at backup time."""
        if not self._stopcopy(facts):
            checks = self._check_live(facts.get("streams", []), 0.0)
            for s in facts.get("skipped", []):
                detail = f"not in the backup: {s['reason']}"
                checks.append(Check(self.name, f"stream {s['name']}", "warn", detail))
            return checks
        if opts.dest is not None or not self._restarted:
            return super().check(facts, opts)  # no server touched the files: compare them
        if "live_streams" not in facts:
            why = facts.get("live_streams_error", "the container was not running")
            return [Check(self.name, "stream counts", "warn", f"not recorded at backup: {why}")]
        return self._check_live(facts["live_streams"], SERVER_WAIT)

    def _check_live(self, expected: list[dict[str, Any]], wait: float) -> list[Check]:
        names = [s["name"] for s in expected]
        deadline = time.monotonic() + wait
        while True:
            try:
                info = self.helper_json("info", *names) if names else {"streams": []}
                break
            except DrkitError as exc:
                if time.monotonic() >= deadline:
                    return [Check(self.name, "streams", "fail", str(exc))]
                time.sleep(1)
        live = {
            s["config"]["name"]: stream_facts({"name": s["config"]["name"], **s})
            for s in info["streams"]
        }
        checks = []
        for s in expected:
            got = live.get(s["name"])
            wrong = ["missing"] if got is None else state_diff(s, got)
            status, detail = ("fail", "; ".join(wrong)) if wrong else ("pass", summary(got or s))
            checks.append(Check(self.name, f"stream {s['name']}", status, detail))
        return checks

    def _existing(self, names: list[str], error: type[DrkitError] = SourceError) -> set[str]:
        if not names:
            return set()
        found = self.helper_json("info", *names, error=error)["streams"]
        return {s["config"]["name"] for s in found}

    # ---- stop-copy restore ---------------------------------------------
    def _store_target(self, facts: dict[str, Any], opts: RestoreOptions) -> str:
        """Where the store dir goes: its backup-time path, under ``--dest`` if given."""
        store_dir = facts.get("store_dir") or self.config.store_dir
        if not store_dir:
            raise RestoreError(f"{self.label}: the snapshot does not name its store_dir")
        return (opts.dest or "").rstrip("/") + "/" + store_dir.strip("/")

    def _store_in_use(self, target: str) -> bool:
        listing = self.runner.check(
            ["sh", "-c", '[ ! -d "$1" ] || ls -A -- "$1"', "sh", target],
            what=f"{self.label}: checking {target}",
            user=self.run_as,
        )
        return bool(listing.strip())

    def _describe_store(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        target = self._store_target(facts, opts)
        container = facts.get("container") or self.config.container
        actions = []
        if opts.dest is None and container:
            actions.append(f"stop container {container} if it runs (start it again after)")
        if self._store_in_use(target):
            if not opts.force:
                return StepPlan(
                    actions,
                    f"store dir {target} is not empty; use --force to move it aside and "
                    "restore the backup, or --dest to restore elsewhere",
                )
            actions.append(f"move the existing store dir {target} aside (--force)")
        actions.append(f"write {facts.get('files', 0)} file(s) of the store dir under {target}")
        return StepPlan(actions)

    def _restore_store(
        self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions
    ) -> RestoreReport:
        target = self._store_target(facts, opts)
        container = facts.get("container") or self.config.container
        report = RestoreReport()
        in_place = opts.dest is None and bool(container)
        if container and in_place and self.container_running(container, missing_ok=True):
            self.stop_container(container)  # never write under a live server
        restart = self._restart
        try:
            if self._store_in_use(target):
                if not opts.force:
                    raise RestoreError(
                        f"{self.label}: store dir {target} is not empty; use --force to move it "
                        "aside and restore the backup, or --dest to restore elsewhere"
                    )
                aside = f"{target}.drkit-replaced-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
                what = f"{self.label}: moving {target} aside"
                self.runner.check(["mv", "--", target, aside], what=what, user=self.run_as)
                report.actions.append(f"moved the existing store dir to {aside}")
            inner = RestoreOptions(dest=opts.dest, force=True, log=opts.log)
            report.actions += super().restore(feed, facts, inner).actions
        finally:
            self.finish()
        if restart:
            self._restarted = True
            report.actions.append(f"started container {restart} again on the restored store")
        elif in_place:
            report.actions.append(f"container {container} was not running: start it to serve")
        return report

    # ---- helper calls -------------------------------------------------
    def helper_argv(self, op: str, *args: str) -> list[str]:
        return ["python3", "-c", _BOOT, str(len(_HELPER)), op, self.url, *args]

    def start_helper(self, op: str, *args: str) -> Process:
        """Start the helper with its source on stdin (left open for the caller)."""
        try:
            proc = self.runner.start(
                self.helper_argv(op, *args), stdin=True, env=self._env(), user=self.run_as
            )
        except OSError as exc:
            raise SourceError(f"{self.label}: cannot run python3 on the host: {exc}") from None
        assert proc.stdin is not None
        with suppress(BrokenPipeError):  # it exited at once: its status says why
            proc.stdin.write(_HELPER)
        return proc

    def helper_error(
        self, op: str, args: tuple[str, ...], proc: Process, rc: int, cls: type[DrkitError]
    ) -> DrkitError:
        what = f"jetstream {op}" + (f" of {args[0]}" if args and op != "info" else "")
        if rc == 127:
            return cls(
                f"{self.label}: {what} needs python3 on the host (the nats source runs a "
                "stdlib-only helper there)"
            )
        detail = proc.stderr_tail().strip() or exit_text(rc)
        return cls(f"{self.label}: {what} failed: {detail}")

    def helper(
        self,
        op: str,
        *args: str,
        data: BinaryIO | None = None,
        error: type[DrkitError] = SourceError,
    ) -> bytes:
        """Run one helper operation to its end; returns its stdout (small outputs)."""
        from drkit.pipeline.streams import CHUNK

        proc = self.start_helper(op, *args)
        assert proc.stdin is not None
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        timer = _kill_after(self.timeout_seconds, proc)
        try:
            try:
                if data is not None:
                    while chunk := data.read(CHUNK):
                        proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it exited early: its status and stderr say why
            rc = proc.wait()
            reader.join()
        except BaseException:  # e.g. the artifact failed its integrity check
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        if timer and timer.fired:
            raise error(f"{self.label}: jetstream {op} timed out after {self.config.timeout}")
        if rc != 0:
            raise self.helper_error(op, args, proc, rc, error)
        return b"".join(out)

    def helper_json(
        self, op: str, *args: str, error: type[DrkitError] = SourceError
    ) -> dict[str, Any]:
        raw = self.helper(op, *args, error=error)
        try:
            out: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise error(f"{self.label}: jetstream {op} printed no JSON") from None
        return out


class HelperStream(AbstractContextManager[BinaryIO]):
    """The helper's ``snapshot`` output as a reader: ``header`` holds its first JSON line,
    reads return the snapshot bytes after it, and EOF raises SourceError if the helper
    failed (the artifact then fails, nothing is committed)."""

    def __init__(self, source: NatsSource, op: str, *args: str) -> None:
        self._source, self._op, self._args = source, op, args
        self._proc: Process | None = None
        self._buf = b""
        self._done = False
        self._timer: _Timer | None = None
        self.header: dict[str, Any] = {}

    def __enter__(self) -> BinaryIO:
        proc = self._proc = self._source.start_helper(self._op, *self._args)
        assert proc.stdin is not None
        with suppress(BrokenPipeError):
            proc.stdin.close()
        self._timer = _kill_after(self._source.timeout_seconds, proc)
        try:
            self._read_header(proc)
        except BaseException:
            self.__exit__()
            raise
        return self  # type: ignore[return-value]

    def _read_header(self, proc: Process) -> None:
        label = f"{self._source.label}: jetstream {self._op} of {self._args[0]}"
        while b"\n" not in self._buf:
            chunk = proc.stdout.read(65536)
            if not chunk:
                self._finish()  # raises if the helper failed
                raise SourceError(f"{label} ended without its metadata line")
            self._buf += chunk
            if len(self._buf) > _MAX_INDEX:
                raise SourceError(f"{label}: metadata line too long")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            self.header = json.loads(line)
        except ValueError:
            raise SourceError(f"{label}: metadata line is not JSON") from None

    def read(self, n: int = -1) -> bytes:
        assert self._proc is not None
        if n == 0:
            return b""
        if self._buf:
            data, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
            return data
        if self._done:
            return b""
        data = self._proc.stdout.read(n) if n > 0 else self._proc.stdout.read()
        if not data or n < 0:
            self._finish()
        return data

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        assert self._proc is not None
        self._done = True
        rc = self._proc.wait()
        if self._timer:
            self._timer.cancel()
            if self._timer.fired:
                raise SourceError(
                    f"{self._source.label}: jetstream {self._op} of {self._args[0]} timed out "
                    f"after {self._source.config.timeout} and was stopped"
                )
        if rc != 0:
            raise self._source.helper_error(self._op, self._args, self._proc, rc, SourceError)

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._timer:
            self._timer.cancel()
        if not self._done:
            proc.kill()
            proc.wait()
        proc.stdout.close()


class _Timer:
    def __init__(self, seconds: float, proc: Process) -> None:
        self.fired = False
        self._proc = proc
        self._t = threading.Timer(seconds, self._fire)
        self._t.daemon = True
        self._t.start()

    def _fire(self) -> None:
        self.fired = True
        self._proc.kill()

    def cancel(self) -> None:
        self._t.cancel()


def _kill_after(seconds: float | None, proc: Process) -> _Timer | None:
    return _Timer(seconds, proc) if seconds else None


class _Counter:
    """Counts an artifact's plain bytes (the ``observe`` hook)."""

    def __init__(self) -> None:
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)


class _Prefixed:
    """``prefix`` then everything ``stream`` holds."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix, self._stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return self._stream.read(n)


def _read_index(stream: BinaryIO, label: str) -> dict[str, Any]:
    """The index artifact's JSON (read to its end: one read may return part of it)."""
    raw = b""
    while len(raw) <= _MAX_INDEX and (chunk := stream.read(1 << 20)):
        raw += chunk
    if len(raw) > _MAX_INDEX:
        raise RestoreError(f"{label}: {INDEX} is larger than 64 MiB; refusing")
    try:
        index: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise RestoreError(f"{label}: {INDEX} is not JSON") from None
    if index.get("format") != "drkit-nats-index" or index.get("version") != 1:
        raise RestoreError(f"{label}: {INDEX} has an unknown format")
    return index


_STORE_PATH = re.compile(r"/jetstream/([^/]+)/streams/([^/]+)/")


def store_streams(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streams found in a store dir's tar listing: account, name, files and bytes."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        m = _STORE_PATH.search(e["path"])
        if not m:
            continue
        item = found.setdefault(
            (m.group(1), m.group(2)),
            {"account": m.group(1), "name": m.group(2), "files": 0, "bytes": 0},
        )
        if e.get("type") == "file":
            item["files"] += 1
            item["bytes"] += e.get("size", 0)
    for item in found.values():
        kind, bucket = stream_kind(item["name"])
        item.update(type=kind, bucket=bucket)
    return sorted(found.values(), key=lambda i: (i["account"], i["name"]))
