"""``redis``: a Redis-protocol server (Redis, Valkey, FalkorDB) on the host or in a container.

Backup: ``redis-cli --rdb -`` (Redis >= 7 clients). The client asks the server for
a replica's initial sync (``REPLCONF rdb-only``): the server forks and serialises
one point-in-time snapshot of every database straight to the connection, and
the client writes it to stdout, which is the artifact. Why not ``BGSAVE``, wait
for ``LASTSAVE`` to move, then copy ``dir/dbfilename``: that needs read access
to the server's data directory (a ``docker cp`` out of a container), races with
the server's own saves rewriting the file, and changes the server's save state;
``--rdb`` needs nothing but a connection (the ``SYNC``/``PSYNC`` commands must
be allowed: a server that renamed them is refused with that said). Module data
(FalkorDB's graphs) is in the same RDB.

The stream is checked as it passes: it must start with the ``REDIS`` magic and
end with the RDB end-of-file opcode and its 8-byte checksum, and redis-cli must
exit 0; anything else fails the source (a cut transfer never looks like a good
backup).

Facts: the server's version and role, ``dir``/``dbfilename``/``appendonly``, the
loaded modules, and each database's keys and keys with a TTL (``INFO keyspace``)
just before and just after the transfer. Both are kept: a server written to
during the backup has counts that moved, and the check then accepts the range.

Restore: refused on a server holding keys unless ``--force-db``, on a server
with ``appendonly yes`` older than Redis 7 (it would load its AOF, not the RDB),
and on one missing a module the RDB needs. With ``appendonly yes`` on Redis >= 7
the RDB becomes the base of a new multi-part AOF manifest (``appenddirname``:
a base file and an empty incremental file under new names, the manifest
naming only them), which is what such a server loads at start.

The RDB is first written whole to a temporary directory on the host (the
server still runs; a bad digest stops the restore here), then the server is
stopped (``docker stop``; on the host ``systemctl stop`` of ``service`` or
``SHUTDOWN NOSAVE``), the files copied into its ``dir`` (``docker cp -a`` into
a container) with the owner of ``dir``, and the server started again
(``docker start``, ``systemctl start``, or ``start_command``), also when
placing failed. Then drkit waits until it answers ``PING`` (loading a big RDB
takes a while: ``start_timeout``).

Check: each database's key count equals the backup's; keys with a TTL may have
expired since, so a count lower by at most those passes, saying so.

``INFO`` parsing, the key check and the RDB stream's check are
drkit.sources.redis_rdb. This module stays over 400 lines: one source class whose
restore (spool, stage, stop, place, start again, wait) is one sequence over the
same server and layout.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from drkit import secrets
from drkit.durations import parse_duration
from drkit.errors import RestoreError, SourceError
from drkit.policy.models import RedisConfig
from drkit.remote.base import exit_text, tail_text
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    Source,
    StepPlan,
    pipe_into,
)
from drkit.sources.redis_rdb import (
    RdbStream,
    counts,
    key_check,
    parse_info,
    parse_keyspace,
    parse_modules,
)

ARTIFACT = "dump.rdb"
# Write stdin to "rdb" in a private temporary directory; print the directory.
_SPOOL = (
    'umask 077; w=$(mktemp -d "${TMPDIR:-/var/tmp}/drkit-rdb.XXXXXX") && cat > "$w/rdb" '
    '&& echo "$w"'
)
# $1 the spool dir; then "rdb DBFILE" or "aof APPENDDIRNAME APPENDFILENAME SEQ": lay out
# in $1/p the files the server reads at start, named as in its dir.
_STAGE = r"""w=$1 mode=$2; umask 077; mkdir -- "$w/p" || exit 1
if [ "$mode" = rdb ]; then exec mv -- "$w/rdb" "$w/p/$3"; fi
a=$3 f=$4 n=$5; mkdir -- "$w/p/$a" && mv -- "$w/rdb" "$w/p/$a/$f.$n.base.rdb" &&
: > "$w/p/$a/$f.$n.incr.aof" &&
printf 'file %s seq %s type b\nfile %s seq %s type i\n' "$f.$n.base.rdb" "$n" \
    "$f.$n.incr.aof" "$n" > "$w/p/$a/$f.manifest"
"""
# $1 the staged tree, $2 the server's dir: owned like dir, copied into it.
_PLACE = 'chown -R --reference="$2" -- "$1" && cp -a -- "$1/." "$2/"'


@dataclass(frozen=True)
class Layout:
    """Where the server reads its data at start: ``dir/dbfile``, or with AOF on
    (Redis >= 7) the manifest in ``dir/aof_dir`` naming a base RDB and an empty
    incremental file (new names: old files stay, unreferenced)."""

    dir: str
    dbfile: str
    aof_dir: str | None = None
    aof_file: str = "appendonly.aof"

    def stage_args(self, seq: int) -> list[str]:
        if self.aof_dir is None:
            return ["rdb", self.dbfile]
        return ["aof", self.aof_dir, self.aof_file, str(seq)]

    @property
    def text(self) -> str:
        if self.aof_dir is None:
            return f"{self.dir}/{self.dbfile}"
        return (
            f"the base of a new AOF manifest {self.dir}/{self.aof_dir}/{self.aof_file}.manifest "
            "(appendonly yes)"
        )


class RedisSource(Source):
    kind = "redis"
    config: RedisConfig

    # ---- talking to the server ---------------------------------------------
    def env(self) -> dict[str, str] | None:
        c = self.config
        return {"REDISCLI_AUTH": secrets.resolve(c.password)} if c.password else None

    def cli_argv(self, *args: str) -> list[str]:
        c = self.config
        cmd = [c.cli, "-h", c.host, "-p", str(c.port), "--no-auth-warning"]
        if c.user:
            cmd += ["--user", c.user]
        cmd += list(args)
        if c.container:
            pw = ["-e", "REDISCLI_AUTH"] if c.password else []
            return ["docker", "exec", "-i", *pw, c.container, *cmd]
        return cmd

    @property
    def where(self) -> str:
        c = self.config
        server = f"{c.host}:{c.port}"
        return f"{server} in container {c.container}" if c.container else server

    def call(self, *args: str, error: type[Exception] = SourceError) -> str:
        """One command's reply (``--raw``); a server error reply raises ``error``."""
        argv = self.cli_argv("--raw", *args)
        try:
            res = self.runner.run(argv, env=self.env(), user=self.run_as)
        except OSError as exc:
            raise error(f"{self.label}: {shlex.join(argv)}: {exc}") from None
        out = res.stdout.decode("utf-8", "replace")
        # redis-cli exits 0 on an error reply in --raw mode when not a tty: look at it too.
        if res.returncode != 0 or out.startswith(("ERR", "NOAUTH", "WRONGPASS", "NOPERM")):
            detail = out.strip() or res.stderr.strip()
            raise error(
                f"{self.label}: server {self.where}: `{' '.join(args)}` failed "
                f"({exit_text(res.returncode)}): {detail[-300:]}; check that the server is "
                "up and the source's user/password may run it"
            )
        return out

    def answers(self) -> str | None:
        """None if the server answers PING with PONG, else what it said."""
        try:
            res = self.runner.run(self.cli_argv("--raw", "PING"), env=self.env(), user=self.run_as)
        except OSError as exc:
            return str(exc)
        out = res.stdout.decode("utf-8", "replace").strip()
        return None if out == "PONG" else (out or res.stderr.strip() or exit_text(res.returncode))

    def config_get(self, name: str, error: type[Exception] = SourceError) -> str:
        lines = self.call("CONFIG", "GET", name, error=error).splitlines()
        if len(lines) < 2:
            raise error(
                f"{self.label}: server {self.where}: CONFIG GET {name} answered nothing (is "
                "CONFIG renamed or not allowed for this user?)"
            )
        return lines[1]

    def keyspace(self, error: type[Exception] = SourceError) -> dict[str, dict[str, int]]:
        return parse_keyspace(self.call("INFO", "keyspace", error=error))

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        info = parse_info(self.call("INFO", "server"))
        self.facts.update(
            server=self.where,
            version=info.get("redis_version"),
            dir=self.config_get("dir"),
            dbfilename=self.config_get("dbfilename"),
            appendonly=self.config_get("appendonly"),
            modules=parse_modules(self.call("INFO", "modules")),
            role=parse_info(self.call("INFO", "replication")).get("role"),
        )
        before = self.keyspace()
        argv = self.cli_argv("--rdb", "-")
        env = self.env()
        streams: list[RdbStream] = []

        def opener() -> RdbStream:
            stream = RdbStream(self, argv, env)
            streams.append(stream)
            return stream

        yield Artifact(ARTIFACT, opener)
        after = self.keyspace()
        keys: dict[str, dict[str, int]] = {}
        for db in sorted(set(before) | set(after), key=int):
            b = before.get(db, {"keys": 0, "expires": 0})
            a = after.get(db, {"keys": 0, "expires": 0})
            keys[db] = {
                "low": min(b["keys"], a["keys"]),
                "high": max(b["keys"], a["keys"]),
                "expires": max(b["expires"], a["expires"]),
            }
        self.facts.update(
            keys=keys,
            total_keys=sum(v["keys"] for v in after.values()),
            exact=before == after,
            rdb_bytes=streams[-1].size if streams else None,
            method="redis-cli --rdb (replication sync)",
        )
        if before != after:
            self.facts["warnings"] = [
                f"keys changed during the backup of {self.where} (before {counts(before)}, "
                f"after {counts(after)}): the RDB is one point in time between the two"
            ]

    # ---- restore ------------------------------------------------------
    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        c = self.config
        n = facts.get("total_keys", "?")
        down = self.answers()
        if down is not None:
            start = f"docker start {c.container}" if c.container else "start it"
            return StepPlan(
                [f"load {ARTIFACT} ({n} keys at backup) into {self.where}"],
                f"the server {self.where} does not answer PING ({down}); {start} first: drkit "
                "reads where it keeps its RDB from CONFIG GET dir/dbfilename",
            )
        layout = self.layout()
        actions = [f"write {ARTIFACT} ({n} keys at backup) to a temporary file on the host"]
        stop, start = self._stop_start_text()
        actions += [stop, f"place it as {layout.text}", start, "wait until the server answers"]
        if stop.startswith("cannot"):
            return StepPlan(
                actions,
                "the server runs on the host and the policy says neither `service` nor "
                "`start_command`: drkit could stop it but not start it again; set one",
            )
        if layout.aof_dir == "":
            return StepPlan(
                actions,
                f"{self.where} has appendonly yes and no appenddirname (Redis < 7): on start "
                "it would load its AOF, not the RDB; set `appendonly no` in its config for "
                "the restore, restore, then turn it on again",
            )
        missing = sorted(set(facts.get("modules") or []) - set(self._modules()))
        if missing:
            return StepPlan(
                actions,
                f"the RDB needs module(s) {', '.join(missing)}, which {self.where} has not "
                "loaded (use the same server image, e.g. falkordb/falkordb)",
            )
        held = sum(v.get("keys", 0) for v in self.keyspace(RestoreError).values())
        if held and not opts.force_db:
            return StepPlan(
                actions,
                f"{self.where} holds {held} key(s); use --force-db to replace them all",
            )
        if held:
            actions.insert(0, f"REPLACE the {held} key(s) on {self.where} (--force-db)")
        return StepPlan(actions)

    def _modules(self) -> list[str]:
        return parse_modules(self.call("INFO", "modules", error=RestoreError))

    def _stop_start_text(self) -> tuple[str, str]:
        c = self.config
        if c.container:
            return f"docker stop {c.container}", f"docker start {c.container}"
        if c.service:
            return f"systemctl stop {c.service}", f"systemctl start {c.service}"
        if c.start_command:
            return "SHUTDOWN NOSAVE", f"run {shlex.join(c.start_command)}"
        return "cannot start the server again", "?"

    def layout(self) -> Layout:
        """Where the target server reads its data at start (``aof_dir`` "" : AOF on, but
        a server older than Redis 7's multi-part AOF)."""
        dir_ = self.config_get("dir", RestoreError)
        dbfile = self.config_get("dbfilename", RestoreError)
        if self.config_get("appendonly", RestoreError) != "yes":
            return Layout(dir_, dbfile)
        try:
            aof_dir = self.config_get("appenddirname", RestoreError)
        except RestoreError:
            return Layout(dir_, dbfile, "")
        return Layout(dir_, dbfile, aof_dir, self.config_get("appendfilename", RestoreError))

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        plan = self.describe(facts, opts)
        if plan.blocked:
            raise RestoreError(f"{self.label}: {plan.blocked}")
        layout = self.layout()
        where = f"{self.label}: restore into {self.where}"
        spooled: list[str] = []

        def consume(stream: BinaryIO) -> None:
            argv = ["sh", "-c", _SPOOL]
            out = pipe_into(self.runner, argv, stream, what=where, user=self.run_as)
            spooled.append(out.strip().splitlines()[-1])

        report = RestoreReport()
        try:
            feed(ARTIFACT, consume)  # digest verified: only now is the server touched
            work = spooled[-1]
            args = layout.stage_args(int(time.time()))
            self.runner.check(["sh", "-c", _STAGE, "sh", work, *args], what=where, user=self.run_as)
            if self.config.container:
                # Before anything stops: chown needs root (sudo_user = "root" if not).
                owner = self._dir_owner(layout.dir)
                self._must(
                    ["chown", "-R", owner, "--", work + "/p"],
                    f"giving the files the owner {owner} of {layout.dir} in the container "
                    '(needs root on the host: sudo_user = "root")',
                )
            self._stop()
            report.actions.append(self._stop_start_text()[0])
            try:
                self._place(work + "/p", layout.dir, where)
                report.actions.append(f"placed the RDB as {layout.text}")
            finally:
                self._start()
            report.actions.append(self._stop_start_text()[1])
        finally:
            if spooled:
                self.runner.run(["rm", "-rf", "--", spooled[-1]], user=self.run_as)
        self._wait_up()
        report.actions.append(f"{self.where} answers")
        return report

    def _dir_owner(self, dir_: str) -> str:
        """uid:gid of the server's dir inside the container (the file gets the same)."""
        argv = ["docker", "exec", self.config.container or "", "stat", "-c", "%u:%g", dir_]
        out = self.runner.check(
            argv, what=f"{self.label}: reading the owner of {dir_}", user=self.run_as
        )
        return out.decode().strip()

    def _stop(self) -> None:
        c = self.config
        if c.container:
            self._must(["docker", "stop", c.container], f"stopping container {c.container}")
        elif c.service:
            self._must(["systemctl", "stop", c.service], f"stopping {c.service}")
        else:
            # Not saving: its dump.rdb is about to be replaced anyway.
            self.runner.run(self.cli_argv("SHUTDOWN", "NOSAVE"), env=self.env(), user=self.run_as)
            self._wait(lambda: self.answers() is not None, 30, "stop")

    def _start(self) -> None:
        c = self.config
        if c.container:
            self._must(["docker", "start", c.container], f"starting container {c.container}")
        elif c.service:
            self._must(["systemctl", "start", c.service], f"starting {c.service}")
        elif c.start_command:
            self._must(list(c.start_command), "starting the server (start_command)")

    def _place(self, tree: str, dir_: str, where: str) -> None:
        """Copy the staged ``tree`` into the server's ``dir_`` (stopped), owned like it."""
        c = self.config
        if c.container:
            target = f"{c.container}:{dir_.rstrip('/') or '/'}"
            argv = ["docker", "cp", "-a", tree + "/.", target]
            res = self.runner.run(argv, user=self.run_as)
            if res.returncode != 0 and "getent" in res.stderr:
                # `docker cp -a` resolves the container's user by name in its (stopped)
                # filesystem and fails where it cannot (compose `user: redis`). Plain cp
                # makes the files root's: open their modes so the server's user reads,
                # appends and rewrites them (the host side stays in a 0700 directory).
                self._must(["chmod", "-R", "a+rwX", "--", tree], f"opening modes of {tree}")
                argv = ["docker", "cp", tree + "/.", target]
                res = self.runner.run(argv, user=self.run_as)
            if res.returncode != 0:
                raise RestoreError(
                    f"{self.label}: copying into {target}: `{shlex.join(argv)}` "
                    f"{exit_text(res.returncode)}{tail_text(res.stderr)}"
                )
            return
        self.runner.check(["sh", "-c", _PLACE, "sh", tree, dir_], what=where, user=self.run_as)

    def _must(self, argv: list[str], what: str) -> None:
        res = self.runner.run(argv, user=self.run_as)
        if res.returncode != 0:
            raise RestoreError(
                f"{self.label}: {what}: `{shlex.join(argv)}` {exit_text(res.returncode)}"
                f"{tail_text(res.stderr)}"
            )

    def _wait(self, done: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise RestoreError(
                    f"{self.label}: the server {self.where} did not {what} within {seconds:.0f}s"
                )
            time.sleep(0.2)

    def _wait_up(self) -> None:
        seconds = parse_duration(self.config.start_timeout).total_seconds()
        deadline = time.monotonic() + seconds
        while (said := self.answers()) is not None:
            if time.monotonic() > deadline:
                raise RestoreError(
                    f"{self.label}: the RDB is in place but {self.where} does not answer "
                    f"after {seconds:.0f}s ({said}); look at the server's log (a module "
                    "missing, a corrupt RDB) and raise start_timeout for a big dataset"
                )
            time.sleep(0.3)

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        down = self.answers()
        if down is not None:
            return [Check(self.name, "server answers", "fail", f"{self.where}: {down}")]
        return [key_check(self.name, facts.get("keys") or {}, self.keyspace(RestoreError))]
