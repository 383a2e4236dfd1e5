"""The start / success / fail notifications of one host's backup run (drkit.notify).

drkit.notify is imported only when the policy has a channel: httpx is not free, and
a backup loads only what it needs (tests/e2e/test_backup_lean.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from drkit.logs import Log
from drkit.policy.models import Policy

if TYPE_CHECKING:
    from drkit.actions.backup import BackupResult
    from drkit.notify import Notifier


class Reporter:
    """Start / success / fail notifications of one host's run.

    ``log`` is what the run should log through: with notifications it also
    keeps the tail that the success and fail pings carry.
    """

    def __init__(self, policy: Policy, log: Log) -> None:
        self.policy = policy
        self.log = log
        self._notifier: Notifier | None = None
        self._tail: Callable[[], str] = lambda: ""
        self._run_id = ""
        config = policy.notify
        if config is not None and config.has_channels:
            from drkit.notify import LogTail, Notifier, new_run_id

            tail = LogTail(log)
            self.log = tail
            self._tail = tail.text
            self._notifier = Notifier.from_config(config, policy.host, tail)
            self._run_id = new_run_id()

    def start(self, started: dt.datetime) -> None:
        if self._notifier is not None:
            from drkit.notify import RunEvent

            self._notifier.send(RunEvent("start", self.policy.host, self._run_id, started=started))

    def done(self, started: dt.datetime, res: BackupResult) -> None:
        if self._notifier is None:
            return
        from drkit.notify import RunEvent

        m = res.manifest
        event = RunEvent(
            "fail" if res.partial else "success",
            self.policy.host,
            self._run_id,
            snapshot=m.snapshot,
            started=started,
            finished=dt.datetime.now(dt.UTC),
            stored_bytes=sum(x.stored_bytes for x in res.manifests),
            sources=res.sources,
            error="; ".join(res.failed) or None,
            log_tail=self._tail(),
        )
        self._notifier.send(event)

    def failed(self, started: dt.datetime, error: str) -> None:
        if self._notifier is None:
            return
        from drkit.notify import RunEvent

        # Not logged here: the CLI prints the error once; the ping body gets it appended.
        event = RunEvent(
            "fail",
            self.policy.host,
            self._run_id,
            started=started,
            finished=dt.datetime.now(dt.UTC),
            error=error,
            log_tail=self._tail(),
        )
        self._notifier.send(event)

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.close()
