"""The restore executor: one for incident restores and drills.

It takes an assembly (per source, the snapshot it comes from: with ``backup
--due`` schedules the newest database dump and the newest certificates are
often in different snapshots), a target runner, and runs one step per source
in dependency order: roles and databases -> env and files -> certificates ->
data services -> apps. Before anything is applied, every artifact to be used
is checked against its manifest's stored digest (one read), so a tampered or
truncated object stops the restore before it touches the target; artifacts
whose source applies nothing before verifying them itself (a PostgreSQL dump
loaded into a staging database: ``Source.staged_artifacts``) skip that second
read. While applying, age authenticates every chunk and the plain digest is
checked at the end. Progress is recorded per step so an interrupted restore
can ``resume``. Afterwards each source checks the target against the facts
recorded at backup time in its own snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from drkit.actions.artifact_read import object_label, read_artifact, read_facts
from drkit.actions.snapshot_select import Assembly
from drkit.errors import DrkitError, IntegrityError, RestoreError
from drkit.logs import Log, Meter, context, meter, quiet
from drkit.paths import state_dir
from drkit.pipeline import chunked
from drkit.pipeline.age import Identity
from drkit.pipeline.streams import HashingReader, TeeReader, drain
from drkit.policy.models import Policy, source_name
from drkit.remote.base import Runner
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord
from drkit.sources.base import Check, RestoreOptions, Source, StepPlan
from drkit.sources.confine import escaping_links, written_through
from drkit.sources.pm2 import Pm2Source
from drkit.sources.registry import build_source
from drkit.sources.tarball import TarSource

# roles/globals and databases -> env and files -> certificates -> data services -> apps
ORDER = {
    "postgres": 0,
    "env": 1,
    "files": 1,
    "caddy": 2,
    "certbot": 2,
    "nats": 3,
    "docker_volume": 3,
    "pm2": 4,
    "command": 5,
    "snapshot": 9,
}


@dataclass
class Step:
    number: int
    source: str
    kind: str
    plan: StepPlan
    snapshot: str  # the snapshot this source comes from
    taken: str  # when that snapshot was taken (its manifest's ``finished``)
    done: bool = False  # completed by an earlier, interrupted run (--resume)
    note: str | None = None  # e.g. "not in snapshot X: from an older one"

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "source": self.source,
            "kind": self.kind,
            "snapshot": self.snapshot,
            "taken": self.taken,
            "note": self.note,
            "actions": self.plan.actions,
            "blocked": self.plan.blocked,
            "already_done": self.done,
        }


@dataclass
class RestoreResult:
    host: str
    snapshot: str  # the newest snapshot used
    sources: dict[str, str] = field(default_factory=dict)  # source -> its snapshot
    steps: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # --keep-going: source -> error
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        statuses = {c.status for c in self.checks}
        if self.failed or "fail" in statuses:
            return "fail"
        return "warn" if "warn" in statuses else "pass"

    def outcomes(self, names: list[str]) -> dict[str, str]:
        """Each source of the restore: restored / failed / done earlier (resume)."""
        return {
            n: "failed" if n in self.failed else "done earlier" if n in self.skipped else "restored"
            for n in names
        }


def order_sources(records: list[SourceRecord]) -> list[SourceRecord]:
    """``records`` in dependency order (stable within a rank)."""
    return sorted(records, key=lambda s: ORDER.get(s.kind, 8))


def written_paths(facts: dict[str, Any]) -> list[str]:
    """Absolute paths of the files and symlinks a tar-based step writes, from its facts."""
    return [
        posixpath.normpath("/" + str(e["path"]).lstrip("/"))
        for e in facts.get("entries", [])
        if e.get("type") in ("file", "symlink", "hardlink") and e.get("path")
    ]


def precheck(
    repo: Repository,
    objects: list[tuple[Manifest, ArtifactRecord]],
    identities: list[Identity],
    m: Meter | None = None,
) -> None:
    """Hash every stored object in ``objects`` (each in its own snapshot); raise
    IntegrityError naming the first bad one. A chunked artifact is read whole
    (its chunks are only checked by decrypting them). ``m`` counts the bytes read."""
    count = m.counting if m is not None else None
    for manifest, record in objects:
        if chunked.is_chunked(record.format):
            consume = drain if count is None else (lambda s: drain(TeeReader(s, count)))
            read_artifact(repo, manifest, record, identities, consume)
            continue
        key = object_key(manifest.host, manifest.snapshot, record.key)
        with repo.store.get(key) as stored:
            h = HashingReader(stored)
            drain(h if count is None else TeeReader(h, count))  # type: ignore[arg-type]
        if h.size != record.stored_size or h.hexdigest() != record.stored_sha256:
            raise IntegrityError(
                f"{object_label(repo, manifest, record)}: stored digest does not match the "
                "manifest; nothing was restored"
            )


class Progress:
    """Completed steps of one restore onto one target, kept in the state dir.

    One file per (host, target), holding the (source, snapshot) pairs of the
    restore: ``--resume`` of a different assembly (a backup ran since, another
    ``--at`` or ``--only``) is refused, naming both, instead of skipping steps
    that restored other data. Raises RestoreError then.
    """

    def __init__(self, assembly: Assembly, target: str, resume: bool) -> None:
        host = assembly.host
        ident = hashlib.sha256(f"{host}|{target}".encode()).hexdigest()[:16]
        self.path = state_dir() / "restores" / f"{host}-{ident}.json"
        self.sources = {name: m.snapshot for name, (m, _r) in sorted(assembly.picks.items())}
        self.done: list[str] = []
        # --resume, but no interrupted restore was recorded: none ran (or it was killed
        # in its first step), or the last one completed. Every step runs; callers say so.
        self.nothing_to_resume = resume and not self.path.exists()
        if not (resume and self.path.exists()):
            return
        saved = json.loads(self.path.read_text())
        before: dict[str, str] = saved.get("sources", {})
        if before != self.sources:
            was = ", ".join(f"{n} from {sid}" for n, sid in before.items())
            now = ", ".join(f"{n} from {sid}" for n, sid in self.sources.items())
            newest = max(before.values(), default="?")
            raise RestoreError(
                f"host {host}: --resume: the interrupted restore onto {target} was of {was}; "
                f"this one would be of {now}. Resume it as of the same point (--snapshot "
                f"{newest}, and the same --only), or restore without --resume"
            )
        self.done = list(saved.get("done", []))

    def start(self) -> None:
        """Record the restore before its first step, so that one killed inside that step
        is resumable too (``--resume`` would otherwise say there is nothing to resume)."""
        self._save()

    def mark(self, source: str) -> None:
        self.done.append(source)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sources": self.sources, "done": self.done}))
        tmp.replace(self.path)

    def finish(self) -> None:
        """Every step is applied: forget the progress, so that a later ``--resume`` of the
        same snapshot and target is a new restore rather than a no-op."""
        self.done = []
        self.path.unlink(missing_ok=True)


class Executor:
    """Plans, applies and checks a restore of an assembly of snapshots onto one target.

    ``what`` is an Assembly (``select_sources``), or one Manifest meaning every
    source of that snapshot (or those in ``only``). Raises RestoreError when a
    source has no policy entry; CryptoError/IntegrityError when the identity does
    not fit or a snapshot's facts are damaged.
    """

    def __init__(
        self,
        policy: Policy,
        repo: Repository,
        what: Assembly | Manifest,
        identities: list[Identity],
        runner: Runner,
        opts: RestoreOptions,
        *,
        only: list[str] | None = None,
        target: str = "local",
        resume: bool = False,
    ) -> None:
        assembly = what if isinstance(what, Assembly) else Assembly.of(what, only)
        opts = replace(opts, resume=resume)  # sources that keep their own journal (nats)
        self.policy, self.repo, self.assembly = policy, repo, assembly
        self.identities, self.runner, self.opts = identities, runner, opts
        self.records = order_sources(
            [rec for name, (_m, rec) in assembly.picks.items() if not only or name in only]
        )
        configs = {source_name(c): c for c in policy.source}
        missing = [s.name for s in self.records if s.name not in configs]
        if missing:
            raise RestoreError(
                f"host {assembly.host}: source(s) {', '.join(missing)} are in the snapshot but "
                "not in the policy; restoring needs their policy entry"
            )
        self.sources: dict[str, Source] = {
            s.name: build_source(configs[s.name], runner) for s in self.records
        }
        # Each source's facts come from its own snapshot; reading them also proves the
        # identity fits every snapshot used.
        per_snapshot = {m.snapshot: read_facts(repo, m, identities) for m in assembly.manifests}
        self.facts: dict[str, Any] = {
            s.name: per_snapshot[assembly.snapshot_of(s.name)].get(s.name, {}) for s in self.records
        }
        self.progress = Progress(assembly, target, resume)

    def manifest_of(self, source: str) -> Manifest:
        return self.assembly.picks[source][0]

    def plan(self) -> list[Step]:
        """The ordered steps, each with what it would do; touches nothing."""
        steps = []
        incoming: dict[str, str] = {}  # path -> the earlier step that writes it
        planted: dict[str, str] = {}  # under --dest: symlinks earlier steps write, leading out
        planted_by: dict[str, str] = {}
        anchor = self.assembly.anchor
        for n, rec in enumerate(self.records, 1):
            done = rec.name in self.progress.done
            source, facts = self.sources[rec.name], self.facts.get(rec.name, {})
            if isinstance(source, Pm2Source):
                # Its plan tells app code that an earlier step brings back from code
                # that is in no step of this restore (the finding).
                source.incoming = dict(incoming)
            if done:
                plan = StepPlan(["already done (resume)"])
            else:
                plan = source.describe(facts, self.opts)
            manifest = self.manifest_of(rec.name)
            note = None
            if anchor and manifest.snapshot != anchor:
                note = f"not in snapshot {anchor}: from the newest older snapshot holding it"
            steps.append(
                Step(n, rec.name, rec.kind, plan, manifest.snapshot, manifest.finished, done, note)
            )
            dest = self.opts.dest or "/"
            if not done and dest == "/":
                incoming.update(dict.fromkeys(written_paths(facts), f"step {n} ({rec.name})"))
            elif not done:
                # Predicted from the facts (the archive filter decides at the step): refused
                # in the plan rather than after the earlier steps were applied.
                entries = facts.get("entries", [])
                path, up = written_through(entries, planted)
                if up and not plan.blocked:
                    steps[-1].plan = StepPlan(
                        plan.actions,
                        (
                            f"{path} would be written through {dest.rstrip('/')}{up}, a symlink "
                            f"that {planted_by[up]} writes, to {planted[up]}: outside --dest {dest}"
                        ),
                    )
                links = escaping_links(entries, dest)
                planted.update(links)
                planted_by.update(dict.fromkeys(links, f"step {n} ({rec.name})"))
        return steps

    def run(
        self, log: Log = quiet, *, check: bool = True, keep_going: bool = False
    ) -> RestoreResult:
        """See ``_run``; what it logs names the host."""
        with context(host=self.assembly.host):
            return self._run(log, check=check, keep_going=keep_going)

    def _run(self, log: Log, *, check: bool, keep_going: bool) -> RestoreResult:
        """Apply every step, reload services, check. A failing step stops the restore
        with an error that says what was restored, what failed and what did not run;
        with ``keep_going`` the other steps still run (each source is its own data) and
        the failure is in ``RestoreResult.failed`` (the verdict fails)."""
        t0 = time.monotonic()
        host = self.assembly.host
        todo = [r for r in self.records if r.name not in self.progress.done]
        objects: list[tuple[Manifest, ArtifactRecord]] = []
        staged: dict[str, frozenset[str]] = {}
        for rec in todo:
            facts = self.facts.get(rec.name, {})
            staged[rec.name] = self.sources[rec.name].staged_artifacts(facts, self.opts)
            for artifact in rec.artifacts:
                if artifact.name in staged[rec.name]:
                    log(
                        f"{host}: {rec.name}/{artifact.name}: verified while it loads into a "
                        "staging area, applied only after (no second read)"
                    )
                else:
                    objects.append((self.manifest_of(rec.name), artifact))
        try:
            total = sum(r.stored_size for _m, r in objects) or None
            with meter("restore", "check stored objects", total=total) as m:
                precheck(self.repo, objects, self.identities, m)
        except DrkitError as exc:  # the object is named; say whose, and that nothing changed
            said = (
                str(exc) if "nothing was restored" in str(exc) else f"{exc}; nothing was restored"
            )
            exc.reword(f"host {host}: {said}")
            raise
        sources = {r.name: self.manifest_of(r.name).snapshot for r in self.records}
        result = RestoreResult(host, self.assembly.newest.snapshot, sources)
        self.progress.start()
        try:
            self._apply_all(result, staged, log, keep_going)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (cli's Terminated)
            exc.add_note(
                f"host {host}: the step in progress was discarded, the target keeps what it "
                f"had; `drkit restore --resume` with the same --snapshot "
                f"{self.assembly.newest.snapshot} (and --only) finishes the restore"
            )
            raise
        if not result.failed:
            self.progress.finish()  # else --resume retries the failed steps only
        services = self.reload(log)
        failures = [Check(n, "restored", "fail", e) for n, e in result.failed.items()]
        if check:
            result.checks = failures + services + self.check(skip=set(result.failed))
        else:
            result.checks = failures
        result.seconds = time.monotonic() - t0
        return result

    def _apply_all(
        self, result: RestoreResult, staged: dict[str, frozenset[str]], log: Log, keep_going: bool
    ) -> None:
        host = self.assembly.host
        for number, rec in enumerate(self.records, 1):
            if rec.name in self.progress.done:
                result.skipped.append(rec.name)
                log(f"{host}: {rec.name}: already restored (resume), skipped")
                continue
            with context(source=rec.name):
                self._apply_step(result, staged, log, keep_going, number, rec)

    def _apply_step(
        self,
        result: RestoreResult,
        staged: dict[str, frozenset[str]],
        log: Log,
        keep_going: bool,
        number: int,
        rec: SourceRecord,
    ) -> None:
        """One step (``number``, as the plan numbers it), metered for progress."""
        host = self.assembly.host
        snapshot = self.manifest_of(rec.name).snapshot
        log(f"{host}: restoring {rec.name} ({rec.kind}) from snapshot {snapshot} ...")
        name = f"step {number}/{len(self.records)}: {rec.name} ({rec.kind})"
        total = sum(a.plain_size for a in rec.artifacts) or None
        try:
            with meter("restore", name, total=total) as m:
                report = self._apply(rec, staged[rec.name], m)
        except KeyboardInterrupt:
            self._discard(rec)
            raise
        except DrkitError as exc:
            if not keep_going:
                exc.reword(f"{exc}; {self._stopped_at(rec, result)}")
                raise
            result.failed[rec.name] = str(exc)
            log(f"error: {host}: {rec.name}: FAILED: {exc} (--keep-going: going on)")
            return
        for action in report.actions:
            result.steps.append(f"{rec.name}: {action}")
            log(f"{host}: {rec.name}: {action}")
        self.progress.mark(rec.name)

    def _discard(self, rec: SourceRecord) -> None:
        """After Ctrl-C or SIGTERM inside ``rec``'s step: remove a tar step's staging
        directories (old trees put back first), which its own cleanup misses when the stop
        lands while the staging is being prepared. Idempotent; a failure here is left to
        the next restore of the source, which recovers the same way."""
        source = self.sources[rec.name]
        if isinstance(source, TarSource):
            with contextlib.suppress(DrkitError, OSError):
                source.staging(self.opts).recover()

    def _apply(self, rec: SourceRecord, staged: frozenset[str], m: Meter) -> Any:
        try:
            return self.sources[rec.name].restore(
                self._feeder(rec, m), self.facts.get(rec.name, {}), self.opts
            )
        except IntegrityError as exc:
            if not staged:
                raise
            # The source verified while loading: say what it had (not) applied.
            raise IntegrityError(f"{exc}; {self._applied(rec, staged)}") from exc

    def _stopped_at(self, failed: SourceRecord, result: RestoreResult) -> str:
        """What a restore stopped by ``failed`` had done and had not: the sources
        restored (this run or before), and those not run, with how to get them."""
        names = [r.name for r in self.records]
        at = names.index(failed.name)
        restored = [n for n in names[:at] if n not in result.failed]
        rest = names[at + 1 :]
        text = f"step {at + 1} ({failed.name}) failed"
        text += f"; restored before it: {', '.join(restored)}" if restored else ""
        if rest:
            text += (
                f"; not run: {', '.join(rest)} (restore them with --only {','.join(rest)}, "
                "or rerun with --keep-going; --resume retries from this step)"
            )
        else:  # the last step: what failed is the next thing to do
            text += "; fix the cause above, then rerun the restore with --resume (retries it)"
        return text

    def _applied(self, rec: SourceRecord, staged: frozenset[str]) -> str:
        """What a restore that failed verifying a staged artifact of ``rec`` had applied."""
        before = [r.name for r in self.records if r.name in self.progress.done]
        others = sorted(a.name for a in rec.artifacts if a.name not in staged)
        if not before and not others:
            return "nothing was restored (it was loaded into a staging area, now discarded)"
        text = f"nothing of {', '.join(sorted(staged))} was applied (staging area discarded)"
        if others:
            text += f"; {rec.name}'s {', '.join(others)} had been applied"
        if before:
            text += f"; restored before it: {', '.join(before)}"
        return text

    def reload(self, log: Log) -> list[Check]:
        """Bring back the services of every source of this restore (also those restored
        by an earlier, interrupted run: their service was never reloaded)."""
        checks: list[Check] = []
        for rec in self.records:
            for c in self.sources[rec.name].reload(self.facts.get(rec.name, {}), self.opts):
                log(f"{self.assembly.host}: {rec.name}: {c.name}: {c.detail}")
                checks.append(c)
        return checks

    def check(self, skip: set[str] | None = None) -> list[Check]:
        """Each source's checks against its facts (not those of ``skip``: failed steps)."""
        checks: list[Check] = []
        for rec in self.records:
            if rec.name not in (skip or set()):
                checks += self.sources[rec.name].check(self.facts.get(rec.name, {}), self.opts)
        return checks

    def _feeder(
        self, rec: SourceRecord, m: Meter
    ) -> Callable[[str, Callable[[BinaryIO], object]], None]:
        """Each artifact's checked plain stream, its bytes counted into ``m`` on the way
        to the source (the one read of the restore)."""
        records: dict[str, ArtifactRecord] = {a.name: a for a in rec.artifacts}
        manifest, repo = self.manifest_of(rec.name), self.repo  # its own snapshot

        def feed(name: str, consume: Callable[[BinaryIO], object]) -> None:
            record = records.get(name)
            if record is None:
                raise RestoreError(f"host {manifest.host}: source {rec.name}: no artifact {name}")

            def counted(stream: BinaryIO) -> object:
                return consume(TeeReader(stream, m.counting))  # type: ignore[arg-type]

            read_artifact(repo, manifest, record, self.identities, counted)

        return feed


def format_plan(assembly: Assembly, target: str, steps: list[Step]) -> str:
    """The plan as text: a header saying which snapshot(s), then each step with its own."""
    used = assembly.manifests
    if len(used) == 1:
        head = f"snapshot {used[0].snapshot} (taken {used[0].finished})"
    else:
        head = (
            f"{len(used)} snapshots, each source from the newest complete snapshot holding "
            f"it as of {assembly.as_of}"
        )
    lines = [f"Restore plan: host {assembly.host}, {head}, onto {target}"]
    for s in steps:
        # One snapshot: the header names it. Several: each step names its own.
        origin = f" from snapshot {s.snapshot} (taken {s.taken})" if len(used) > 1 else ""
        lines.append(f" {s.number}. {s.source} ({s.kind}){origin}")
        if s.note:
            lines.append(f"    ({s.note})")
        lines += [f"    - {a}" for a in s.plan.actions]
        if s.plan.blocked:
            lines.append(f"    ! REFUSED: {s.plan.blocked}")
    return "\n".join(lines)
