"""Roles from a backup (``globals.sql``, Supabase's ``roles.sql``): parsed, then rebuilt.

That text comes from the host that was backed up and psql runs it as a
superuser on the target: a ``\\!`` line would run a shell, a lower-case
``alter role postgres password ...`` would take over the cluster's own
superuser. So it is never fed to psql as written. It is tokenized here; each
statement must be one of

- ``CREATE ROLE|USER name [WITH] attribute ...``
- ``ALTER ROLE|USER name [WITH] attribute ...``
- ``ALTER ROLE|USER name [IN DATABASE db] SET param {TO|=} value, ...`` or ``RESET``
- ``GRANT role, ... TO role, ... [WITH ...] [GRANTED BY role]`` (role membership)
- ``COMMENT ON ROLE name IS 'text'``

in any letter case, and pg_dumpall's own framing (its ``SET`` header and its
``\\restrict``/``\\unrestrict`` lines) is dropped. Anything else, a meta-command
or any other statement, refuses the whole file naming its line. The SQL psql
gets is rebuilt from the tokens (names quoted, literals quoted again), so it
holds no backslash outside a string and nothing this module did not read as
a role statement.

Statements about protected roles are skipped, never applied, even with
``--force-db``: the target's bootstrap superuser and the connecting role (the
restore runs as it), the ``pg_*`` predefined roles and, where the target has
them, ``postgres`` and Supabase's reserved roles. A backup may still create
such a role the target lacks (PostgREST's ``authenticator`` and ``anon`` on a
plain PostgreSQL): that alters nothing the target had. Other roles the target
already has are left as they are unless ``replace`` (``--force-db``): then their
attributes are reset to the backup's.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from drkit.sources.pgtokens import GlobalsRefused, Token, tokenize

RESERVED_ROLES = frozenset(
    (
        "postgres",
        "anon",
        "authenticated",
        "authenticator",
        "dashboard_user",
        "pgbouncer",
        "service_role",
        "supabase_admin",
        "supabase_auth_admin",
        "supabase_functions_admin",
        "supabase_read_only_user",
        "supabase_realtime_admin",
        "supabase_replication_admin",
        "supabase_storage_admin",
        "supabase_etl_admin",
        "supabase_privileged_role",
        "pgsodium_keyholder",
        "pgsodium_keyiduser",
        "pgsodium_keymaker",
        "pgtle_admin",
    )
)

# The target's own roles, never altered: its bootstrap superuser, the connecting role.
OWN_ROLES_SQL = "SELECT rolname FROM pg_roles WHERE oid = 10 UNION SELECT current_user;"

# Role specifications that are not names: they would alter whoever connects.
_NOT_NAMES = frozenset(("current_user", "current_role", "session_user", "public", "none", "all"))
_ATTRIBUTES = frozenset(
    (
        "superuser",
        "nosuperuser",
        "createdb",
        "nocreatedb",
        "createrole",
        "nocreaterole",
        "inherit",
        "noinherit",
        "login",
        "nologin",
        "replication",
        "noreplication",
        "bypassrls",
        "nobypassrls",
    )
)
# pg_dumpall's header settings: dropped (the rebuilt SQL needs none of them).
_HEADER_SETTINGS = {
    "default_transaction_read_only": None,
    "client_encoding": None,
    "standard_conforming_strings": "on",  # the strings were read that way
}


@dataclass(frozen=True)
class RoleStatement:
    """One accepted statement: ``kind`` create | alter | comment | grant | header."""

    kind: str
    line: int
    sql: str
    roles: tuple[str, ...] = ()  # create/alter/comment: the role; grant: the members
    granted: tuple[str, ...] = ()  # grant: the roles granted


class _Reader:
    """Walks one statement's tokens (its ``;`` excluded)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.line = tokens[0].line

    def peek(self, *words: str) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i].word in words

    def expect(self, *words: str) -> str:
        if not self.peek(*words):
            if self.done():
                raise GlobalsRefused(self.line, f"{self.head()} ends too early")
            found = self.tokens[self.i]
            what = found.text.upper() if found.kind == "word" else repr(found.text)
            raise GlobalsRefused(self.line, f"{what} is not accepted in {self.head()}")
        self.i += 1
        return self.tokens[self.i - 1].word

    def name(self) -> str:
        """A role (or database, setting) name: quoted, or a plain word folded to lower case."""
        if self.i >= len(self.tokens):
            raise GlobalsRefused(self.line, f"a name is missing in {self.head()}")
        tok = self.tokens[self.i]
        if tok.kind == "word" and tok.word not in _NOT_NAMES:
            self.i += 1
            return tok.word
        if tok.kind == "ident":
            self.i += 1
            return tok.text
        raise GlobalsRefused(self.line, f"{tok.text!r} is not a role name drkit restores")

    def take(self, kind: str) -> Token:
        if self.i >= len(self.tokens) or self.tokens[self.i].kind != kind:
            raise GlobalsRefused(self.line, f"expected a {kind} in {self.head()}")
        self.i += 1
        return self.tokens[self.i - 1]

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def head(self) -> str:
        """The statement's first keywords, for messages (never a literal: passwords)."""
        words = [t.text.upper() for t in self.tokens[:2] if t.kind == "word"]
        return " ".join(words) or "a statement"

    def sql(self) -> str:
        out = ""
        for k, tok in enumerate(self.tokens):
            glued = tok.text in (",", ".") or (k > 0 and self.tokens[k - 1].text in (".", "-"))
            out += ("" if glued or not out else " ") + tok.sql()
        return out + ";"


def parse(text: str) -> list[RoleStatement]:
    """Every statement of ``text``, checked; raises GlobalsRefused at the first other."""
    statements: list[RoleStatement] = []
    current: list[Token] = []
    for tok in tokenize(text):
        if tok.kind == "punct" and tok.text == ";":
            if current:
                statements.append(_statement(_Reader(current)))
            current = []
        else:
            current.append(tok)
    if current:
        raise GlobalsRefused(current[0].line, "a statement does not end with ;")
    return statements


def _statement(r: _Reader) -> RoleStatement:
    if not r.peek("create", "alter", "grant", "comment", "set"):
        head = r.tokens[0]
        what = head.text.upper() if head.kind == "word" else repr(head.text)
        raise GlobalsRefused(r.line, f"{what} is not a role statement")
    first = r.expect("create", "alter", "grant", "comment", "set")
    if first == "set":
        return _header(r)
    if first == "grant":
        return _grant(r)
    if first == "comment":
        r.expect("on")
        r.expect("role")
        role = r.name()
        r.expect("is")
        if r.peek("null"):
            r.i += 1
        else:
            r.take("string")
        _end(r)
        return RoleStatement("comment", r.line, r.sql(), (role,))
    r.expect("role", "user")
    role = r.name()
    if first == "alter" and r.peek("set", "reset", "in"):
        _settings(r)
    else:
        _attributes(r)
    return RoleStatement(first, r.line, r.sql(), (role,))


def _header(r: _Reader) -> RoleStatement:
    setting = r.name()
    if setting not in _HEADER_SETTINGS:
        raise GlobalsRefused(r.line, f"SET {setting} is not a role statement")
    if r.peek("to"):
        r.i += 1
    elif r.take("punct").text != "=":
        raise GlobalsRefused(r.line, f"expected TO or = in {r.head()}")
    value = None if r.done() else r.tokens[r.i]
    r.i += 1
    _end(r)
    wanted = _HEADER_SETTINGS[setting]
    if wanted is not None and (value is None or value.text.lower() != wanted):
        raise GlobalsRefused(r.line, f"SET {setting} must be {wanted}")
    return RoleStatement("header", r.line, "")


def _attributes(r: _Reader) -> None:
    # Not IN ROLE, ROLE, ADMIN or USER: those change other roles' memberships, which
    # only GRANT may do (and its roles are checked).
    if r.peek("with"):
        r.i += 1
    while not r.done():
        word = r.expect(*_ATTRIBUTES, "connection", "encrypted", "password", "valid")
        if word == "connection":
            r.expect("limit")
            if r.i < len(r.tokens) and r.tokens[r.i].text == "-":
                r.i += 1
            r.take("number")
        elif word in ("encrypted", "password"):
            if word == "encrypted":
                r.expect("password")
            if r.peek("null"):
                r.i += 1
            else:
                r.take("string")
        elif word == "valid":
            r.expect("until")
            r.take("string")


def _settings(r: _Reader) -> None:
    if r.peek("in"):
        r.i += 1
        r.expect("database")
        r.name()
    if r.expect("set", "reset") == "reset":
        if r.peek("all"):
            r.i += 1
        else:
            _setting_name(r)
        _end(r)
        return
    _setting_name(r)
    if r.peek("to"):
        r.i += 1
    else:
        tok = r.take("punct")
        if tok.text != "=":
            raise GlobalsRefused(r.line, f"expected TO or = in {r.head()}")
    if r.peek("from"):
        raise GlobalsRefused(r.line, "SET ... FROM CURRENT is not restored")
    while not r.done():  # values: literals, names, numbers and , - .
        tok = r.tokens[r.i]
        if tok.kind == "punct" and tok.text not in (",", "-", "."):
            raise GlobalsRefused(r.line, f"unexpected {tok.text!r} in {r.head()}")
        r.i += 1


def _setting_name(r: _Reader) -> None:
    r.name()
    while r.i < len(r.tokens) and r.tokens[r.i].text == ".":
        r.i += 1
        r.name()


def _grant(r: _Reader) -> RoleStatement:
    granted = [r.name()]
    while r.i < len(r.tokens) and r.tokens[r.i].text == ",":
        r.i += 1
        granted.append(r.name())
    if not r.peek("to"):
        # GRANT ... ON ...: a privilege, not a role membership.
        raise GlobalsRefused(r.line, "GRANT of a privilege, not of a role")
    r.i += 1
    members = [r.name()]
    while r.i < len(r.tokens) and r.tokens[r.i].text == ",":
        r.i += 1
        members.append(r.name())
    if r.peek("with"):  # WITH ADMIN OPTION | WITH {ADMIN|INHERIT|SET} {TRUE|FALSE|OPTION}, ...
        r.i += 1
        while True:
            r.expect("admin", "inherit", "set")
            r.expect("option", "true", "false")
            if not (r.i < len(r.tokens) and r.tokens[r.i].text == ","):
                break
            r.i += 1
    if r.peek("granted"):
        r.i += 1
        r.expect("by")
        r.name()
    _end(r)
    return RoleStatement("grant", r.line, r.sql(), tuple(members), tuple(granted))


def _end(r: _Reader) -> None:
    if not r.done():
        raise GlobalsRefused(r.line, f"unexpected {r.tokens[r.i].text!r} in {r.head()}")


def protected_roles(existing: Collection[str], own: Collection[str]) -> set[str]:
    """The target's roles a restore never alters: ``own`` (its bootstrap superuser, the
    connecting role) and, among the roles it has (``existing``), the reserved ones."""
    return {r for r in existing if r in RESERVED_ROLES or r.startswith("pg_")} | set(own)


def is_protected(role: str, protected: Collection[str]) -> bool:
    """Whether a restore must leave ``role`` as it is on the target, whatever the backup
    says (``pg_*`` are all predefined: the target has them, and creating one fails)."""
    return role in protected or role.startswith("pg_")


@dataclass
class RolePlan:
    """What a restore of the roles applies: ``sql`` for psql, and what it did with whom."""

    sql: str
    created: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)  # on the target already: left as they are
    protected: set[str] = field(default_factory=set)  # never altered: their statements skipped


def plan_roles(text: str, existing: set[str], own: set[str], *, replace: bool) -> RolePlan:
    """The role statements of ``text`` to apply on a target that has roles ``existing``.

    ``own``: the target's bootstrap superuser and connecting role; they and the
    reserved roles the target has are never altered (``protected_roles``).
    Without ``replace``, statements altering another existing role are left
    out; with it, only their CREATE (the ALTER then resets attributes to the
    backup's). Raises GlobalsRefused naming the first line that is not a role
    statement.
    """
    protected = protected_roles(existing, own)
    plan = RolePlan("")
    out = ["SET client_encoding = 'UTF8';"]
    for st in parse(text):
        if st.kind == "header":
            continue
        # A membership alters its member; granting a protected role (other than a pg_*
        # predefined one) would hand out the target's own powers.
        touched = [*st.roles, *(g for g in st.granted if not g.startswith("pg_"))]
        hit = {role for role in touched if is_protected(role, protected)}
        if hit:
            plan.protected |= hit
            continue
        old = {role for role in st.roles if role in existing}
        if st.kind == "create":
            if old:
                plan.kept |= old
                continue
            plan.created.update(st.roles)
        elif old and not replace:
            plan.kept |= old
            continue
        out.append(st.sql)
    plan.sql = "\n".join(out) + "\n"
    return plan


class RoleCollector:
    """Collects role names from pg_dumpall output as it streams past (for facts)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self._tail = (self._tail + chunk).split(b"\n")
        for raw in lines:
            m = _CREATE_ROLE.match(raw.decode("utf-8", "replace"))
            if m:
                self.names.add(_unquote(m.group(1)))


_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)[ ;]')


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident
