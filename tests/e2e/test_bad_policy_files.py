"""Policy and drill files that cannot be used: one clear error naming the file, exit 2,
never a traceback (issue 23, item 6).

Every shipped command that reads policies is run (the real CLI, in subprocesses)
against a policy directory holding a policy that is not UTF-8, one that cannot be
read (a directory, a FIFO: tests run as root, so a mode-000 file would still be
read), and none at all. A FIFO used to hang the command waiting for a writer; a
non-UTF-8 file crashed it with a UnicodeDecodeError traceback. Then the same for
drill files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import CliResult, write_policy

HOST = "h1"

# (command after `drkit --policy-dir DIR`): each one reads the policies.
COMMANDS: list[tuple[str, ...]] = [
    ("backup", "--host", HOST),
    ("backup", "--all"),
    ("backup", "--due"),
    ("verify", "--host", HOST),
    ("restore", "--host", HOST, "--plan"),
    ("status",),
    ("snapshots",),
    ("prune", "--host", HOST, "--dry-run"),
    ("drill", "--host", HOST),
    ("drill", "--all"),
    ("policy", "validate"),
    ("catalog", "sync"),
    ("schedule",),
    ("status", "--json"),
]
# Commands given the file itself (--policy FILE, or an argument).
FILE_COMMANDS: list[tuple[str, ...]] = [
    ("backup", "--policy"),
    ("verify", "--policy"),
    ("restore", "--plan", "--policy"),
    ("init", "--policy"),
    ("policy", "validate"),
]

LATIN_1 = 'host = "h1"\n# Zürich\n'.encode("latin-1")


# How the file named like the host is made unusable, and what drkit says about it.
CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "not UTF-8": (lambda p: p.write_bytes(LATIN_1), "not UTF-8 text: byte 0xfc on line 2"),
    "a directory": (Path.mkdir, "cannot read: a directory"),
    "a FIFO": (os.mkfifo, "cannot read: not a regular file"),
}
# A dangling link reads as a missing file, which the no-policy test covers for policies.
DRILL_CASES = {
    **CASES,
    "a dangling link": (
        lambda p: p.symlink_to(p.parent / "gone.toml"),
        "cannot read: No such file or directory",
    ),
}


def make(case: str, directory: Path) -> tuple[Path, str]:
    """``<directory>/h1.toml`` made as ``case`` says; (its path, the expected error)."""
    make_it, problem = DRILL_CASES[case]
    path = directory / f"{HOST}.toml"
    make_it(path)
    return path, f"{path}: {problem}"


def run(*args: str) -> CliResult:
    """The real CLI; a hang (a FIFO read waiting for a writer) fails the test."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "drkit", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DRKIT_NOW": "2026-12-07T03:30:00Z"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"drkit {' '.join(args)} hung")
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_all(argvs: list[tuple[str, ...]]) -> list[CliResult]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda argv: run(*argv), argvs))


def check(argv: tuple[str, ...], res: CliResult, names: str, exit_code: int = 2) -> str | None:
    """None when ``res`` is the documented refusal, else what is wrong with it."""
    line = f"drkit {' '.join(argv)} -> {res.returncode}: {res.stderr.strip()[-600:]!r}"
    if "Traceback" in res.stderr:
        return f"traceback: {line}"
    if res.returncode != exit_code:
        return f"exit {res.returncode}, expected {exit_code}: {line}"
    if names not in res.stderr:
        return f"no {names!r} on stderr: {line}"
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_a_policy_that_cannot_be_read_is_named_by_every_command(case: str, tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    path, message = make(case, directory)
    argvs = [("--policy-dir", str(directory), *c) for c in COMMANDS]
    argvs += [(*c, str(path)) for c in FILE_COMMANDS]
    wrong = []
    for argv, res in zip(argvs, run_all(argvs), strict=True):
        # click refuses a directory given as the file itself, naming it (exit 2).
        clicks = case == "a directory" and argv[0] != "--policy-dir"
        expected = f"'{path}' is a directory" if clicks else message
        wrong.append(check(argv, res, expected))
    assert [w for w in wrong if w] == []


def test_no_policy_at_all_is_a_usage_error_naming_where_drkit_looked(tmp_path: Path) -> None:
    empty = tmp_path / "policies"
    empty.mkdir()
    missing = empty / f"{HOST}.toml"
    argvs = [("--policy-dir", str(empty), *c) for c in COMMANDS if c != ("policy", "validate")]
    argvs += [(*c, str(missing)) for c in FILE_COMMANDS]
    wrong = []
    for argv, res in zip(argvs, run_all(argvs), strict=True):
        named = str(missing) if argv[0] != "--policy-dir" else f"looked in {empty}"
        wrong.append(check(argv, res, named))
    assert [w for w in wrong if w] == []


def test_policy_validate_without_policy_files_is_a_usage_error(tmp_path: Path) -> None:
    empty = tmp_path / "policies"
    empty.mkdir()
    res = run("--policy-dir", str(empty), "policy", "validate")
    assert check(("policy", "validate"), res, f"looked in {empty}") is None


def test_a_policy_backup_would_refuse_is_refused_naming_the_file_and_the_fleet_goes_on(
    tmp_path: Path, keys: object
) -> None:
    """Readable, valid TOML, but naming local files that are not there (a recipients
    file; an SSH identity): every form of backup refuses the host before reading
    anything, exit 2, naming the policy file and the problem, as `policy validate`
    does; in a fleet run the healthy host is backed up and the run is partial (3)."""
    directory = tmp_path / "policies"
    directory.mkdir()
    (tmp_path / "app.env").write_text("A=1\n")
    repo = {"url": (tmp_path / "repo").as_uri()}
    sources = [{"kind": "env", "name": "env", "paths": [f"{tmp_path}/*.env"]}]
    recipient = keys.recipient  # type: ignore[attr-defined]
    write_policy(directory / "good.toml", "good", repo, [recipient], sources)
    no_recipients = write_policy(directory / f"{HOST}.toml", HOST, repo, [recipient], sources)
    missing = tmp_path / "recipients.txt"
    text = re.sub(
        r"^recipients = .*$",
        f'recipients_file = "{missing}"',
        no_recipients.read_text(),
        flags=re.M,
    )
    no_recipients.write_text(text)
    identity = tmp_path / "id_ed25519"
    ssh = '[connection]\ntype = "ssh"\naddress = "127.0.0.1"\n'
    ssh += f'identity_file = "{identity}"\naccept_new_host_key = true'
    no_identity = write_policy(directory / "h2.toml", "h2", repo, [recipient], sources, ssh)
    problems = {
        HOST: f"{no_recipients}: encryption.recipients_file: recipients file {missing}: No such",
        "h2": f"{no_identity}: connection.identity_file: {identity} does not exist",
    }
    d = str(directory)
    cases: list[tuple[tuple[str, ...], str]] = []
    for host, path in ((HOST, no_recipients), ("h2", no_identity)):
        for argv in (
            ("--policy-dir", d, "backup", "--host", host),
            ("--policy-dir", d, "backup", "--due", "--host", host),
            ("backup", "--policy", str(path)),
            ("policy", "validate", str(path)),
        ):
            cases.append((argv, problems[host]))
    results = run_all([argv for argv, _ in cases])
    wrong = [check(argv, res, named) for (argv, named), res in zip(cases, results, strict=True)]
    assert [w for w in wrong if w] == []

    fleet = run("--policy-dir", d, "backup", "--all")
    assert fleet.returncode == 3, fleet.output
    assert problems[HOST] in fleet.stderr and problems["h2"] in fleet.stderr
    assert re.search(r"^good: snapshot ", fleet.stdout, re.M), fleet.stdout
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if p.is_dir()) == ["good"]


@pytest.mark.parametrize("case", list(DRILL_CASES))
def test_a_drill_file_that_cannot_be_read_is_named_before_any_drill(
    case: str, tmp_path: Path, keys: object
) -> None:
    repo = {"url": (tmp_path / "repo").as_uri()}
    sources = [{"kind": "env", "name": "env", "paths": [f"{tmp_path}/*.env"]}]
    recipient = keys.recipient  # type: ignore[attr-defined]
    policy = write_policy(tmp_path / "p.toml", HOST, repo, [recipient], sources)
    drills = tmp_path / "drills"
    drills.mkdir()
    _path, message = make(case, drills)
    argv = ("drill", "--policy", str(policy), "--drills-dir", str(drills))
    res = run(*argv)
    assert check(argv, res, message) is None
    assert "drill files:" not in res.stderr  # refused before anything else happened
