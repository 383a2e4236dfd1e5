"""Load and validate policy files, reporting every problem at once.

Each problem reads ``<file>: <key path>: <message>``, e.g.
``policies/vultr.toml: source[1].database: field required``. Schema errors
come first; cross-field rules run on what parsed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from drkit.durations import parse_duration
from drkit.errors import PolicyError
from drkit.policy.models import (
    EnvSource,
    FilesSource,
    Policy,
    SnapshotSource,
    SourceBase,
    source_name,
)

_SOURCE_TAGS = {
    "postgres",
    "files",
    "env",
    "command",
    "pm2",
    "caddy",
    "certbot",
    "nats",
    "docker_volume",
    "snapshot",
}


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 2 and loc[0] == "source" and part in _SOURCE_TAGS:
            continue  # the discriminator tag pydantic inserts: not a key the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Any) -> str:
    if err["type"] == "missing":
        return "field required"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse_policy(data: dict[str, Any], origin: str) -> Policy:
    """Validate already-parsed TOML. Raises PolicyError listing every problem."""
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = [f"{origin}: {_loc_to_path(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise PolicyError(problems) from None
    problems = [f"{origin}: {p}" for p in cross_field_problems(policy)]
    if problems:
        raise PolicyError(problems)
    return policy


def load_policy(path: Path) -> Policy:
    """Read and validate one policy file. Raises PolicyError."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: invalid TOML: {exc}"]) from None
    return parse_policy(data, str(path))


def load_policies(paths: Iterable[Path]) -> list[Policy]:
    """Load several files; collects problems across all of them before raising."""
    policies: list[Policy] = []
    problems: list[str] = []
    hosts: dict[str, Path] = {}
    for path in paths:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            problems.extend(exc.problems)
            continue
        if policy.host in hosts:
            problems.append(
                f"{path}: host: {policy.host!r} is also defined in {hosts[policy.host]}"
            )
        hosts[policy.host] = path
        policies.append(policy)
    if problems:
        raise PolicyError(problems)
    return policies


def cross_field_problems(policy: Policy) -> list[str]:
    """Rules that span fields; returns ``<key path>: <message>`` strings."""
    from drkit.pipeline.age import parse_recipient

    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, src in enumerate(policy.source):
        name = source_name(src)
        if name in seen:
            problems.append(f"source[{i}].name: {name!r} is already used by source[{seen[name]}]")
        seen[name] = i
        problems.extend(_source_problems(f"source[{i}]", src))
    enc = policy.encryption
    if not enc.recipients and not enc.recipients_file:
        problems.append("encryption.recipients: at least one recipient (or recipients_file)")
    for j, r in enumerate(enc.recipients):
        try:
            parse_recipient(r)
        except Exception as exc:
            problems.append(f"encryption.recipients[{j}]: {exc}")
    if policy.connection.type == "ssh" and not policy.connection.address:
        problems.append("connection.address: required when connection.type is 'ssh'")
    if policy.rpo is not None:
        problems.extend(_duration_problem("rpo", policy.rpo, positive=True))
    if policy.jitter is not None:
        problems.extend(_duration_problem("jitter", policy.jitter))
    problems.extend(_duration_problem("lock_ttl", policy.lock_ttl, positive=True))
    if policy.retention.keep_within is not None:
        problems.extend(_duration_problem("retention.keep_within", policy.retention.keep_within))
    if policy.schedule is not None:
        problems.extend(_cron_problem("schedule", policy.schedule))
    if policy.notify is not None:
        problems.extend(_notify_problems(policy))
    repo = policy.repository
    if repo.url.startswith("file://") and (repo.access_key_id or repo.secret_access_key):
        problems.append("repository: access keys apply only to s3:// repositories")
    if bool(repo.access_key_id) != bool(repo.secret_access_key):
        problems.append("repository: give both access_key_id and secret_access_key, or neither")
    if repo.url.startswith("file://") and repo.immutable_days:
        problems.append("repository.immutable_days: Object Lock applies only to s3:// repositories")
    return problems


def _source_problems(path: str, src: SourceBase) -> list[str]:
    problems: list[str] = []
    if src.timeout is not None:
        problems.extend(_duration_problem(f"{path}.timeout", src.timeout, positive=True))
    if src.schedule is not None:
        problems.extend(_cron_problem(f"{path}.schedule", src.schedule))
    if src.retention is not None and src.retention.keep_within is not None:
        problems.extend(
            _duration_problem(f"{path}.retention.keep_within", src.retention.keep_within)
        )
    if isinstance(src, FilesSource | EnvSource):
        for j, p in enumerate(src.paths):
            if not p.startswith("/"):
                problems.append(f"{path}.paths[{j}]: must be an absolute path")
    if isinstance(src, SnapshotSource):
        problems.extend(_duration_problem(f"{path}.wait_timeout", src.wait_timeout, positive=True))
        problems.extend(
            _duration_problem(f"{path}.restore_timeout", src.restore_timeout, positive=True)
        )
        if src.poll_interval is not None:
            problems.extend(
                _duration_problem(f"{path}.poll_interval", src.poll_interval, positive=True)
            )
        if src.endpoint is not None:
            from drkit.providers.base import check_endpoint

            try:
                check_endpoint(src.endpoint)
            except ValueError as exc:
                problems.append(f"{path}.endpoint: {exc}")
    return problems


def _notify_problems(policy: Policy) -> list[str]:
    notify = policy.notify
    assert notify is not None
    problems = _duration_problem("notify.timeout", notify.timeout, positive=True)
    if notify.prometheus_textfile is not None and not notify.prometheus_textfile.startswith("/"):
        problems.append("notify.prometheus_textfile: must be an absolute path")
    if notify.ntfy_token and not notify.ntfy:
        problems.append("notify.ntfy_token: set only together with notify.ntfy")
    return problems


def _duration_problem(path: str, text: str, *, positive: bool = False) -> list[str]:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    if positive and value.total_seconds() <= 0:
        return [f"{path}: must be longer than 0s"]
    return []


def _cron_problem(path: str, expr: str) -> list[str]:
    from drkit.schedule import check_schedule

    try:
        check_schedule(expr)
    except ValueError:
        return [
            f"{path}: not a valid cron expression: {expr!r} (five fields: minute hour "
            "day-of-month month day-of-week, evaluated in UTC, or @hourly/@daily/@weekly/"
            "@monthly/@yearly)"
        ]
    return []
