"""``pm2``: the PM2 process list (``dump.pm2``) and the ecosystem files.

Backup: ``pm2 save`` as the daemon's owner (``PM2_HOME`` honoured), then a
tar of ``dump.pm2``, ``conf.js`` / ``module_conf.json`` when present, and the
policy's ecosystem files. ``dump.pm2`` holds every app's whole environment in
plaintext: it travels only inside the encrypted artifact. Facts keep each
app's name, namespace, cwd, script, interpreter and mode, parsed from the tar
stream, and never an environment value.

A daemon that is not running is not started (``pm2 save`` would spawn an
empty one): the last saved ``dump.pm2`` is backed up and the facts say so.

Restore: the files go back with their owners, then ``pm2 resurrect`` as the
owner, and the report says which apps came online. A restore cannot bring
back app code: a script path missing on the target is reported (a ``warn``
check), not fatal. The plan tells apart a script that an earlier step of the
same restore brings back (``incoming``, set by the executor) from one that is
in no step: the latter is the finding. The check after the restore asks
``pm2 jlist`` again: each app online passes; an app whose script exists but
is not online fails, except one that was stopped at backup time (resurrect
keeps it stopped).

"Online" only means pm2 started the process. So the backup also records, per
app, the TCP ports its processes listen on (``listen``, read from ``/proc`` by
``listening.SCRIPT``: no iproute2 needed), and the check after the restore
waits (up to ``LISTEN_WAIT``) until each of those ports listens on the target
again: an app online but not listening on its port fails, naming the port.
Ports that cannot be read at backup (no ``/proc``, another user's processes)
are left out with a note (``listen_notes``), never failing the backup.

The facts also keep the installed pm2's version (read from its package.json:
``pm2 -v`` would spawn a daemon). A target where ``pm2_bin`` is not found for
the owner blocks the plan, naming the package to install: found only at
``pm2 resurrect``, the earlier steps would already have run.

What a dump and ``pm2 jlist`` say (parsing, what a deploy changed, the check's
verdicts) is drkit.sources.pm2_state, without I/O. This module stays at ~600
lines on purpose: it is one source class whose backup (a dump taken consistent
while deploys run) and restore (resurrect, then wait for apps and ports) share
the owner, PM2_HOME and pm2 binary handling; splitting the class would scatter
that over modules that each need all of it.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from drkit.errors import DrkitError, RestoreError, SourceError
from drkit.policy.models import Pm2Config
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    StepPlan,
    differs_from_policy,
)
from drkit.sources.listening import SCRIPT as LISTENING
from drkit.sources.listening import ProcNet, app_ports, parse, port_list
from drkit.sources.pm2_state import (
    APP_FIELDS,
    LISTEN_WAIT,
    app_facts,
    apps_of,
    backup_states,
    describe_states,
    dump_entries,
    dump_identity,
    ecosystem_warnings,
    judge,
    listen_ports,
    listen_verdict,
    process_states,
    running_apps,
)
from drkit.sources.staging import PREFIX as STAGING_PREFIX
from drkit.sources.tarball import TarSource, TarStream
from drkit.sources.tarscan import TarScanner

DUMP = "dump.pm2"
OPTIONAL = ("conf.js", "module_conf.json")
DUMP_LIMIT = 32 << 20  # a dump with many apps and large environments is still small
ONLINE_WAIT = 20.0  # seconds for resurrected apps to come online
SETTLE = 1.0  # an app that crashes on start shows "online" between restarts
LISTEN_POLL = 0.5
# A deploy (pm2 reload/restart/start/delete/save) may run while the dump is taken: the
# process list is read before `pm2 save` and after the dump was copied and the ports
# read, and only an unchanged list whose dump agrees with it is kept. So many tries,
# waiting RETRY_WAIT * n seconds before the n-th try, before the source fails.
ATTEMPTS = 6
RETRY_WAIT = 1.0

# Exit 0 when the daemon of this PM2_HOME runs (as the owner, kill -0 is allowed).
_ALIVE = 'p=$(cat "$1/pm2.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null'
# Prints the version of the pm2 package behind the command "$1" (its package.json):
# `pm2 -v` would spawn a daemon for a PM2_HOME that has none.
_VERSION = (
    'p=$(command -v "$1") && d=$(dirname "$(readlink -f "$p")") && '
    'sed -n \'s/^ *"version": *"\\([^"]*\\)".*/\\1/p\' "$d/../package.json" | head -n 1'
)
# Prints, NUL-separated, the arguments that exist.
_EXISTING = 'for f; do [ -e "$f" ] && printf "%s\\0" "$f"; done; true'
# Prints, NUL-separated, the arguments that do not exist (or the user cannot see).
_MISSING = 'for f; do [ -e "$f" ] || printf "%s\\0" "$f"; done; true'
# $1 private directory, $2 dump.pm2, $3 its path relative to /: a copy of the dump as it
# is now (mode, times and owner kept), which the artifact's tar then reads. Directories
# 0711: whoever could read the dump may read the copy, nobody can list them.
_COPY_PREFIX = ".drkit-dump-"
_COPY = 'umask 066 && mkdir -- "$1" && mkdir -p -- "$1/$(dirname -- "$3")" && cp -p -- "$2" "$1/$3"'


@dataclass
class Taken:
    """A dump taken while nothing changed: its private copy (the directory and the dump's
    path in it), its apps' facts, their listening ports and notes on them."""

    copy: str
    dump: str
    tried: list[str] = field(default_factory=list)  # what changed, per try thrown away
    restarting: list[str] = field(default_factory=list)  # apps restarting at every try
    apps: list[dict[str, Any]] = field(default_factory=list)
    ports: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


class Pm2Source(TarSource):
    kind = "pm2"
    config: Pm2Config
    ARTIFACT = "pm2.tar"
    content_limit = DUMP_LIMIT
    keep_content = True

    def __init__(self, name: str, config: Pm2Config, runner: Any) -> None:
        super().__init__(name, config, runner)
        # Paths that earlier steps of the same restore write (path -> "step N (source)"),
        # set by the restore executor before describe(): app code arriving there is no finding.
        self.incoming: dict[str, str] = {}

    @property
    def pm2_bin(self) -> str:
        # `pm2_bin` is a requested policy field (pm2 under nvm is not on a
        # non-interactive PATH); until it exists, pm2 is looked up on PATH.
        return str(getattr(self.config, "pm2_bin", None) or "pm2")

    def pm2_argv(self, home: str, *args: str) -> list[str]:
        # PM2_HOME goes in argv through env(1): it is not secret, and sudo may
        # refuse --preserve-env where env(1) always works. -C /: under sudo the
        # command inherits the login user's cwd, which the app user may not be
        # allowed to enter; node's spawn then fails with EACCES (and a daemon
        # started here would keep that cwd).
        return ["env", "-C", "/", f"PM2_HOME={home}", self.pm2_bin, *args]

    def pm2_home(self) -> str:
        """The policy's ``pm2_home``, else ``~user/.pm2`` from the host's passwd."""
        if self.config.pm2_home:
            return posixpath.normpath(self.config.pm2_home)
        out = self.runner.run(["getent", "passwd", self.config.user])
        fields = out.stdout.decode("utf-8", "replace").strip().split(":")
        if out.returncode != 0 or len(fields) < 6 or not fields[5]:
            raise SourceError(f"{self.label}: user {self.config.user} does not exist on the host")
        return posixpath.join(fields[5], ".pm2")

    def policy_paths(self) -> list[str]:
        home = self.pm2_home()
        return [*(posixpath.join(home, n) for n in (DUMP, *OPTIONAL)), *self.config.ecosystem]

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        home = self.pm2_home()
        dump = posixpath.join(home, DUMP)
        self._taken: Taken | None = None
        note = self._not_running(home)
        if not note:
            self._taken = self._take(home)
            if self._taken is None:
                note = f"the PM2 daemon (PM2_HOME={home}) manages no process, pm2 save skipped"
        taken = self._taken
        try:
            present = self._existing([dump, *(posixpath.join(home, n) for n in OPTIONAL)])
            if taken is not None and dump not in present:
                present.insert(0, dump)  # the private copy holds it
            if dump not in present:
                raise SourceError(f"{self.label}: {note}, and there is no {dump} to back up")
            yield from self.tar_artifacts([*present, *self.config.ecosystem], [])
        finally:
            if taken is not None:
                self._remove(taken.copy)
        facts = self.listing_facts()
        try:
            apps = self._apps(dump)
            warnings = ecosystem_warnings(self._scanner.members, self.config.ecosystem)
        finally:
            for member in self._scanner.members:
                member.content = None  # environment values must not outlive the scan
        facts.update(
            user=self.config.user,
            pm2_home=home,
            saved=taken is not None,
            ecosystem=list(self.config.ecosystem),
            ecosystem_warnings=warnings,
            apps=apps,
            listen_notes=[],
        )
        if taken is None:
            facts["save_skipped"] = note
        else:
            # Ports of the same moment as the dump (see _take): only of its apps.
            for app in apps:
                found = taken.ports.get(str(app.get("name")))
                if found is not None:
                    app["listen"] = found
            facts["listen_notes"] = taken.notes
            facts["dump_tries"] = len(taken.tried) + 1
            notes = list(facts.get("warnings", []))
            if taken.tried:
                facts["dump_retried"] = taken.tried
            if taken.restarting:
                facts["restarting"] = taken.restarting
                notes.append(
                    f"app(s) {', '.join(taken.restarting)} restarted at each of the "
                    f"{ATTEMPTS} looks at the process list (a crash loop?): the dump is kept, "
                    "their listening ports are not recorded"
                )
            elif taken.tried:
                notes.append(
                    f"the PM2 process list changed while its dump was taken ({taken.tried[-1]}): "
                    f"taken again, unchanged at try {len(taken.tried) + 1}"
                )
            notes += [
                f"app {name}: script {script} does not exist on the host at backup time: "
                "a restore cannot start it"
                for name, script in taken.missing.items()
            ]
            if notes:
                facts["warnings"] = notes
        version = self._version()
        if version:
            facts["pm2_version"] = version  # what to install on a fresh host
        self.facts.update(facts)

    def _not_running(self, home: str) -> str:
        """Why ``pm2 save`` cannot run (no daemon: it would spawn an empty one), or ""."""
        alive = self.runner.run(["sh", "-c", _ALIVE, "sh", home], user=self.config.user)
        if alive.returncode != 0:
            return f"the PM2 daemon of {self.config.user} (PM2_HOME={home}) is not running"
        return ""

    def _save(self, home: str) -> bool:
        """Run ``pm2 save``; False when the daemon manages no process (nothing saved)."""
        out = self.runner.check(
            self.pm2_argv(home, "save"),
            what=f"{self.label}: pm2 save as {self.config.user}",
            user=self.config.user,
        )
        return b"not managing any process" not in out

    def _take(self, home: str) -> Taken | None:
        """``pm2 save`` and a private copy of the dump, taken while the process list did
        not change (a deploy may be reloading, starting, deleting apps and saving): the
        list is read before the save and again after the copy and the ports were read,
        and the copy is kept only when both lists are the same processes (pid, start
        time, restarts, status) and the dump lists exactly those. Otherwise it is taken
        again, up to ATTEMPTS times, then the source fails naming what kept changing.
        None when the daemon manages no process (nothing saved)."""
        dump = posixpath.join(home, DUMP)
        # Copies a killed run left (they hold the environments, like the dump beside them).
        self._remove(home, stale=True)
        tried: list[str] = []
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_WAIT * attempt)
            before = self._states(home)
            if not self._save(home):
                return None
            taken = Taken(posixpath.join(home, _COPY_PREFIX + secrets.token_hex(8)), dump)
            try:
                changes, restarting = self._examine(home, taken, before)
            except BaseException:
                self._remove(taken.copy)
                raise
            # An app that restarts by itself all along (a crash loop) is no deploy: on the
            # last try a dump whose apps are the running ones is kept, without their ports.
            if not changes or (restarting and attempt == ATTEMPTS - 1):
                for name in restarting:
                    taken.ports.pop(name, None)
                taken.restarting, taken.tried = restarting, tried
                return taken
            self._remove(taken.copy)
            tried.append("; ".join(changes))
        raise SourceError(
            f"{self.label}: the PM2 process list kept changing while its dump was taken "
            f"({ATTEMPTS} tries): {tried[-1]}; no consistent dump, nothing stored for it: "
            "back up again once the deploy is over"
        )

    def _examine(
        self, home: str, taken: Taken, before: list[dict[str, Any]]
    ) -> tuple[list[str], list[str]]:
        """Copy the dump, read its apps and their ports; what changed since ``before``,
        and the apps that only restarted when that is all (see ``judge``)."""
        rel = taken.dump.lstrip("/")
        self.runner.check(
            ["sh", "-c", _COPY, "sh", taken.copy, taken.dump, rel],
            what=f"{self.label}: copying {taken.dump}",
            user=self.copier,
        )
        content = self.runner.check(
            ["cat", "--", posixpath.join(taken.copy, rel)],
            what=f"{self.label}: reading {taken.dump}",
            user=self.copier,
        )
        try:
            entries = dump_entries(content, f"{self.label}: {taken.dump}")
        except SourceError:
            return [f"{taken.dump} was being written (not a whole pm2 process list)"], []
        del content
        identity = Counter(dump_identity(e) for e in entries if not e.get("pmx_module"))
        taken.apps = [{out: e.get(key) for key, out in APP_FIELDS.items()} for e in entries]
        del entries  # environment values
        running = running_apps(before)
        try:
            taken.ports, notes = app_ports(self._probe(running), running)
        except DrkitError as exc:
            notes = [str(exc)]
        taken.notes = [f"listening ports not recorded: {n}" for n in notes]
        taken.missing = self._missing_scripts({"apps": taken.apps})
        after = self._states(home)
        return judge(before, after, identity, taken.dump)

    def _states(self, home: str) -> list[dict[str, Any]]:
        try:
            return self._jlist(home, self.config.user)
        except RestoreError as exc:  # process_states' error: here it is a backup's
            raise SourceError(str(exc)) from None

    @property
    def copier(self) -> str:
        """Who copies the dump into PM2_HOME: ``sudo_user`` (root, usually), else the
        daemon's owner (the login user may not write there)."""
        return self.run_as or self.config.user

    def _remove(self, path: str, stale: bool = False) -> None:
        """Best effort: ``rm -rf`` of a private copy (``stale``: of every one in the
        PM2_HOME ``path``)."""
        script = (
            f'for p in "$1"/{_COPY_PREFIX}*; do rm -rf -- "$p"; done' if stale else 'rm -rf -- "$1"'
        )
        self.runner.run(["sh", "-c", script, "sh", path], user=self.copier)

    def tar_artifact(
        self, paths: list[str], exclude: list[str], name: str | None = None
    ) -> Artifact:
        """As TarSource's, except that ``dump.pm2`` is read from the private copy (stored
        under its own path, with its mode, times and owner)."""
        taken = self._taken
        if taken is None or taken.dump not in paths:
            return super().tar_artifact(paths, exclude, name)
        scanner = TarScanner(keep_content=True, content_limit=self.content_limit)
        others = [f"--add-file={p.lstrip('/')}" for p in paths if p != taken.dump]
        argv = [
            "tar",
            "-c",
            "-f",
            "-",
            *(f"--exclude={e}" for e in exclude),
            f"--exclude={STAGING_PREFIX}*",
            "-C",
            taken.copy,
            f"--add-file={taken.dump.lstrip('/')}",
            "-C",
            "/",
            *others,
        ]

        def opener() -> Any:
            log = f"/tmp/.drkit-tar-{secrets.token_hex(8)}.log"  # noqa: S108 (64 random bits)
            self._tar = TarStream(self, argv, log)
            return self._tar

        self._scanner = scanner
        return Artifact(name or self.ARTIFACT, opener, scanner.feed)

    def _version(self) -> str | None:
        """The installed pm2's version as the owner sees it, or None (best effort)."""
        out = self.runner.run(["sh", "-c", _VERSION, "sh", self.pm2_bin], user=self.config.user)
        text = out.stdout.decode("utf-8", "replace").strip()
        return text if out.returncode == 0 and re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", text) else None

    def _existing(self, paths: list[str]) -> list[str]:
        out = self.runner.check(
            ["sh", "-c", _EXISTING, "sh", *paths],
            what=f"{self.label}: listing PM2 files",
            user=self.run_as,
        )
        found = {p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p}
        return [p for p in paths if p in found]

    def _probe(self, running: dict[str, list[tuple[int, bool]]]) -> ProcNet:
        """Listening sockets on the host and the open sockets of these apps' processes,
        read from /proc as the daemon's owner (who may read its own processes' fds)."""
        pids = sorted({str(pid) for procs in running.values() for pid, _ in procs})
        out = self.runner.run(["sh", "-c", LISTENING, "sh", *pids], user=self.config.user)
        return parse(out.stdout) if out.returncode == 0 else ProcNet()

    def _apps(self, dump: str) -> list[dict[str, Any]]:
        member = next((m for m in self._scanner.members if m.path == dump), None)
        if member is None or member.content is None:
            raise SourceError(f"{self.label}: {dump} was not read from the tar stream")
        return app_facts(member.content, f"{self.label}: {dump}")

    # ---- restore ------------------------------------------------------
    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        base = super().describe(facts, opts)
        want = {"user": self.config.user, "pm2_home": self.pm2_home()}
        actions = [*base.actions, *differs_from_policy(facts, want)]
        if (opts.dest or "/") != "/":
            actions.append(f"pm2 resurrect not run: files go under {opts.dest}")
            return StepPlan(actions, base.blocked)
        user, home = self.config.user, self._restore_home(facts)
        # Found only at `pm2 resurrect`, exit 127 would come after the earlier steps
        # (databases, files) already ran: refuse the whole plan up front instead.
        blocked = base.blocked or self._pm2_missing(facts)
        states = backup_states(facts)
        start = [name for name, state in states.items() if state != "stopped"]
        line = f"pm2 resurrect as {user} (PM2_HOME={home}): start {', '.join(start) or 'no app'}"
        kept = [name for name in states if name not in start]
        if kept:
            line += f"; {', '.join(kept)} stay(s) stopped, as at backup time"
        actions.append(line)
        listen = listen_ports(facts)
        if listen:
            apps = ", ".join(f"{name} {port_list(ports)}" for name, ports in listen.items())
            actions.append(
                f"then check that each app listens again on its ports of backup time "
                f"(up to {LISTEN_WAIT:g}s): {apps}"
            )
        try:
            missing = self._missing_scripts(facts)
        except DrkitError as exc:
            actions.append(f"cannot check the apps' scripts as {user}: {exc}")
            missing = {}
        for name, script in missing.items():
            step = self.incoming.get(posixpath.normpath(script))
            if step:
                actions.append(f"app {name}: script {script} comes back in {step}")
            else:
                actions.append(
                    f"app {name}: script {script} is neither on the target nor in this "
                    "restore: PM2 cannot start it (restore the app's code)"
                )
        return StepPlan(actions, blocked)

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        report = super().restore(feed, facts, opts)
        if (opts.dest or "/") != "/":
            report.actions.append(
                f"pm2 resurrect not run: the files are under {opts.dest}, and the apps' paths "
                "are absolute; restore without --dest to start them"
            )
            return report
        user, home = self.config.user, self._restore_home(facts)
        # tar creates a missing PM2_HOME as root; the daemon must own it to write pids/logs.
        self.runner.check(
            ["chown", f"{user}:", "--", home], what=f"{self.label}: restore", user=self.run_as
        )
        missing = self._missing_scripts(facts)
        for name, script in missing.items():
            report.actions.append(
                f"app {name}: script {script} does not exist on the target (or {user} cannot "
                "read it): restore the app's code, then pm2 restart it"
            )
        self.runner.check(
            self.pm2_argv(home, "resurrect"),
            what=f"{self.label}: pm2 resurrect as {user}",
            user=user,
        )
        report.actions.append(f"pm2 resurrect as {user} (PM2_HOME={home})")
        expected = [
            str(a.get("name"))
            for a in facts.get("apps", [])
            if a.get("status", "online") == "online" and a.get("name") not in missing
        ]
        states = self._wait_online(home, user, expected)
        for name in apps_of(facts):
            report.actions.append(f"app {name}: {states.get(name, 'not running')}")
        return report

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Files as backed up; each app online (a missing script is a warning; an app
        stopped at backup time passes stopped) and, if it listened on TCP ports at
        backup time, listening on them again."""
        checks = super().check(facts, opts)
        if (opts.dest or "/") != "/":
            return checks
        home = self._restore_home(facts)
        try:
            procs = self._jlist(home, self.config.user)
        except DrkitError as exc:
            return [*checks, Check(self.name, "pm2 apps online", "fail", str(exc))]
        statuses: dict[str, set[str]] = {}
        for p in procs:
            statuses.setdefault(p["name"], set()).add(p["status"])
        missing = self._missing_scripts(facts)
        waiting = {
            name: ports
            for name, ports in listen_ports(facts).items()
            if statuses.get(name) == {"online"} and name not in missing
        }
        net, unread = ProcNet(), ""
        own: dict[str, list[int]] = {}
        if waiting:
            try:
                net, own = self._wait_listening(procs, waiting)
            except DrkitError as exc:
                unread = str(exc)
            if not unread and not net.readable:
                unread = "/proc/net/tcp could not be read on the target"
        for name, at_backup in backup_states(facts).items():
            got = statuses.get(name)
            if name in missing:
                # pm2 shows such an app "online" between failed starts: not a pass.
                detail = f"script {missing[name]} is missing on the target: restore its code"
                checks.append(Check(self.name, f"app {name}", "warn", detail))
            elif got == {"online"} and name in waiting:
                status, detail = listen_verdict(waiting[name], net, own.get(name), unread)
                checks.append(Check(self.name, f"app {name}", status, detail))
            elif got == {"online"}:
                checks.append(Check(self.name, f"app {name}", "pass", "online"))
            elif at_backup == "stopped" and got == {"stopped"}:
                detail = "stopped, as at backup time (pm2 resurrect keeps it so)"
                checks.append(Check(self.name, f"app {name}", "pass", detail))
            else:
                detail = "/".join(sorted(got)) if got else "not running"
                checks.append(Check(self.name, f"app {name}", "fail", detail))
        return checks

    def _pm2_missing(self, facts: dict[str, Any]) -> str | None:
        """Why pm2 cannot run as the owner on the target (``pm2_bin`` not found by
        ``command -v`` as that user, with the PATH sudo gives it), or None if it can."""
        user, pm2 = self.config.user, self.pm2_bin
        found = self.runner.run(["sh", "-c", 'command -v "$1"', "sh", pm2], user=user)
        if found.returncode == 0 and found.stdout.strip():
            return None
        if pm2.startswith("/") and posixpath.normpath(pm2) in self.incoming:
            return None  # an earlier step of this restore brings it (e.g. nvm's tree)
        version = facts.get("pm2_version")
        package = f"pm2@{version}" if isinstance(version, str) and version else "pm2"
        return (
            f"{self.label}: pm2 ({pm2}) is not installed for {user} on the target: install "
            f"it (npm install -g {package}) or set pm2_bin to its path, then restore again"
        )

    def _restore_home(self, facts: dict[str, Any]) -> str:
        return self.pm2_home()

    def _missing_scripts(self, facts: dict[str, Any]) -> dict[str, str]:
        """App name -> script path, for apps whose script the owner cannot see on the target."""
        scripts = {
            str(a["name"]): str(a["script"]) for a in facts.get("apps", []) if a.get("script")
        }
        if not scripts:
            return {}
        out = self.runner.check(
            ["sh", "-c", _MISSING, "sh", *sorted(set(scripts.values()))],
            what=f"{self.label}: checking app scripts",
            user=self.config.user,
        )
        gone = {p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p}
        return {name: script for name, script in scripts.items() if script in gone}

    def _wait_online(self, home: str, user: str, expected: list[str]) -> dict[str, str]:
        """Poll ``pm2 jlist`` until the expected apps are online; each app's state, by name."""
        deadline = time.monotonic() + ONLINE_WAIT
        while True:
            procs = self._jlist(home, user)
            online = {p["name"] for p in procs if p["status"] == "online"}
            if set(expected) <= online or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # An app whose code crashes at start flips between launching and online:
        # a second look after a moment tells by its restart count.
        time.sleep(SETTLE)
        later = self._jlist(home, user)
        return describe_states(procs, later)

    def _wait_listening(
        self, procs: list[dict[str, Any]], waiting: dict[str, list[int]]
    ) -> tuple[ProcNet, dict[str, list[int]]]:
        """Poll /proc until every port in ``waiting`` listens (any process) or
        LISTEN_WAIT passed; the last look, and the ports each app's own processes
        listen on (an app whose processes could not be read, e.g. restarted since
        ``procs`` was taken, is not in it)."""
        running = {n: p for n, p in running_apps(procs).items() if n in waiting}
        want = {port for ports in waiting.values() for port in ports}
        deadline = time.monotonic() + LISTEN_WAIT
        while True:
            net = self._probe(running)
            if not net.readable or want <= net.ports() or time.monotonic() > deadline:
                break
            time.sleep(LISTEN_POLL)
        own, _ = app_ports(net, running)
        return net, own

    def _jlist(self, home: str, user: str) -> list[dict[str, Any]]:
        out = self.runner.check(
            self.pm2_argv(home, "jlist"), what=f"{self.label}: pm2 jlist as {user}", user=user
        )
        return process_states(out, self.label)
