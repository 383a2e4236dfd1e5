"""The restore executor: one for incident restores and (later) drills.

It takes a snapshot, a target runner and a set of sources and runs one step
per source in dependency order: roles and databases -> env and files ->
certificates -> data services -> apps. Before anything is applied, every
artifact to be used is checked against the manifest's stored digest (one
cheap read), so a tampered or truncated object stops the restore before it
touches the target; while applying, age authenticates every chunk and the
plain digest is checked at the end. Progress is recorded per step so an
interrupted restore can ``resume``. Afterwards each source checks the target
against the facts recorded at backup time.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from drkit.actions.common import digests_of, object_label, read_facts
from drkit.errors import IntegrityError, RestoreError
from drkit.paths import state_dir
from drkit.pipeline.age import Identity
from drkit.pipeline.codec import decode
from drkit.pipeline.streams import CHUNK, HashingReader
from drkit.policy.models import Policy, source_name
from drkit.remote.base import Runner
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord
from drkit.sources.base import Check, RestoreOptions, Source, StepPlan
from drkit.sources.pm2 import Pm2Source
from drkit.sources.registry import build_source

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

Log = Callable[[str], None]


@dataclass
class Step:
    number: int
    source: str
    kind: str
    plan: StepPlan
    done: bool = False  # completed by an earlier, interrupted run (--resume)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.number, "source": self.source, "kind": self.kind,
                "actions": self.plan.actions, "blocked": self.plan.blocked,
                "already_done": self.done}  # fmt: skip


@dataclass
class RestoreResult:
    host: str
    snapshot: str
    steps: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        statuses = {c.status for c in self.checks}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


def order_sources(manifest: Manifest, only: list[str] | None) -> list[SourceRecord]:
    """The sources to restore, in dependency order. Unknown names in ``only`` are an error."""
    names = {s.name for s in manifest.sources}
    if only:
        unknown = sorted(set(only) - names)
        if unknown:
            raise RestoreError(
                f"host {manifest.host}: snapshot {manifest.snapshot} has no source "
                f"{', '.join(unknown)} (it has: {', '.join(sorted(names))})"
            )
    chosen = [s for s in manifest.sources if not only or s.name in only]
    return sorted(chosen, key=lambda s: ORDER.get(s.kind, 8))


def written_paths(facts: dict[str, Any]) -> list[str]:
    """Absolute paths of the files and symlinks a tar-based step writes, from its facts."""
    return [
        posixpath.normpath("/" + str(e["path"]).lstrip("/"))
        for e in facts.get("entries", [])
        if e.get("type") in ("file", "symlink", "hardlink") and e.get("path")
    ]


def precheck(repo: Repository, manifest: Manifest, sources: list[SourceRecord]) -> None:
    """Hash every stored object to be used; raise IntegrityError naming the first bad one."""
    for src in sources:
        for record in src.artifacts:
            key = object_key(manifest.host, manifest.snapshot, record.key)
            with repo.store.get(key) as stored:
                h = HashingReader(stored)
                while h.read(CHUNK):
                    pass
            if h.size != record.stored_size or h.hexdigest() != record.stored_sha256:
                raise IntegrityError(
                    f"{object_label(repo, manifest, record)}: stored digest does not match the "
                    "manifest; nothing was restored"
                )


class Progress:
    """Completed steps of one restore (host, snapshot, target), kept in the state dir."""

    def __init__(self, manifest: Manifest, target: str, resume: bool) -> None:
        ident = hashlib.sha256(f"{manifest.host}|{manifest.snapshot}|{target}".encode())
        self.path = state_dir() / "restores" / f"{manifest.host}-{ident.hexdigest()[:16]}.json"
        self.done: list[str] = []
        if resume and self.path.exists():
            self.done = list(json.loads(self.path.read_text()).get("done", []))

    def mark(self, source: str) -> None:
        self.done.append(source)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"done": self.done}))
        tmp.replace(self.path)

    def finish(self) -> None:
        """Every step is applied: forget the progress, so that a later ``--resume`` of the
        same snapshot and target is a new restore rather than a no-op."""
        self.done = []
        self.path.unlink(missing_ok=True)


class Executor:
    """Plans, applies and checks a restore of one snapshot onto one target."""

    def __init__(
        self,
        policy: Policy,
        repo: Repository,
        manifest: Manifest,
        identities: list[Identity],
        runner: Runner,
        opts: RestoreOptions,
        *,
        only: list[str] | None = None,
        target: str = "local",
        resume: bool = False,
    ) -> None:
        self.policy, self.repo, self.manifest = policy, repo, manifest
        self.identities, self.runner, self.opts = identities, runner, opts
        self.records = order_sources(manifest, only)
        configs = {source_name(c): c for c in policy.source}
        missing = [s.name for s in self.records if s.name not in configs]
        if missing:
            raise RestoreError(
                f"host {manifest.host}: source(s) {', '.join(missing)} are in the snapshot but "
                "not in the policy; restoring needs their policy entry"
            )
        self.sources: dict[str, Source] = {
            s.name: build_source(configs[s.name], runner) for s in self.records
        }
        self.facts = read_facts(repo, manifest, identities)  # also proves the identity fits
        self.progress = Progress(manifest, target, resume)

    def plan(self) -> list[Step]:
        """The ordered steps, each with what it would do; touches nothing."""
        steps = []
        incoming: dict[str, str] = {}  # path -> the earlier step that writes it
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
            steps.append(Step(n, rec.name, rec.kind, plan, done))
            if not done and (self.opts.dest or "/") == "/":
                incoming.update(dict.fromkeys(written_paths(facts), f"step {n} ({rec.name})"))
        return steps

    def run(self, log: Log = lambda _m: None, *, check: bool = True) -> RestoreResult:
        t0 = time.monotonic()
        todo = [r for r in self.records if r.name not in self.progress.done]
        precheck(self.repo, self.manifest, todo)
        result = RestoreResult(self.manifest.host, self.manifest.snapshot)
        for rec in self.records:
            if rec.name in self.progress.done:
                result.skipped.append(rec.name)
                log(f"{self.manifest.host}: {rec.name}: already restored (resume), skipped")
                continue
            log(f"{self.manifest.host}: restoring {rec.name} ({rec.kind}) ...")
            report = self.sources[rec.name].restore(
                self._feeder(rec), self.facts.get(rec.name, {}), self.opts
            )
            for action in report.actions:
                result.steps.append(f"{rec.name}: {action}")
                log(f"{self.manifest.host}: {rec.name}: {action}")
            self.progress.mark(rec.name)
        self.progress.finish()
        if check:
            result.checks = self.check()
        result.seconds = time.monotonic() - t0
        return result

    def check(self) -> list[Check]:
        checks: list[Check] = []
        for rec in self.records:
            checks += self.sources[rec.name].check(self.facts.get(rec.name, {}), self.opts)
        return checks

    def _feeder(self, rec: SourceRecord) -> Callable[[str, Callable[[BinaryIO], object]], None]:
        records: dict[str, ArtifactRecord] = {a.name: a for a in rec.artifacts}
        manifest, repo = self.manifest, self.repo

        def feed(name: str, consume: Callable[[BinaryIO], object]) -> None:
            record = records.get(name)
            if record is None:
                raise RestoreError(f"host {manifest.host}: source {rec.name}: no artifact {name}")
            key = object_key(manifest.host, manifest.snapshot, record.key)
            with repo.store.get(key) as stored:
                decode(
                    stored,
                    self.identities,
                    consume,
                    expected=digests_of(record),
                    label=object_label(repo, manifest, record),
                )

        return feed


def format_plan(manifest: Manifest, target: str, steps: list[Step]) -> str:
    lines = [
        f"Restore plan: host {manifest.host}, snapshot {manifest.snapshot} "
        f"(taken {manifest.finished}), onto {target}"
    ]
    for s in steps:
        lines.append(f" {s.number}. {s.source} ({s.kind})")
        lines += [f"    - {a}" for a in s.plan.actions]
        if s.plan.blocked:
            lines.append(f"    ! REFUSED: {s.plan.blocked}")
    return "\n".join(lines)
