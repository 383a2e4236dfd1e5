"""Each host's series in the Prometheus textfile its policy names (notify.prometheus_textfile).

Written after every backup (drkit.actions.fleet) and after a drill (``rewrite_metrics``),
always from the repository, so the file is right even after runs by other machines.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from drkit.actions.backup import COVERAGE_EXTRA
from drkit.actions.repository_access import open_repository
from drkit.actions.status import last_drill_passed, newest_holding
from drkit.durations import parse_duration
from drkit.errors import DrkitError
from drkit.logs import Log, warn
from drkit.policy.models import Policy, source_name
from drkit.repository.layout import Repository
from drkit.repository.manifest import Manifest


def write_metrics(policy: Policy, repo: Repository, log: Log) -> None:
    """Rewrite the host's series in the policy's Prometheus textfile (if it names one).

    Read from the repository, so the file is right even after runs by other
    machines. Problems only warn: metrics must not fail a backup.
    """
    path = policy.notify.prometheus_textfile if policy.notify else None
    if not path:
        return
    from drkit.notify.prometheus import metrics_for_host, write_textfile

    names = [source_name(s) for s in policy.source]
    try:
        newest = newest_holding(repo, policy.host, names)
        rpo = parse_duration(policy.rpo).total_seconds() if policy.rpo else None
        manifests = {m.snapshot: m for m in newest.values()}
        rows = metrics_for_host(
            policy.host,
            manifests.values(),
            names,
            rpo_seconds=rpo,
            drill_success=last_drill_passed(repo, policy.host),
            uncovered=_uncovered(manifests.values()),
        )
        write_textfile(Path(path), rows)
    except (OSError, DrkitError) as exc:
        warn(log, f"host {policy.host}: could not write metrics to {path}: {exc}")


def _uncovered(manifests: Iterable[Manifest]) -> int | None:
    """The discovery count of the newest of ``manifests`` that has one (trusted: these
    come signed from the repository); None when no backup ran discovery."""
    for m in sorted(manifests, key=lambda m: m.snapshot, reverse=True):
        value = m.extra.get(COVERAGE_EXTRA)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def rewrite_metrics(policies: list[Policy], log: Log) -> None:
    """Rewrite the Prometheus textfile of each policy that names one, so
    ``drkit_last_drill_success`` follows the drill just stored, not the next backup.

    Read from the repository like after a backup. Problems only warn (a
    repository that cannot be opened, an unwritable file): metrics never change
    a drill's verdict or exit code.
    """
    for policy in policies:
        if policy.notify is None or not policy.notify.prometheus_textfile:
            continue
        try:
            repo = open_repository(policy)
        except DrkitError as exc:
            warn(log, f"host {policy.host}: metrics not rewritten: {exc}")
            continue
        write_metrics(policy, repo, log)
