"""Provider snapshots of whole machines: take one, prune drkit's own, boot a copy.

A provider snapshot and the host's data backup are independent ways back.
``start_snapshot`` runs ``take_snapshot`` in a background thread so a slow
snapshot (Vultr: up to 30 minutes) never holds up the data sources, and its
failure or timeout is reported for that source only (``SnapshotOutcome``);
it never raises into the data path. Pruning considers only snapshots drkit
made for this host and source (``Owner.owns``): every other one is kept.

One module (~430 lines) for the three parts of a provider snapshot's life (take,
prune, boot a machine from it): they share the provider opening and timeouts.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drkit import retention
from drkit.durations import parse_duration
from drkit.errors import DrkitError, UsageError
from drkit.logs import Log, quiet
from drkit.policy.models import MachineImageConfig, Policy, source_name
from drkit.providers.base import (
    CreatedInstance,
    Owner,
    Provider,
    ProviderError,
    ProviderSnapshot,
    name_time,
)
from drkit.providers.factory import open_provider, source_label
from drkit.retention import Policy as RetentionRules
from drkit.retention import RetentionLike, SnapInfo

OpenProvider = Callable[[Policy, MachineImageConfig], Provider]
DEFAULT_RESTORE_TIMEOUT = "15m"


def _seconds(policy: Policy, config: MachineImageConfig, key: str, value: str) -> float:
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise UsageError(f"{source_label(policy, config)}: {key}: {exc}") from None


# -- take ------------------------------------------------------------------


def take_snapshot(
    policy: Policy,
    config: MachineImageConfig,
    now: dt.datetime | None = None,
    *,
    connect: OpenProvider = open_provider,
    log: Log = quiet,
    stop: threading.Event | None = None,
) -> ProviderSnapshot:
    """Create a snapshot of the source's machine and wait (``wait_timeout``) until complete.

    Returns its id, name, size and creation time. Raises ProviderError (or
    ProviderTimeout) naming host, source, provider and resource; SecretError
    when the token reference cannot be resolved. ``stop`` cancels the wait.
    """
    now = now or dt.datetime.now(dt.UTC)
    timeout = _seconds(policy, config, "wait_timeout", config.wait_timeout)
    provider = connect(policy, config)
    provider.stop = stop
    try:
        name = provider.owner.snapshot_name(now)
        log(f"{provider.label}: creating snapshot {name}")
        handle = provider.create_snapshot(name, provider.owner.labels())
        snapshot = provider.wait(handle, timeout)
        size = f"{snapshot.size_gb} GB" if snapshot.size_gb is not None else "size unknown"
        log(f"{provider.label}: snapshot {snapshot.id} ({name}) complete, {size}")
        return snapshot
    except DrkitError:
        raise
    except Exception as exc:  # an SDK surprise: still one named, scrubbed error
        raise provider.error("snapshot", f"{type(exc).__name__}: {exc}") from None
    finally:
        provider.close()


@dataclass(frozen=True)
class SnapshotOutcome:
    """How one provider snapshot ended: ``snapshot`` or ``error`` (a message naming
    host, source, provider and resource; never a secret)."""

    host: str
    source: str
    provider: str
    resource_id: str
    snapshot: ProviderSnapshot | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.snapshot is not None

    def facts(self) -> dict[str, Any]:
        """What the host's manifest/facts record for this source."""
        base: dict[str, Any] = {
            "kind": "snapshot",
            "provider": self.provider,
            "resource_id": self.resource_id,
        }
        if self.snapshot is None:
            return {**base, "error": self.error}
        return {**base, **self.snapshot.facts()}


class SnapshotJob:
    """A provider snapshot running in a daemon thread; ``result()`` never raises."""

    def __init__(
        self,
        policy: Policy,
        config: MachineImageConfig,
        now: dt.datetime | None = None,
        *,
        connect: OpenProvider = open_provider,
        log: Log = quiet,
    ) -> None:
        self.policy = policy
        self.config = config
        self._now = now
        self._connect = connect
        self._log = log
        self._stop = threading.Event()
        self._outcome: SnapshotOutcome | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"drkit-snapshot-{source_name(config)}", daemon=True
        )

    def start(self) -> SnapshotJob:
        self._thread.start()
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Stop waiting (the provider may still finish the snapshot)."""
        self._stop.set()

    def result(self, timeout: float | None = None) -> SnapshotOutcome:
        """Wait for the job (at most ``timeout`` seconds) and return its outcome."""
        self._thread.join(timeout)
        if self._outcome is None:
            return self._make(None, "still running when its result was asked for", 0.0)
        return self._outcome

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            snap = take_snapshot(
                self.policy,
                self.config,
                self._now,
                connect=self._connect,
                log=self._log,
                stop=self._stop,
            )
            self._outcome = self._make(snap, None, time.monotonic() - t0)
        except DrkitError as exc:
            self._outcome = self._make(None, str(exc), time.monotonic() - t0)
        except Exception as exc:  # before a provider existed (no token in such messages)
            text = f"{source_label(self.policy, self.config)}: {type(exc).__name__}"
            self._outcome = self._make(None, text, time.monotonic() - t0)
        if self._outcome.error:
            self._log(self._outcome.error)

    def _make(
        self, snap: ProviderSnapshot | None, error: str | None, secs: float
    ) -> SnapshotOutcome:
        return SnapshotOutcome(
            host=self.policy.host,
            source=source_name(self.config),
            provider=self.config.provider,
            resource_id=self.config.resource_id,
            snapshot=snap,
            error=error,
            seconds=secs,
        )


def start_snapshot(
    policy: Policy,
    config: MachineImageConfig,
    now: dt.datetime | None = None,
    *,
    connect: OpenProvider = open_provider,
    log: Log = quiet,
) -> SnapshotJob:
    """Start ``take_snapshot`` in the background; collect it with ``.result()``."""
    return SnapshotJob(policy, config, now, connect=connect, log=log).start()


# -- prune -----------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    snapshot: ProviderSnapshot
    keep: bool
    reasons: list[str]


def plan_retention(
    snapshots: Sequence[ProviderSnapshot],
    owner: Owner,
    rules: RetentionLike,
    now: dt.datetime,
) -> list[Decision]:
    """Keep or remove each snapshot, with the reasons. Pure.

    Snapshots drkit did not make for ``owner`` are always kept; drkit's own go
    through ``drkit.retention.decide`` (the same rules as data snapshots: no
    rule keeps everything, the newest complete one is always kept), and
    unfinished ones are pinned.
    """
    out: list[Decision] = []
    own: dict[str, ProviderSnapshot] = {}
    infos: list[SnapInfo] = []
    pinned: dict[str, list[str]] = {}
    for snap in snapshots:
        when = snap.created or name_time(snap.name)
        if not owner.owns(snap) or when is None:
            out.append(Decision(snap, True, ["not made by drkit for this host and source"]))
            continue
        own[snap.id] = snap
        infos.append(SnapInfo(when, snap.id, complete=snap.status == "complete"))
        if snap.status != "complete":
            pinned[snap.id] = [f"not complete ({snap.status})"]
    for d in retention.decide(infos, rules, now, pinned=pinned):
        out.append(Decision(own[d.snapshot.id], d.keep, list(d.reasons)))
    return out


@dataclass
class PruneReport:
    host: str
    source: str
    provider: str
    dry_run: bool
    kept: list[Decision] = field(default_factory=list)
    removed: list[Decision] = field(default_factory=list)
    failed: list[tuple[Decision, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def source_rules(
    config: MachineImageConfig, keep_last: int | None = None, keep_within: str | None = None
) -> RetentionRules:
    """The source's own ``retention`` (none: keep everything), with keep_last/keep_within
    overridden when given. Provider snapshots never use the host's data retention."""
    base = config.retention
    return RetentionRules(
        keep_last=keep_last if keep_last is not None else (base.keep_last if base else None),
        keep_hourly=base.keep_hourly if base else None,
        keep_daily=base.keep_daily if base else None,
        keep_weekly=base.keep_weekly if base else None,
        keep_monthly=base.keep_monthly if base else None,
        keep_yearly=base.keep_yearly if base else None,
        keep_within=keep_within or (base.keep_within if base else None),
    )


def prune_provider_snapshots(
    policy: Policy,
    config: MachineImageConfig,
    keep_last: int | None = None,
    keep_within: str | None = None,
    dry_run: bool = False,
    *,
    now: dt.datetime | None = None,
    connect: OpenProvider = open_provider,
    log: Log = quiet,
) -> PruneReport:
    """Delete drkit's own provider snapshots beyond the source's retention.

    ``keep_last``/``keep_within`` override the source's ``retention``. Deletion
    failures are collected in ``failed`` (the others still run); listing
    failures raise ProviderError; a bad ``keep_within`` raises UsageError.
    """
    rules = source_rules(config, keep_last, keep_within)
    if rules.keep_within:
        _seconds(policy, config, "keep_within", rules.keep_within)
    now = now or dt.datetime.now(dt.UTC)
    provider = connect(policy, config)
    report = PruneReport(policy.host, source_name(config), config.provider, dry_run)
    try:
        for d in plan_retention(provider.list_all(), provider.owner, rules, now):
            if d.keep:
                report.kept.append(d)
                continue
            snap = d.snapshot
            if not provider.owner.owns(snap):  # the one rule that must never break
                report.failed.append((d, "refused: not made by drkit"))
                continue
            verb = "would delete" if dry_run else "deleting"
            log(f"{provider.label}: {verb} snapshot {snap.id} ({snap.name}): {d.reasons[0]}")
            if not dry_run:
                try:
                    provider.delete(snap.id)
                except DrkitError as exc:
                    report.failed.append((d, str(exc)))
                    continue
            report.removed.append(d)
    finally:
        provider.close()
    return report


# -- restore ---------------------------------------------------------------


@dataclass(frozen=True)
class ProviderRestore:
    plan: str
    snapshot: ProviderSnapshot
    instance: CreatedInstance | None


def restore_from_snapshot(
    policy: Policy,
    config: MachineImageConfig,
    snapshot_id: str | None = None,
    region: str | None = None,
    size: str | None = None,
    yes: bool = False,
    *,
    name: str | None = None,
    now: dt.datetime | None = None,
    connect: OpenProvider = open_provider,
    log: Log = quiet,
) -> ProviderRestore:
    """Plan, and with ``yes`` do, the creation of a new machine from a snapshot.

    ``snapshot_id`` None means the newest complete snapshot drkit made for this
    source; an explicit id may be any snapshot of the resource. Region and size
    come from the arguments, else the source (``region``/``size``, read with
    defaults until the policy model has them). The original machine is never
    touched. Raises UsageError (missing region/size with ``yes``) or ProviderError.
    """
    now = now or dt.datetime.now(dt.UTC)
    region = region or getattr(config, "region", None)
    size = size or getattr(config, "size", None)
    provider = connect(policy, config)
    try:
        snap = _choose(provider, snapshot_id)
        name = name or _instance_name(policy.host, now)
        plan = _plan_text(provider, snap, name, region, size, yes)
        if not yes:
            return ProviderRestore(plan, snap, None)
        if not region or not size:
            missing = " and ".join(w for w, v in (("--region", region), ("--size", size)) if not v)
            raise UsageError(f"{provider.label}: restore needs {missing} (or set it in the policy)")
        log(f"{provider.label}: creating {provider.noun} {name} from snapshot {snap.id}")
        limit = getattr(config, "restore_timeout", None) or DEFAULT_RESTORE_TIMEOUT
        timeout = _seconds(policy, config, "restore_timeout", limit)
        instance = provider.create_instance(snap.id, region, size, name, timeout)
        where = instance.address or "no address"
        log(f"{provider.label}: {provider.noun} {instance.id} {instance.status} at {where}")
        return ProviderRestore(plan, snap, instance)
    finally:
        provider.close()


def _choose(provider: Provider, snapshot_id: str | None) -> ProviderSnapshot:
    own = [s for s in provider.list_snapshots() if s.status == "complete"]
    if snapshot_id is None:
        if not own:
            raise provider.error("restore", "no complete snapshot made by drkit to restore from")
        return own[-1]
    for snap in own + provider.list_all():
        if snap.id == snapshot_id:
            if snap.status != "complete":
                raise provider.error("restore", f"snapshot {snap.id} is {snap.status}")
            return snap
    raise provider.error("restore", f"snapshot {snapshot_id} not found")


def _instance_name(host: str, now: dt.datetime) -> str:
    # A valid hostname for every provider: letters, digits, hyphens.
    safe = "".join(c if c.isalnum() else "-" for c in host).strip("-") or "drkit"
    return f"{safe}-restore-{now.astimezone(dt.UTC).strftime('%Y%m%d-%H%M%S')}"


def _plan_text(
    provider: Provider,
    snap: ProviderSnapshot,
    name: str,
    region: str | None,
    size: str | None,
    yes: bool,
) -> str:
    created = snap.created.isoformat(timespec="seconds") if snap.created else "unknown time"
    gb = f"{snap.size_gb} GB" if snap.size_gb is not None else "size unknown"
    lines = [
        f"Restore host {provider.owner.host} from a {provider.kind} snapshot "
        f"(source {provider.owner.source}):",
        f"  1. use snapshot {snap.id} {snap.name} (created {created}, {gb})",
        f"  2. create {provider.kind} {provider.noun} {name} in region "
        f"{region or '<missing: --region>'}, size {size or '<missing: --size>'}",
        "  3. wait until it runs and report its public address",
        f"  {provider.noun} {provider.resource_id} is not touched; point DNS or a floating IP "
        "at the new address yourself",
    ]
    if not yes:
        lines.append("Nothing was changed. Run again with --yes to create it.")
    return "\n".join(lines)


__all__ = [
    "Decision",
    "ProviderError",
    "ProviderRestore",
    "PruneReport",
    "SnapshotJob",
    "SnapshotOutcome",
    "plan_retention",
    "prune_provider_snapshots",
    "restore_from_snapshot",
    "start_snapshot",
    "take_snapshot",
]
