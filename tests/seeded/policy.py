"""The shipped policy of a host, with only its machine-local tables rewritten for a test.

Issue 15 item 4: a seeded scenario backs up with ``policies/<host>.toml``
unchanged except where the file says how *this* machine reaches the host and
the repository. ``shipped_policy()`` rewrites, as text, only the key/value
lines of:

- ``[connection]``: ssh to a container's published port on 127.0.0.1, with
  the test's identity and a known_hosts file pinning the container's key;
- ``[repository]``: a local directory (or the test's S3 bucket);
- ``[encryption]``: the shipped policies read recipients and signers from
  ``/etc/drkit/...`` on the machine that runs drkit. Those files are
  machine-local settings exactly like the connection (which keys this
  machine encrypts to, which signing keys it trusts), not a description of
  the host, so they point at files the test writes: its age recipient and
  this machine's signing key. Anything else in ``[encryption]`` is refused
  here rather than silently replaced.

Every other byte is the shipped file's: comments, top-level keys,
``[retention]`` and every ``[[source]]`` (``assert_only_tables_changed``
checks that block by block, and that the parsed sources are equal).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.helpers import local_signer, toml_value

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
DRILLS = ROOT / "restore_drills"
MACHINE_LOCAL = ("connection", "repository", "encryption")
# A table header line: [name] or [[name]], with an optional trailing comment.
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")


def blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """``text`` cut at each table header: (None, top-level lines), then (name, lines from
    its header to the next one). ``[[source]]`` blocks are named ``[[source]]``."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines(keepends=True):
        m = _HEADER.match(line)
        if m:
            name = m[2] if m[1] == "[" else f"[[{m[2]}]]"
            out.append((name, [line]))
        else:
            out[-1][1].append(line)
    return out


def _content_end(lines: list[str]) -> int:
    """Index after the last line of ``lines`` that is neither blank nor a comment: what
    follows it (the comments introducing the next table) stays with the shipped text."""
    end = 1  # the header
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            end = i + 1
    return end


def _table_lines(name: str, values: Mapping[str, Any]) -> list[str]:
    note = (
        f"# [{name}] rewritten by tests/seeded/policy.py: machine-local settings (how this\n"
        "# machine reaches the host and the repository, which keys it uses), not the host's.\n"
    )
    return [note, *(f"{key} = {toml_value(value)}\n" for key, value in values.items())]


def rewrite_tables(text: str, tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``text`` with the key/value lines (and the comments among them) of each table in
    ``tables`` replaced by its new values; a table the file lacks is added before the
    first table. Everything else is kept byte for byte."""
    parts = blocks(text)
    missing = [name for name in tables if name not in {n for n, _ in parts}]
    out: list[str] = []
    for name, lines in parts:
        if name is None:
            out += lines
            for table in missing:
                out += [f"[{table}]\n", *_table_lines(table, tables[table]), "\n"]
        elif name in tables:
            end = _content_end(lines)
            out += [lines[0], *_table_lines(name, tables[name]), *lines[end:]]
        else:
            out += lines
    return "".join(out)


def assert_only_tables_changed(shipped: str, rewritten: str, tables: list[str]) -> None:
    """Every block of ``shipped`` (top-level lines, ``[retention]``, each ``[[source]]``...)
    is in ``rewritten`` byte for byte and in the same order, but for the key lines of
    ``tables``; and both parse to the same document once ``tables`` are set aside."""

    def kept(text: str) -> list[tuple[str | None, str]]:
        return [
            (name, "".join(lines[_content_end(lines) :] if name in tables else lines))
            for name, lines in blocks(text)
        ]

    before = kept(shipped)
    names = {name for name, _ in before}
    # Tables the shipped file lacked were added as blocks of their own.
    after = [(n, t) for n, t in kept(rewritten) if n in names or n not in tables]
    assert before == after, "the policy changed outside " + ", ".join(tables)
    old, new = tomllib.loads(shipped), tomllib.loads(rewritten)
    for table in tables:
        old.pop(table, None)
        new.pop(table, None)
    assert old == new, "the parsed policy changed outside " + ", ".join(tables)


def encryption_files(directory: Path, host: str, recipient: str) -> dict[str, str]:
    """``[encryption]`` for a test: ``recipients_file`` holding ``recipient`` and
    ``signers_file`` holding this machine's signing key (what ``drkit init`` would have
    put in /etc/drkit/... on a backup machine), both written under ``directory``."""
    recipients = directory / "recipients.txt"
    recipients.write_text(recipient + "\n")
    signers = directory / "signers" / f"{host}.txt"
    signers.parent.mkdir(parents=True, exist_ok=True)
    signers.write_text(local_signer() + "\n")
    return {"recipients_file": str(recipients), "signers_file": str(signers)}


def shipped_policy(
    host: str,
    directory: Path,
    *,
    connection: Mapping[str, Any],
    repository: Mapping[str, Any],
    encryption: Mapping[str, Any],
) -> Path:
    """``policies/<host>.toml`` written to ``directory/<host>.toml`` with only
    ``[connection]``, ``[repository]`` and ``[encryption]`` replaced (see the module doc).

    The shipped ``[encryption]`` must name only files under /etc/drkit/ (machine-local);
    anything else there is a decision for whoever changed the policy, so it fails here.
    """
    shipped = (POLICIES / f"{host}.toml").read_text()
    machine = tomllib.loads(shipped).get("encryption", {})
    local = {
        k: v for k, v in machine.items() if k.endswith("_file") and v.startswith("/etc/drkit/")
    }
    assert local == machine, (
        f"policies/{host}.toml [encryption] is not only /etc/drkit files: {machine}"
    )
    tables = {"connection": connection, "repository": repository, "encryption": encryption}
    text = rewrite_tables(shipped, tables)
    assert_only_tables_changed(shipped, text, list(tables))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{host}.toml"
    path.write_text(text)
    return path


def ssh_connection(
    port: int, identity: Path, known_hosts: Path, user: str = "root"
) -> dict[str, Any]:
    """``[connection]`` for ``ssh user@127.0.0.1:port`` with a pinned host key."""
    return {
        "type": "ssh",
        "address": "127.0.0.1",
        "user": user,
        "port": port,
        "identity_file": str(identity),
        "known_hosts": str(known_hosts),
    }
