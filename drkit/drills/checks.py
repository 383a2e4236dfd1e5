"""Drill checks beyond each source's own fact checks: certificate expiry, and the
declared checks of restore_drills/<host>.toml, run on the drill host through a Runner."""

from __future__ import annotations

import datetime as dt
import shlex
from typing import Any

from drkit.drills.spec import DrillSpec
from drkit.errors import DrkitError
from drkit.remote.base import Runner
from drkit.sources.base import Check
from drkit.sources.pgsql import PgConn

INSPECT_AS = "root"  # file/env/HTTP checks: sudo when the drill logs in as another user


# A certificate living this long or less is short-lived by design (Caddy's internal
# issuer: 12 hours; short-lived ACME profiles: days): its ACME client renews it when a
# third of its life is left, so a backup's copy is routinely near or past its end.
SHORT_LIVED = dt.timedelta(days=7)


def certificate_checks(facts: dict[str, Any], now: dt.datetime, warn_days: int) -> list[Check]:
    """Every certificate in caddy/certbot facts: expired -> fail, within ``warn_days`` ->
    warn. Short-lived ones (see SHORT_LIVED) are judged by their own lifetime: past its
    end -> warn (the client must renew it at start), else pass."""
    out: list[Check] = []
    for source, f in sorted(facts.items()):
        certs = list(f.get("certificates", [])) + list(f.get("lineages", []))
        for cert in certs:
            not_after = cert.get("not_after")
            if not not_after:
                continue
            names = ", ".join(cert.get("names", [])) or cert.get("name", "?")
            end = _when(not_after)
            days = (end - now).total_seconds() / 86400
            life = end - _when(cert["not_before"]) if cert.get("not_before") else None
            if life is not None and life <= SHORT_LIVED:
                status, detail = _short_lived(end, now, life, not_after)
            else:
                status = "fail" if days < 0 else "warn" if days < warn_days else "pass"
                detail = (
                    f"expired {-days:.0f} day(s) ago ({not_after})"
                    if days < 0
                    else f"valid {days:.0f} more day(s), until {not_after}"
                )
            out.append(Check(source, f"certificate {names}", status, detail))
    return out


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _short_lived(
    end: dt.datetime, now: dt.datetime, life: dt.timedelta, not_after: str
) -> tuple[str, str]:
    hours = life.total_seconds() / 3600
    kind = f"short-lived ({hours:.0f} h lifetime), renewed by its ACME client"
    if end < now:
        return "warn", f"{kind}: expired since ({not_after}); the client must renew it at start"
    return "pass", f"{kind}: valid until {not_after}"


def declared_checks(
    spec: DrillSpec,
    runner: Runner,
    pg: dict[str, tuple[PgConn, str]],
    *,
    sql_user: str | None = None,
) -> list[Check]:
    """Run the drill file's checks; ``pg`` maps a postgres source name to (conn, database),
    queried as the OS user ``sql_user`` (peer authentication on the local socket).

    Commands run as their ``user``, else as the login user (as a person on the
    host would run them); file, env and HTTP checks inspect as root, so a file
    the login user may not read is still checked (the container is ours)."""
    out: list[Check] = []
    for sql in spec.sql:
        if sql.source not in pg:
            out.append(Check("drill", sql.name, "fail", f"no postgres source {sql.source!r}"))
            continue
        conn, database = pg[sql.source]
        res = runner.run(
            conn.psql(database), input=sql.query.encode(), env=conn.env(), user=sql_user
        )
        got = res.stdout.decode().strip().splitlines()
        value = got[0] if got else ""
        ok = res.returncode == 0 and value == sql.expect
        detail = (
            f"got {value!r}" if res.returncode == 0 else f"psql failed: {res.stderr.strip()[-300:]}"
        )
        out.append(
            Check("drill", sql.name, "pass" if ok else "fail", f"{detail}, expected {sql.expect!r}")
        )
    for cmd in spec.command:
        res = runner.run(cmd.run, user=cmd.user)
        text = res.stdout.decode("utf-8", "replace") + res.stderr
        problems = []
        if res.returncode != cmd.exit:
            problems.append(f"exit {res.returncode}, expected {cmd.exit}")
        if cmd.contains is not None and cmd.contains not in text:
            problems.append(f"output lacks {cmd.contains!r}")
        detail = "; ".join(problems) or f"`{shlex.join(cmd.run)}` ok"
        out.append(Check("drill", cmd.name, "fail" if problems else "pass", detail))
    for http in spec.http:
        out.append(_http_check(runner, http.name, http.url, http.status, http.contains))
    for f in spec.file:
        res = runner.run(["stat", "-c", "%a %U", "--", f.path], user=INSPECT_AS)
        if res.returncode != 0:
            out.append(Check("drill", f"file {f.path}", "fail", "missing"))
            continue
        mode, owner = res.stdout.decode().split()
        problems = []
        if f.mode is not None and int(mode, 8) != int(f.mode, 8):
            problems.append(f"mode {int(mode, 8):04o}, expected {f.mode}")
        if f.owner is not None and owner != f.owner:
            problems.append(f"owner {owner}, expected {f.owner}")
        detail = "; ".join(problems) or f"present, mode {int(mode, 8):04o}, owner {owner}"
        out.append(Check("drill", f"file {f.path}", "fail" if problems else "pass", detail))
    for env in spec.env:
        # Key names only: the script prints names, never values.
        script = (
            "sed -n 's/^[[:space:]]*\\(export[[:space:]]\\+\\)\\?"
            '\\([A-Za-z_][A-Za-z0-9_.-]*\\)[[:space:]]*=.*/\\2/p\' -- "$1"'
        )
        res = runner.run(["sh", "-c", script, "sh", env.path], user=INSPECT_AS)
        if res.returncode != 0:
            out.append(Check("drill", f"env {env.path}", "fail", "missing or unreadable"))
            continue
        have = set(res.stdout.decode().split())
        missing = [k for k in env.keys if k not in have]
        detail = (
            f"missing keys: {', '.join(missing)}" if missing else f"{len(env.keys)} key(s) present"
        )
        out.append(Check("drill", f"env {env.path}", "fail" if missing else "pass", detail))
    return out


def _http_check(runner: Runner, name: str, url: str, status: int, contains: str | None) -> Check:
    argv = ["curl", "-s", "-m", "10", "-o", "/dev/stdout", "-w", "\n%{http_code}", url]
    try:
        res = runner.run(argv, user=INSPECT_AS)
    except DrkitError as exc:
        return Check("drill", name, "fail", str(exc))
    body, _, code = res.stdout.decode("utf-8", "replace").rpartition("\n")
    problems = []
    if code.strip() != str(status):
        problems.append(f"HTTP {code.strip() or 'no answer'}, expected {status}")
    if contains is not None and contains not in body:
        problems.append(f"body lacks {contains!r}")
    return Check(
        "drill", name, "fail" if problems else "pass", "; ".join(problems) or f"HTTP {status}"
    )


def verdict(checks: list[Check]) -> str:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
