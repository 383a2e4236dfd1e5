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
from drkit.policy.models import Policy, source_name

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
        if src.timeout is not None:
            problems.extend(_duration_problem(f"source[{i}].timeout", src.timeout))
        if src.schedule is not None:
            problems.extend(_cron_problem(f"source[{i}].schedule", src.schedule))
        if src.kind in ("files", "env"):
            for j, p in enumerate(src.paths):
                if not p.startswith("/"):
                    problems.append(f"source[{i}].paths[{j}]: must be an absolute path")
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
        problems.extend(_duration_problem("rpo", policy.rpo))
    if policy.retention.keep_within is not None:
        problems.extend(_duration_problem("retention.keep_within", policy.retention.keep_within))
    if policy.schedule is not None:
        problems.extend(_cron_problem("schedule", policy.schedule))
    repo = policy.repository
    if repo.url.startswith("file://") and (repo.access_key_id or repo.secret_access_key):
        problems.append("repository: access keys apply only to s3:// repositories")
    if bool(repo.access_key_id) != bool(repo.secret_access_key):
        problems.append("repository: give both access_key_id and secret_access_key, or neither")
    return problems


def _duration_problem(path: str, text: str) -> list[str]:
    try:
        parse_duration(text)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    return []


def _cron_problem(path: str, expr: str) -> list[str]:
    from croniter import croniter

    if not croniter.is_valid(expr):
        return [f"{path}: not a valid cron expression: {expr!r}"]
    return []
