"""What ``backup`` would refuse about a policy that this machine can tell without
contacting the host: the files a policy names (recipients_file, signers_file, the
SSH identity_file and known_hosts), the recipients and signing keys in them, and
the secret references (``file:`` must be readable UTF-8; ``env:`` unset is only a
warning, since cron or a wrapper may set it). ``policy validate`` reports these
after the schema checks (loader.py), every one at once.

Warnings also say what would surprise at run time but is not an error of the
policy itself: a schedule finer than ``backup --due``'s cron interval, this
machine's signing key missing from the signers (validation may run on the
restorer's laptop, which does not back up).
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from drkit.errors import DrkitError
from drkit.policy.models import Policy, SecretRef


@dataclass
class Findings:
    """``<key path>: <message>`` strings: errors (backup would refuse) and warnings."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def local_problems(policy: Policy) -> Findings:
    out = Findings()
    _check_keys(policy, out)
    _check_connection(policy, out)
    for where, ref in secret_references(policy):
        _check_secret(where, ref, out)
    _check_schedules(policy, out)
    _check_signing_key(policy, out)
    _check_local_programs(policy, out)
    return out


def run_problems(policy: Policy) -> list[str]:
    """The local problems that refuse a whole backup run of ``policy`` before anything
    is read (its key files and SSH files), each prefixed with the policy file. Secret
    references are left to the source that uses them: a due run of one source is not
    refused over another source's secret."""
    out = Findings()
    _check_keys(policy, out)
    # A known_hosts file that does not exist yet is left to the connection: its refusal
    # names the key the host offers and its fingerprint, which is what to check next.
    _check_connection(policy, out, missing_known_hosts=False)
    return [f"{policy.origin}: {p}" for p in out.errors]


def _check_keys(policy: Policy, out: Findings) -> None:
    from drkit.pipeline.age import read_recipients
    from drkit.signing import read_signers

    enc = policy.encryption
    if enc.recipients_file:
        try:
            read_recipients([], enc.recipients_file)
        except DrkitError as exc:
            out.errors.append(f"encryption.recipients_file: {exc}")
    if enc.signers_file:
        try:
            read_signers([], enc.signers_file)
        except DrkitError as exc:
            out.errors.append(f"encryption.signers_file: {exc}")


def _check_connection(policy: Policy, out: Findings, missing_known_hosts: bool = True) -> None:
    conn = policy.connection
    if conn.type != "ssh":
        return
    if conn.identity_file:
        path = Path(conn.identity_file).expanduser()
        if not path.is_file():
            out.errors.append(f"connection.identity_file: {path} does not exist")
    if conn.known_hosts:
        path = Path(conn.known_hosts).expanduser()
        if path.exists() and not path.is_file():
            out.errors.append(f"connection.known_hosts: {path} is not a regular file")
        elif not path.exists() and not conn.accept_new_host_key and missing_known_hosts:
            out.errors.append(
                f"connection.known_hosts: {path} does not exist (every host key would be "
                "unknown: add the host's key, or set accept_new_host_key = true once)"
            )
        elif path.is_file():
            from drkit.keyfiles import read_text_file

            try:
                read_text_file(path)
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else exc
                out.errors.append(f"connection.known_hosts: {path}: {why}")


def _check_local_programs(policy: Policy, out: Findings) -> None:
    """A policy whose sources run on this machine (no SSH connection): a warning for each
    PostgreSQL client program a postgres source needs that is not here (the sample
    policy of ``drkit init`` on a machine without PostgreSQL). A warning, not an error:
    the policy may be validated on another machine than the one that backs up."""
    import shutil

    from drkit.policy.models import PostgresConfig

    if policy.connection.type == "ssh":
        return
    for i, src in enumerate(policy.source):
        if not isinstance(src, PostgresConfig) or src.container:
            continue
        needed = ["pg_dump", *(["pg_dumpall"] if src.globals else [])]
        where = f"in {src.bin_dir}" if src.bin_dir else "on PATH"
        for program in needed:
            found = Path(src.bin_dir, program).is_file() if src.bin_dir else shutil.which(program)
            if not found:
                out.warnings.append(
                    f"source[{i}] ({src.kind}): {program} is not installed {where} here, and "
                    "this policy's sources run on this machine: backup would fail (install "
                    "the PostgreSQL client, e.g. postgresql-client-15, or set bin_dir)"
                )


def _check_secret(where: str, ref: str, out: Findings) -> None:
    from drkit import secrets

    if ref.startswith("env:"):
        import os

        if ref[4:] not in os.environ:
            out.warnings.append(
                f"{where}: {ref}: environment variable {ref[4:]} is not set here "
                "(backup refuses unless the environment it runs in sets it)"
            )
        return
    try:
        secrets.resolve(ref)
    except DrkitError as exc:
        out.errors.append(f"{where}: {exc}")


def secret_references(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key path, reference) of every secret-reference field set in ``model``."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{prefix}.{name}" if prefix else name
        if value is None:
            continue
        if _holds_secret(info.annotation):
            if isinstance(value, dict):
                yield from ((f"{where}.{k}", v) for k, v in value.items())
            else:
                yield where, value
        elif isinstance(value, BaseModel):
            yield from secret_references(value, where)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from secret_references(item, f"{where}[{i}]")


def _holds_secret(annotation: Any) -> bool:
    if annotation == SecretRef:
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))


def _check_schedules(policy: Policy, out: Findings) -> None:
    from drkit.schedule import DUE_EVERY_MINUTES, shortest_gap

    schedules = [("schedule", policy.schedule)]
    schedules += [(f"source[{i}].schedule", s.schedule) for i, s in enumerate(policy.source)]
    for where, expr in schedules:
        if not expr:
            continue
        gap = shortest_gap(expr)
        if gap.total_seconds() < DUE_EVERY_MINUTES * 60:
            minutes = int(gap.total_seconds() // 60)
            out.warnings.append(
                f"{where}: {expr!r} comes due every {minutes} min, but `backup --due` runs "
                f"every {DUE_EVERY_MINUTES} min (`drkit schedule --emit`): at most one backup "
                f"per {DUE_EVERY_MINUTES} min"
            )


def _check_signing_key(policy: Policy, out: Findings) -> None:
    from drkit.signing import SigningKey, read_signers

    try:
        key = SigningKey.load()
        trusted = read_signers(policy.encryption.signers, policy.encryption.signers_file)
    except DrkitError:
        return  # no key here (a restorer's machine), or the signers file (reported above)
    if key.public not in trusted:
        out.warnings.append(
            f"encryption.signers: this machine's signing key {key.public} is not listed: "
            "a backup run from here would be refused (fine where only restores and drills run)"
        )
