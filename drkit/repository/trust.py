"""Who the repository's documents are trusted from, and this machine's signing key.

A ``Trust`` is built from local policies only (never from the repository): per
host, the signing keys whose snapshots are trusted and, for drill reports,
those keys plus the drill runners'. It also holds the clock readers check ids
and times against, and, on a machine that writes (backup, drill), its signing
key.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from drkit.errors import UsageError
from drkit.signing import Signers, SigningKey

# A snapshot id or time later than now plus this is refused: clocks of the machines
# that back up and restore may differ a little, never by days (docs/security.md).
MAX_CLOCK_SKEW = dt.timedelta(minutes=10)

# For tests of schedules only (as in drkit.cli.context): a fixed "now". The trust
# clock takes the later of it and the real clock, so a test that backs up "in the
# future" can read back what it wrote.
NOW_ENV = "DRKIT_NOW"


def trust_clock() -> dt.datetime:
    real = dt.datetime.now(dt.UTC)
    fixed = os.environ.get(NOW_ENV)
    if not fixed:
        return real
    try:
        when = dt.datetime.fromisoformat(fixed)
    except ValueError:
        return real
    return max(real, when if when.tzinfo else when.replace(tzinfo=dt.UTC))


@dataclass(frozen=True)
class Trust:
    snapshots: Mapping[str, Signers] = field(default_factory=dict)
    drills: Mapping[str, Signers] = field(default_factory=dict)
    signing_key: SigningKey | None = None
    clock: Callable[[], dt.datetime] = trust_clock
    skew: dt.timedelta = MAX_CLOCK_SKEW

    def snapshot_signers(self, host: str) -> Signers:
        return self.snapshots.get(host) or Signers(())

    def drill_signers(self, host: str) -> Signers:
        return self.drills.get(host) or Signers(())

    def latest_acceptable(self) -> dt.datetime:
        return self.clock() + self.skew

    def signer_for(self, host: str, what: str = "snapshots") -> SigningKey:
        """This machine's key, refused unless the host's policy trusts it for ``what``:
        a backup whose snapshots restore would not trust must not run (exit 2)."""
        key = self.signing_key
        if key is None:
            raise UsageError(f"host {host}: no signing key loaded to sign {what}")
        trusted = (
            self.drill_signers(host) if what == "drill reports" else self.snapshot_signers(host)
        )
        if key.public not in trusted:
            raise UsageError(
                f"host {host}: this machine's signing key {key.public} ({key.path}) is not "
                f"in the policy's [encryption] signers, so restores would not trust the "
                f"{what} it writes; add it there (docs/security.md, key rotation)"
            )
        return key
