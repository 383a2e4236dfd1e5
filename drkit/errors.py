"""One exception tree for drkit.

Low-level code raises the most specific class and names the object involved;
the CLI turns any ``DrkitError`` into one line and its ``exit_code``.
Messages must never contain a secret value: callers pass names, never values.
A command's stderr quoted in a message may still hold one it printed, so
``str()`` of any DrkitError is scrubbed of every resolved secret (redact.py).
"""

from __future__ import annotations

from drkit.redact import scrub


class DrkitError(Exception):
    """Base of every error drkit reports to a user.

    ``source``: the name of the policy source the error happened in, when one
    did (set by the backup action, which knows it), so callers need not parse
    the message for it.
    """

    exit_code = 1
    source: str | None = None

    def __str__(self) -> str:
        return scrub(super().__str__())

    def reword(self, message: str) -> None:
        """Make this error say ``message`` (its text with more context: the host, the
        source, what a restore did before it). Class, attributes and traceback stay:
        rebuilding it as ``type(exc)(message)`` fails for classes whose constructors
        take more (``LockHeld``, ``MalformedLock``)."""
        self.args = (message,)


class UsageError(DrkitError):
    """Bad arguments or configuration given on the command line."""

    exit_code = 2


class PolicyError(DrkitError):
    """A policy file is invalid; ``problems`` lists every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SecretError(DrkitError):
    """A secret reference could not be resolved (the value is never shown)."""


class RepositoryError(DrkitError):
    """A repository operation failed (names the repository and object key)."""


class ObjectNotFound(RepositoryError):
    """The named object does not exist in the repository."""


class IntegrityError(DrkitError):
    """Stored data failed authentication or its digest does not match."""


class SourceError(DrkitError):
    """A source's command failed: names host, source and command, stderr tail."""


class RestoreError(DrkitError):
    """A restore step failed or was refused."""


class CryptoError(DrkitError):
    """Identity or recipient problems (bad key, wrong identity)."""
