"""Which roles could log in at backup time, and whether they still can after a restore.

At backup (in the globals' session): the login roles and, where the role backing up
can read pg_authid, which of them had a password, by name only (the hashes are in
globals.sql). After a restore: each of those the restore manages (protected roles
are left as the target has them) is still LOGIN on the target and, if it had a
password then, has one now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drkit.sources.base import Check
from drkit.sources.pgroles import is_protected

_AUTHID = "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT') AS drkit_authid \\gset\n"

# Which roles could log in and, where the role backing up can read pg_authid, which of
# them had a password: names only (the hashes are in globals.sql). ``passwords`` is null
# when pg_authid was not readable (pg_dumpall run with --no-role-passwords then, as on a
# managed server: the restored roles have no password).
LOGINS_SQL = (
    _AUTHID
    + """\\if :drkit_authid
SELECT json_build_object('fact', 'logins', 'value', json_build_object(
  'roles', coalesce(json_agg(rolname ORDER BY rolname), '[]'),
  'passwords', coalesce(
    json_agg(rolname ORDER BY rolname) FILTER (WHERE rolpassword IS NOT NULL), '[]')))
FROM pg_authid WHERE rolcanlogin AND rolname !~ '^pg_';
\\else
SELECT json_build_object('fact', 'logins', 'value', json_build_object(
  'roles', coalesce(json_agg(rolname ORDER BY rolname), '[]'), 'passwords', NULL))
FROM pg_roles WHERE rolcanlogin AND rolname !~ '^pg_';
\\endif
"""
)

# The same on a restored target: the roles that can log in, those with a password (null
# when the connecting role cannot read pg_authid).
TARGET_LOGINS_SQL = (
    _AUTHID
    + """\\if :drkit_authid
SELECT json_build_object(
  'login', coalesce(json_agg(rolname) FILTER (WHERE rolcanlogin), '[]'),
  'password', coalesce(json_agg(rolname) FILTER (WHERE rolpassword IS NOT NULL), '[]'))
FROM pg_authid;
\\else
SELECT json_build_object(
  'login', coalesce(json_agg(rolname) FILTER (WHERE rolcanlogin), '[]'), 'password', NULL)
FROM pg_roles;
\\endif
"""
)


def login_check(
    source: str,
    facts: dict[str, Any],
    present: set[str],
    protected: set[str],
    target_logins: Callable[[], dict[str, Any]],
) -> Check | None:
    """The ``logins`` check of ``source`` over ``facts["logins"]``; ``present``: the roles
    on the target; ``target_logins``: runs ``TARGET_LOGINS_SQL`` there (only when some
    role is to be checked). None when there is nothing to check."""
    logins = facts["logins"]
    backed = set(facts.get("roles", []))
    login_roles = [r for r in logins.get("roles", []) if r in backed]
    roles = [r for r in login_roles if not is_protected(r, protected)]
    if not roles:
        return None
    hashed = logins.get("passwords")  # None: the backup could not read pg_authid
    had = set(roles) if hashed is None else set(roles) & set(hashed)
    found = target_logins()
    can, has = set(found["login"]), found["password"]  # has: None if unreadable
    wrong, none = [], []
    for role in roles:
        if role not in present:
            wrong.append(f"{role} (missing)")
        elif role not in can:
            wrong.append(f"{role} (NOLOGIN)")
        elif role in had and has is not None and role not in has:
            if hashed is None:
                none.append(role)
            else:
                wrong.append(f"{role} (no password; it had one at backup)")
    notes = []
    if hashed is None:
        # Restored from a globals.sql without hashes: they have none unless set since.
        notes.append("the backup could not read pg_authid, so no password was restored")
        if none:
            notes.append(
                f"no password on the target: {', '.join(none)} (set one with ALTER ROLE "
                "... PASSWORD where an app logs in with it)"
            )
    if had and has is None:
        notes.append(
            f"password(s) of {', '.join(sorted(had))} not verified (the connecting role "
            "cannot read pg_authid)"
        )
    left = sorted(set(login_roles) - set(roles))
    if left:
        notes.append(f"protected role(s) {', '.join(left)} left as the target has them")
    n = len(roles)
    if wrong:
        status, detail = "fail", "cannot log in as at backup: " + ", ".join(wrong)
    elif none or (has is None and had):
        status, detail = "warn", f"{n} role(s) can log in"
    elif hashed is None:
        status, detail = "pass", f"{n} role(s) can log in, with a password set since"
    elif len(had) == n:
        status, detail = "pass", f"{n} role(s) can log in with a password, as at backup"
    else:
        status, detail = (
            "pass",
            f"{n} role(s) can log in as at backup, {len(had)} with a password",
        )
    return Check(source, "logins", status, "; ".join([detail, *notes]))


def unrecorded_passwords(facts: dict[str, Any], created: list[str]) -> list[str]:
    """The login roles among ``created`` whose password the backup could not read
    (``facts["logins"]["passwords"]`` is null): they come back with none."""
    logins = facts.get("logins")
    if not isinstance(logins, dict) or logins.get("passwords") is not None:
        return []
    return sorted(set(logins.get("roles", [])) & set(created))
