"""Load and validate policy files, reporting every problem at once.

Each problem reads ``<file>: <key path>: <message>``, e.g.
``policies/vultr.toml: source[1].database: field required``. Schema errors
(missing keys, literal secrets, bad durations, cron expressions, paths or
recipients) are all reported together; rules spanning fields run on what
parsed.
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

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


def schema_problems(exc: ValidationError, origin: str) -> list[str]:
    """``<origin>: <key path>: <message>`` for each error of a schema (policies and drill
    files word their problems alike)."""
    return [f"{origin}: {_loc_to_path(e['loc'])}: {_message(e)}" for e in exc.errors()]


def parse_policy(data: dict[str, Any], origin: str) -> Policy:
    """Validate already-parsed TOML. Raises PolicyError listing every problem."""
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(schema_problems(exc, origin)) from None
    problems = [f"{origin}: {p}" for p in cross_field_problems(policy)]
    if problems:
        raise PolicyError(problems)
    policy._origin = origin
    return policy


def read_toml(path: Path) -> dict[str, Any]:
    """The table in a TOML file (a policy or a drill file).

    Raises PolicyError naming the file when it cannot be opened, is not a regular
    file (a directory, a FIFO, a device: refused without reading, so a FIFO never
    hangs the command), is not UTF-8 (the byte and its line) or is not TOML.
    """
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise PolicyError([f"{path}: cannot read: {kind}"])
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark, as some editors write, is fine
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        problem = f"not UTF-8 text: byte 0x{byte:02x} on line {line} (TOML files must be UTF-8)"
        raise PolicyError([f"{path}: {problem}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: invalid TOML: {exc}"]) from None


def load_policy(path: Path) -> Policy:
    """Read and validate one policy file. Raises PolicyError."""
    return parse_policy(read_toml(path), str(path))


def load_policies(paths: Iterable[Path]) -> list[Policy]:
    """Load several files; collects problems across all of them before raising."""
    loaded, problems = load_each(paths)
    if problems:
        raise PolicyError(problems)
    return [policy for _path, policy in loaded]


def load_each(paths: Iterable[Path]) -> tuple[list[tuple[Path, Policy]], list[str]]:
    """(each file that loaded with its policy, every problem found in all of them)."""
    loaded: list[tuple[Path, Policy]] = []
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
        loaded.append((path, policy))
    return loaded, problems


def cross_field_problems(policy: Policy) -> list[str]:
    """Rules that span fields; returns ``<key path>: <message>`` strings.

    Checks of a single value (durations, cron expressions, absolute paths,
    recipients) are validators on the models (``policy/checks.py``), so they
    are reported with the schema errors.
    """
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, src in enumerate(policy.source):
        name = source_name(src)
        if name in seen:
            problems.append(f"source[{i}].name: {name!r} is already used by source[{seen[name]}]")
        seen[name] = i
    enc = policy.encryption
    if not enc.recipients and not enc.recipients_file:
        problems.append("encryption.recipients: at least one recipient (or recipients_file)")
    if not enc.signers and not enc.signers_file:
        problems.append(
            "encryption.signers: at least one signing key (or signers_file): the public key "
            "`drkit init` prints on the machine that backs this host up"
        )
    if policy.connection.type == "ssh" and not policy.connection.address:
        problems.append("connection.address: required when connection.type is 'ssh'")
    notify = policy.notify
    if notify is not None and notify.ntfy_token and not notify.ntfy:
        problems.append("notify.ntfy_token: set only together with notify.ntfy")
    repo = policy.repository
    if repo.url.startswith("file://") and (repo.access_key_id or repo.secret_access_key):
        problems.append("repository: access keys apply only to s3:// repositories")
    if bool(repo.access_key_id) != bool(repo.secret_access_key):
        problems.append("repository: give both access_key_id and secret_access_key, or neither")
    if repo.url.startswith("file://") and repo.immutable_days:
        problems.append("repository.immutable_days: Object Lock applies only to s3:// repositories")
    return problems
