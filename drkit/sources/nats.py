"""``nats``: JetStream streams, KV buckets (``KV_<bucket>``), object stores (``OBJ_<bucket>``).

``mode = "snapshot"`` (default, no downtime): the JetStream snapshot API,
spoken by a stdlib-only helper (``jetstream.py``) that drkit runs with the
host's ``python3`` through the runner, because NATS listens on the host's
loopback and drkit reaches hosts only through runners. Artifacts:
``<stream>.snapshot`` per stream (the server's snapshot bytes, consumers
included) and ``streams.json`` (each stream's config and state from its
snapshot response: what a restore needs). The recorded state is the one at
the snapshot's start, a lower bound (``nats_streams.GUARANTEE``). Memory
streams cannot be snapshotted: named ones fail the backup unless
``memory_streams = "export"`` (an ordered consumer copies their messages,
republished on restore); otherwise ``streams = "all"`` skips them, reported
in the facts, the backup summary and the plan.

``mode = "stop-copy"``: ``docker stop`` the NATS container, tar ``store_dir``,
``docker start`` it again (also when the tar fails). Stream counts are read
first, while the server still runs, so a restore can be checked.

Snapshot restores are all or nothing (``nats_restore``): every artifact is
checked first, existing streams (``--force-db``) are copied before they are
replaced, and a failure puts back every stream the step touched. A journal
(``nats_journal``) makes a restore killed mid-step resumable: until ``--resume``
completes or rolls it back, other restores of those streams are refused. A store
dir is moved aside, never deleted. Streams are restored origins first, and each
restored stream must hold at least the recorded state.

Parts with a seam of their own are the ``nats_*`` modules and ``jetstream`` (the
script run on the host); this module (~520 lines) is the source class, whose two
modes (snapshot API, store copy) share the plan, the checks and the helper runs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

from drkit import secrets
from drkit.errors import DrkitError, RestoreError, SourceError, UsageError
from drkit.policy.models import NatsConfig
from drkit.remote.base import Process, exit_text
from drkit.sources import jetstream
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    StepPlan,
    differs_from_policy,
)
from drkit.sources.nats_check import ExportRecords
from drkit.sources.nats_helper import Counter, HelperStream, kill_after
from drkit.sources.nats_journal import Journal, backup_key
from drkit.sources.nats_restore import SNAPSHOT_CHUNK, StreamsRestore, interrupted_text
from drkit.sources.nats_streams import (
    GUARANTEE,
    INDEX,
    artifact_name,
    auth_fields,
    export_compare,
    memory_warnings,
    overlaps,
    restore_order,
    state_compare,
    store_streams,
    stream_facts,
    summary,
)
from drkit.sources.tarball import TarSource

STORE_TAR = "store.tar"
# After a stop-copy restore the container needs a moment before NATS answers.
SERVER_WAIT = 30.0
# The helper travels on stdin; argv holds only this bootstrap (short error messages).
_BOOT = "import sys;exec(compile(sys.stdin.buffer.read(int(sys.argv[1])),'drkit-jetstream','exec'))"
_HELPER = Path(jetstream.__file__).read_bytes()


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

    def policy_paths(self) -> list[str]:
        if not self.config.store_dir:
            raise RestoreError(f"{self.label}: the policy names no store_dir to restore into")
        return [posixpath.normpath(self.config.store_dir)]

    def _stopcopy(self, facts: dict[str, Any]) -> bool:
        return self.config.mode == "stop-copy"

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        if self.config.mode == "stop-copy":
            yield from self._store_artifacts()
        else:
            yield from self._snapshot_artifacts()

    def _snapshot_artifacts(self) -> Iterator[Artifact]:
        wanted = self.config.streams
        export = self.config.memory_streams == "export"
        info = self.helper_json("info", *(["--all"] if wanted == "all" else wanted))
        if info["missing"]:
            raise SourceError(
                f"{self.label}: stream(s) {', '.join(info['missing'])} not found at {self.url}"
            )
        chosen, skipped, memory = [], [], []
        for s in info["streams"]:
            name = s["config"]["name"]
            if s["config"].get("storage") != "memory":
                chosen.append((name, "snapshot"))
                continue
            state = s.get("state") or {}
            memory.append({"name": name, "messages": state.get("messages", 0), "exported": export})
            if export:
                chosen.append((name, "export"))
            elif wanted == "all":
                skipped.append({"name": name, "reason": "memory storage cannot be snapshotted"})
            else:
                raise SourceError(
                    f"{self.label}: stream {name} at {self.url} uses memory storage, which "
                    "JetStream cannot snapshot; remove it from streams, or set "
                    'memory_streams = "export"'
                )
        self.facts.update(mode="snapshot", url=self.url, server=info.get("server", {}))
        self.facts.update(streams=[], skipped=skipped, guarantee=GUARANTEE)
        self.facts.update(memory_streams=memory, warnings=memory_warnings(memory, self.url))
        index: list[dict[str, Any]] = []
        for name, how in sorted(chosen):
            if how == "snapshot":
                stream = HelperStream(self, "snapshot", name, str(SNAPSHOT_CHUNK))
                walker: Any = Counter()
            else:
                stream, walker = HelperStream(self, "export", name), ExportRecords()
            artifact = artifact_name(name, how)
            yield Artifact(artifact, lambda s=stream: s, walker.feed)  # type: ignore[misc]
            entry = {"name": name, "artifact": artifact, **stream.header}
            if how == "export":
                entry.update(how="export", exported=walker.messages)
            index.append(entry)
            self.facts["streams"].append(stream_facts(entry, walker.size))
        version = 2 if any(e.get("how") == "export" for e in index) else 1
        body = json.dumps({"format": "drkit-nats-index", "version": version, "streams": index})
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
        except (OSError, SourceError) as exc:  # e.g. no docker client at all
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
        mismatch = self._mode_mismatch(facts)
        if mismatch:
            return StepPlan([f"restore a {facts['mode']} backup"], mismatch)
        if self._stopcopy(facts):
            return self._describe_store(facts, opts)
        streams = restore_order(facts.get("streams", []))
        notes = [
            f"memory stream {s['name']}: NOT in the backup ({s['reason']})"
            for s in facts.get("skipped", [])
        ]
        if not streams:
            return StepPlan(["the snapshot holds no streams", *notes])
        journal = Journal.load(self)
        if journal is not None and not opts.resume:
            return StepPlan(notes, interrupted_text(self, journal))
        actions = []
        if journal is not None:
            if journal.data.get("backup") != backup_key(streams):
                return StepPlan(
                    notes,
                    f"--resume: the interrupted restore recorded in "
                    f"{journal.path} was of another backup; resume it with the "
                    "snapshot it restored (--snapshot)",
                )
            actions.append(
                f"resume the interrupted restore recorded in {journal.path} ({journal.describe()})"
            )
        on_target = self.helper_json("info", "--all", error=RestoreError)["streams"]
        names = {s["name"] for s in streams}
        existing = {t["config"]["name"] for t in on_target} & names
        foreign = {n for n in existing if not (journal and journal.owns(n))}
        for s in streams:
            verb = "DELETE and replace (--force-db)" if s["name"] in existing else "create"
            status = journal.status(s["name"]) if journal else "pending"
            if status == "restored" and s["name"] in existing:
                actions.append(
                    f"stream {s['name']} at {self.url}: keep (restored by the interrupted restore)"
                )
                continue
            if status != "pending":
                verb = "finish replacing (interrupted restore)"
            elif s["name"] in existing and s["name"] not in foreign:
                verb = "DELETE and replace (as the interrupted restore was told)"
            if s.get("how") == "export":
                verb += (
                    f" from memory, republishing {s['exported']} exported message(s) "
                    "(new sequence numbers, no consumers)"
                )
                actions.append(f"stream {s['name']} at {self.url}: {verb}")
                continue
            actions.append(f"stream {s['name']} at {self.url}: {verb}, {summary(s)}")
        if existing:
            actions.append(
                "existing streams are copied first; if any stream fails, every stream this "
                "step touched is put back as it was"
            )
        actions += notes
        actions += [
            f"WILL FAIL: {o}: the server refuses it at load time (the step then puts back "
            "every stream it touched); delete or change that stream first"
            for o in overlaps(streams, on_target)
        ]
        if foreign and not opts.force_db:
            return StepPlan(
                actions,
                f"stream(s) {', '.join(sorted(foreign))} already exist at {self.url}; "
                "use --force-db to delete and replace them",
            )
        return StepPlan(actions)

    def _mode_mismatch(self, facts: dict[str, Any]) -> str | None:
        """The policy decides the format: a snapshot of another mode is refused."""
        if facts.get("mode", self.config.mode) == self.config.mode:
            return None
        return (
            f"the snapshot was taken in mode {facts['mode']}, the policy says "
            f"{self.config.mode}: restore with a policy of that mode"
        )

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        mismatch = self._mode_mismatch(facts)
        if mismatch:
            raise RestoreError(f"{self.label}: {mismatch}")
        if self._stopcopy(facts):
            return self._restore_store(feed, facts, opts)
        return StreamsRestore(self, feed, opts).run()

    def staged_artifacts(self, facts: dict[str, Any], opts: RestoreOptions) -> frozenset[str]:
        """Snapshot mode: the restore reads and checks every artifact (digests, framing)
        before it replaces the first stream (``nats_restore``)."""
        if self._stopcopy(facts) or self._mode_mismatch(facts):
            return frozenset()
        names = {s.get("artifact") or artifact_name(s["name"]) for s in facts.get("streams", [])}
        return frozenset({INDEX, *names})

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
            compare = export_compare if s.get("how") == "export" else state_compare
            wrong, extra = (["missing"], "") if got is None else compare(s, got)
            if wrong:
                checks.append(Check(self.name, f"stream {s['name']}", "fail", "; ".join(wrong)))
                continue
            detail = summary(got or s) + (f" ({extra})" if extra else "")
            checks.append(Check(self.name, f"stream {s['name']}", "pass", detail))
        return checks

    def _existing(self, names: list[str], error: type[DrkitError] = SourceError) -> set[str]:
        if not names:
            return set()
        found = self.helper_json("info", *names, error=error)["streams"]
        return {s["config"]["name"] for s in found}

    # ---- stop-copy restore ---------------------------------------------
    def _store_target(self, facts: dict[str, Any], opts: RestoreOptions) -> str:
        """Where the store dir goes: its backup-time path, under ``--dest`` if given."""
        store_dir = self.policy_paths()[0]
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
        container = self.config.container
        want = {"store_dir": self.policy_paths()[0], "container": container}
        actions = differs_from_policy(facts, want)
        if opts.dest is None and container:
            actions.append(f"stop container {container} if it runs (start it again after)")
        if self._store_in_use(target):
            if not opts.force_db:
                return StepPlan(
                    actions,
                    f"store dir {target} is not empty; use --force-db to move it aside and "
                    "restore the backup, or --dest to restore elsewhere",
                )
            actions.append(f"move the existing store dir {target} aside (--force-db)")
        actions.append(f"write {facts.get('files', 0)} file(s) of the store dir under {target}")
        return StepPlan(actions)

    def _restore_store(
        self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions
    ) -> RestoreReport:
        target = self._store_target(facts, opts)
        container = self.config.container
        report = RestoreReport()
        in_place = opts.dest is None and bool(container)
        if container and in_place and self.container_running(container, missing_ok=True):
            self.stop_container(container)  # never write under a live server
        restart = self._restart
        try:
            if self._store_in_use(target):
                if not opts.force_db:
                    raise RestoreError(
                        f"{self.label}: store dir {target} is not empty; use --force-db to move it "
                        "aside and restore the backup, or --dest to restore elsewhere"
                    )
                aside = f"{target}.drkit-replaced-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
                what = f"{self.label}: moving {target} aside"
                self.runner.check(["mv", "--", target, aside], what=what, user=self.run_as)
                report.actions.append(f"moved the existing store dir to {aside}")
            inner = RestoreOptions(dest=opts.dest, force_files=True, log=opts.log)
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
        timer = kill_after(self.timeout_seconds, proc)
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
