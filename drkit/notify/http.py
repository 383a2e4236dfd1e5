"""HTTP notification channels: healthchecks.io-style pings, ntfy, a generic JSON webhook.

Every function here is given an ``httpx.Client`` (short timeouts, no
redirects) and a ``log``; it returns True if the server accepted the
request and False otherwise, after logging one warning. None of them raises
for network or HTTP errors: a notification must never fail a backup.

Ping URLs and ntfy topics are secrets (a healthchecks ping URL or ntfy.sh
topic is all it takes to send false "all good" pings), so messages show only
``scheme://host[:port]`` of a URL, and every exception text is scrubbed of
the URL, its path and query and any token before it is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from drkit import __version__
from drkit.logs import Log, warn

PingKind = Literal["start", "success", "fail"]

DEFAULT_TIMEOUT = 10.0
# healthchecks.io keeps at most 100 kB of a ping body; send the end of the log.
MAX_PING_BODY = 100_000
USER_AGENT = f"drkit/{__version__}"


def safe_target(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: the only part of a notification URL ever shown."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}" + (f":{port}" if port else "")


def make_client(timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
    """A client for notifications: short timeouts, no redirects, drkit's User-Agent."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted((s for s in secrets if s and len(s) > 1), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secret_parts(url: str, extra: list[str]) -> list[str]:
    parts = urlsplit(url)
    found = [url, parts.path, parts.query, parts.netloc.rpartition("@")[0], *extra]
    return [p for p in found if p and p != "/"]


def send(
    client: httpx.Client,
    log: Log,
    channel: str,
    url: str,
    *,
    content: bytes | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    secrets: list[str] | None = None,
) -> bool:
    """POST to ``url``; True on a 2xx answer. Logs one warning (no secrets) otherwise."""
    where = f"notify {channel} to {safe_target(url)}"
    hidden = _secret_parts(url, list(secrets or []))
    try:
        response = client.post(
            url, content=content, json=json_body, headers=dict(headers or {}), params=params
        )
    except httpx.HTTPError as exc:
        detail = _scrub(str(exc), hidden) if isinstance(exc, httpx.TransportError) else ""
        warn(log, f"{where} failed: {type(exc).__name__}" + (f": {detail}" if detail else ""))
        return False
    except Exception as exc:  # a notification must never fail the run
        warn(log, f"{where} failed: {type(exc).__name__}")
        return False
    if not response.is_success:
        warn(log, f"{where} failed: HTTP {response.status_code}")
        return False
    return True


def _with_path_suffix(url: str, suffix: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def healthchecks_ping(
    client: httpx.Client,
    log: Log,
    url: str,
    kind: PingKind,
    *,
    body: str = "",
    run_id: str | None = None,
) -> bool:
    """Ping ``url`` (``/start``, itself for success, ``/fail``) with ``body`` as the log.

    ``run_id`` (a UUID) is sent as ``rid`` so the service pairs a start with
    its end and measures the run's duration even when runs overlap.
    """
    suffix = {"start": "/start", "success": "", "fail": "/fail"}[kind]
    data = body.encode("utf-8", "replace")[-MAX_PING_BODY:]
    return send(
        client,
        log,
        f"healthchecks {kind} ping",
        _with_path_suffix(url, suffix),
        content=data,
        headers={"Content-Type": "text/plain; charset=utf-8"},
        params={"rid": run_id} if run_id else None,
    )


def _header_text(text: str) -> str:
    """HTTP header values are latin-1 on the wire; keep titles plain ASCII, one line."""
    return " ".join(text.encode("ascii", "replace").decode("ascii").split())


def ntfy_publish(
    client: httpx.Client,
    log: Log,
    url: str,
    *,
    title: str,
    message: str,
    priority: str = "default",
    tags: list[str] | None = None,
    token: str | None = None,
) -> bool:
    """Publish ``message`` to the ntfy topic ``url`` (``https://ntfy.sh/<topic>``).

    ``token``: an ntfy access token, sent as a Bearer header.
    """
    headers = {"Title": _header_text(title), "Priority": priority}
    if tags:
        headers["Tags"] = ",".join(tags)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return send(
        client,
        log,
        "ntfy",
        url,
        content=message.encode("utf-8", "replace"),
        headers=headers,
        secrets=[token] if token else None,
    )


def webhook_post(client: httpx.Client, log: Log, url: str, payload: dict[str, Any]) -> bool:
    """POST ``payload`` as JSON to ``url``."""
    return send(client, log, "webhook", url, json_body=payload)
