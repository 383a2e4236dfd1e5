"""``command`` sources get secrets by reference, in their environment (issue 16).

The value reaches the command (backup and restore) and nothing drkit writes:
not stdout, stderr or ``--json``, not the catalog or anything else in the state
directory, not the repository, not a notification, even when the command
prints it to its stderr and fails.
"""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

from tests.conftest import Keys
from tests.e2e.test_ops_notify import PING, TOPIC, Receiver, receiver, secrets_env
from tests.helpers import CliResult, drkit, write_policy

__all__ = ["receiver"]  # the fixture, used by name


def command_policy(
    tmp_path: Path, host: str, keys: Keys, command: list[str], restore: list[str]
) -> Path:
    notify = (
        'notify = { healthchecks = "env:T_HC", ntfy = "env:T_NTFY", ntfy_token = "env:T_TOK", '
        'webhook = "env:T_HOOK", ntfy_events = ["success", "fail"], timeout = "5s" }'
    )
    source = {
        "kind": "command",
        "name": "api-export",
        "command": command,
        "restore_command": restore,
    }
    path = write_policy(
        tmp_path / f"{host}.toml",
        host,
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [source],
        extra=notify,
    )
    # The source is the file's last table: its env (an inline table) goes at the end.
    path.write_text(path.read_text() + 'env = { API_TOKEN = "env:T_API_TOKEN" }\n')
    return path


def files_under(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def test_command_secret_by_reference_reaches_the_command_and_no_output(
    tmp_path: Path, keys: Keys, receiver: Receiver, drkit_home: Path
) -> None:
    token = f"tok_{secrets.token_hex(12)}"
    env = {**secrets_env(receiver), "T_API_TOKEN": token}
    seen, seen_restore, restored = (tmp_path / n for n in ("seen", "seen-restore", "restored"))
    good = command_policy(
        tmp_path,
        "exporter",
        keys,
        ["sh", "-c", f'printf %s "$API_TOKEN" > {seen}; echo exported'],
        ["sh", "-c", f'cat > {restored}; printf %s "$API_TOKEN" > {seen_restore}'],
    )
    # A command that prints its secret on stderr and fails: its tail reaches the error.
    leaky = command_policy(
        tmp_path,
        "leaky",
        keys,
        ["sh", "-c", 'echo "curl: (22) 401 with Authorization: Bearer $API_TOKEN" >&2; exit 22'],
        ["cat"],
    )
    ident = ["--identity", str(keys.identity_file)]
    runs: list[CliResult] = [
        drkit("backup", "--policy", str(good), "--json", env=env),
        drkit("restore", "--yes", "--policy", str(good), *ident, "--json", env=env),
        drkit("backup", "--policy", str(leaky), "--json", env=env),
        drkit("backup", "--policy", str(leaky), env=env),
        drkit("status", "--policy", str(leaky), "--json", env=env),
    ]
    assert [r.returncode for r in runs[:3]] == [0, 0, 1], [r.output for r in runs]
    # The secret reached the command, on backup and on restore, through its environment.
    assert seen.read_text() == token and seen_restore.read_text() == token
    assert restored.read_text() == "exported\n"
    failed = json.loads(runs[2].stdout)["results"][0]
    assert "leaky" in failed["error"] and "Bearer ***" in failed["error"]
    assert "Bearer ***" in runs[3].stderr

    # ... and nothing drkit wrote holds it.
    for res in runs:
        assert token not in res.output
    hits = receiver.to(f"/{PING}/fail") + receiver.to(f"/{TOPIC}") + receiver.to("/hook")
    assert any(b"Bearer ***" in h.body for h in hits)  # the failure was told, scrubbed
    for hit in receiver.hits:
        assert (
            token not in f"{hit.path} {hit.query} {hit.headers}" and token.encode() not in hit.body
        )
    state = drkit_home / "state"
    written = files_under(state, tmp_path / "repo")
    assert state / "catalog.sqlite" in written
    assert [p for p, data in written.items() if token.encode() in data] == []
    # The state directory is its owner's only, the catalog too.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "catalog.sqlite").stat().st_mode) == 0o600
