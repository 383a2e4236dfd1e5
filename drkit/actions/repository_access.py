"""How an action reaches a policy's repository: credentials resolved from their
references, the trust the local policy pins, the Object Lock guard and check."""

from __future__ import annotations

import dataclasses
import threading

from drkit import secrets
from drkit.errors import DrkitError, RepositoryError
from drkit.logs import Log, warn
from drkit.policy.models import Policy, RepositoryConfig
from drkit.repository.factory import StoreOptions, open_store
from drkit.repository.layout import Repository
from drkit.repository.object_lock import ObjectLockGuard, object_lock_missing
from drkit.repository.store import Store
from drkit.repository.trust import Trust
from drkit.signing import Signers, SigningKey, read_signers


def policy_trust(policy: Policy, *, signing: bool = False) -> Trust:
    """Whom ``policy``'s host's snapshots and drill reports are trusted from: the keys
    the local policy pins, never anything the repository says. ``signing``: also load
    this machine's signing key (backup and drill write signed documents)."""
    enc = policy.encryption
    snapshots = Signers(read_signers(enc.signers, enc.signers_file))
    drills = Signers([*snapshots.keys, *enc.drill_signers])
    key = SigningKey.load() if signing else None
    return Trust({policy.host: snapshots}, {policy.host: drills}, signing_key=key)


def open_repository(policy: Policy, *, signing: bool = False) -> Repository:
    """The repository ``policy`` names, credentials resolved from their references, read
    with the trust the policy pins (``policy_trust``)."""
    return open_repository_at(policy.repository, policy_trust(policy, signing=signing))


def with_signing_key(repo: Repository, log: Log) -> Repository:
    """``repo`` with this machine's signing key, if it has one; else ``repo`` as it is,
    after saying why what it writes will not be stored (a drill still runs and reports
    locally without a key; its report is just not trusted in the repository)."""
    try:
        key = SigningKey.load()
    except DrkitError as exc:
        warn(log, str(exc))
        return repo
    return Repository(repo.store, dataclasses.replace(repo.trust, signing_key=key))


def open_repository_at(config: RepositoryConfig, trust: Trust | None = None) -> Repository:
    """The repository ``config`` names; without ``trust`` it reads no snapshot."""
    key_id = secrets.resolve(config.access_key_id) if config.access_key_id else None
    secret = secrets.resolve(config.secret_access_key) if config.secret_access_key else None
    options = StoreOptions(
        endpoint=config.endpoint,
        region=config.region,
        path_style=config.path_style,
        access_key_id=key_id,
        secret_access_key=secret,
        object_lock_days=config.immutable_days,
        object_lock_mode=config.immutable_mode,
    )
    store = open_store(config.url, options)
    if config.immutable_days > 0:
        # Every write (lock object, format marker, artifacts) first proves the bucket can
        # hold retention; reads (restore, verify, status) never pay for the check.
        inner = store
        store = ObjectLockGuard(
            inner,
            days=config.immutable_days,
            enabled=lambda: _object_lock_enabled(inner, config),
        )
    return Repository(store, trust)


# -- Object Lock capability ------------------------------------------------------

# Bucket checks done in this process (one drkit run): (repository URL, endpoint) ->
# Object Lock enabled. A fleet run sharing one bucket asks the server once.
_object_lock_checked: dict[tuple[str, str | None], bool] = {}
_object_lock_mutex = threading.Lock()


def require_object_lock(repo: Repository, config: RepositoryConfig, host: str | None) -> None:
    """Refuse a repository whose policy asks for Object Lock retention the bucket cannot hold.

    Nothing to check when ``config.immutable_days`` is 0. The answer is cached per
    repository URL for the rest of the process. Raises RepositoryError naming
    ``host`` (if given), the bucket and what to do; RepositoryError also when the
    server cannot say (never assume protection that may be missing).
    """
    if config.immutable_days <= 0:
        return
    try:
        enabled = _object_lock_enabled(repo.store, config)
    except RepositoryError as exc:
        if host and not str(exc).startswith(f"host {host}:"):
            raise RepositoryError(f"host {host}: {exc}") from None
        raise
    if not enabled:
        raise RepositoryError(object_lock_missing(repo.store.url, config.immutable_days, host))


def _object_lock_enabled(store: Store, config: RepositoryConfig) -> bool:
    key = (store.url, config.endpoint)
    with _object_lock_mutex:  # held during the request: concurrent hosts ask once
        if key not in _object_lock_checked:
            _object_lock_checked[key] = store.object_lock_enabled()
        return _object_lock_checked[key]
