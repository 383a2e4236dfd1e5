"""Checks of single policy values, used as pydantic ``AfterValidator``s.

They run in the schema pass, so a bad duration, cron expression, path or
recipient is reported together with missing fields and literal secrets (one
``policy validate`` shows every mistake), not only once the rest parses.
Each returns the value unchanged or raises ValueError with the message the
user sees after ``<file>: <key path>:``. Heavy imports stay inside the
functions: loading a policy must not load croniter or pyrage for nothing.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

from drkit.durations import parse_duration


def check_duration(text: str) -> str:
    parse_duration(text)  # raises ValueError "not a duration: ..."
    return text


def check_positive_duration(text: str) -> str:
    if parse_duration(text).total_seconds() <= 0:
        raise ValueError("must be longer than 0s")
    return text


def check_lock_ttl(text: str) -> str:
    """Positive and at most the lock files' own cap (a longer one is refused when the
    lock is taken: here it is refused with the policy's other errors)."""
    from drkit.locks import MAX_TTL

    seconds = parse_duration(text).total_seconds()
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(f"must be longer than 0s and at most {MAX_TTL / 86400:.0f}d")
    return text


def check_cron(expr: str) -> str:
    from drkit.schedule import check_schedule

    try:
        check_schedule(expr)
    except ValueError:
        raise ValueError(
            f"not a valid cron expression: {expr!r} (five fields: minute hour "
            "day-of-month month day-of-week, evaluated in UTC, or @hourly/@daily/@weekly/"
            "@monthly/@yearly)"
        ) from None
    return expr


def check_absolute_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError("must be an absolute path")
    return path


def check_recipient(text: str) -> str:
    from drkit.errors import CryptoError
    from drkit.pipeline.age import parse_recipient

    try:
        parse_recipient(text)
    except CryptoError as exc:
        raise ValueError(str(exc)) from None
    return text


def check_signer(text: str) -> str:
    from drkit.signing import parse_public

    parse_public(text)  # raises ValueError naming the problem
    return text


def check_endpoint(url: str) -> tuple[str, bool]:
    """Validate an API base URL; return it without a trailing slash and whether it is plain http.

    The token travels in a header, so plain http is accepted only to a
    loopback address (a local test server or proxy). Raises ValueError. Here, below
    the providers, so that the policy checks its endpoints without importing them;
    ``providers/base.py`` uses the URL it returns.
    """
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError("API endpoint: credentials in the URL are refused")
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url.rstrip("/"), False
    if parts.scheme == "http":
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url.rstrip("/"), True
    raise ValueError(
        f"API endpoint {parts.scheme}://{host}: must be https:// "
        "(plain http only to a loopback address)"
    )


def check_api_endpoint(url: str) -> str:
    check_endpoint(url)  # raises ValueError naming the problem
    return url


Duration = Annotated[str, AfterValidator(check_duration)]
PositiveDuration = Annotated[str, AfterValidator(check_positive_duration)]
LockTtl = Annotated[str, AfterValidator(check_lock_ttl)]
Cron = Annotated[str, AfterValidator(check_cron)]
AbsolutePath = Annotated[str, AfterValidator(check_absolute_path)]
RecipientKey = Annotated[str, AfterValidator(check_recipient)]
ApiEndpoint = Annotated[str, AfterValidator(check_api_endpoint)]
SignerKey = Annotated[str, AfterValidator(check_signer)]
