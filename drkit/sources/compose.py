"""``compose``: one Docker Compose project as a unit.

Backup, three artifacts:

- ``files.tar``: the project's directory (compose files, env files, bind mounts
  under it), exactly as a ``files`` source archives a path (``TarSource``:
  files changed while read are read again, restores staged and confined).
- ``volumes.tar``: the project's named volumes (label
  ``com.docker.compose.project``), except those of the services listed in
  ``dumps`` (an app-native source of the policy dumps them), in ONE window:
  the project's running containers (``dumps`` services excepted: they keep
  serving their own dump) are stopped, one ``tar -C <docker root>/volumes``
  reads every volume's ``_data``, and they are started again however tar
  ends. The stop, the read and the start are one shell on the host with an
  exit trap and a state file (drkit.sources.stop_window, as ``docker_volume``'s
  ``stop_label``), and drkit starts them too, to report a failure; the next
  backup starts what a killed shell left stopped, with a warning.
- ``images.tar`` (``images = true``): ``docker save`` of the images the
  project's containers run, so an incident restore needs no registry.

Facts: services (container, image, state, health, published ports), volumes
(labels, files, bytes), images; the files' listing as ``files`` has it.

Restore: the directory's files (refused over differing files without
``--force-files``), ``docker load``, the volumes (created with their compose
labels, so compose adopts them; a volume holding files is refused unless
``--force-db``, which empties it; running project containers are refused
unless ``--force-db``, which stops them), then ``docker compose up -d
--no-build`` (``docker-compose`` v1 where the host has no v2 plugin).

Check: the files as ``files`` checks them, then per service: its container
running (healthy, if it has a health check) and each port it published at
backup listening on the host again, waited for up to ``start_timeout``; else
the check fails naming the service and the port.

The stop window is drkit.sources.stop_window. This module stays over 400 lines:
one source class whose backup, plan, restore and check share the project's
containers as ``docker inspect`` reports them.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from drkit.durations import parse_duration
from drkit.errors import RestoreError, SourceError
from drkit.policy.models import ComposeConfig
from drkit.remote.base import exit_text, tail_text
from drkit.sources import listening
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    StepPlan,
    pipe_into,
)
from drkit.sources.confine import confine
from drkit.sources.stop_window import START_AGAIN, ShownStream, read_state, stopped_while
from drkit.sources.stop_window import state_file as state_path
from drkit.sources.tarball import TarSource
from drkit.sources.tarfilter import MemberRules, TarFilter
from drkit.sources.tarscan import TarScanner

VOLUMES = "volumes.tar"
IMAGES = "images.tar"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
_PS_FORMAT = "{{.ID}} {{.Names}} {{.State}}"


class ComposeSource(TarSource):
    kind = "compose"
    config: ComposeConfig

    def policy_paths(self) -> list[str]:
        return [self.config.dir]

    # ---- docker on the host -------------------------------------------
    def docker(self, *args: str, what: str, error: type[Exception] = SourceError) -> str:
        argv = ["docker", *args]
        try:
            res = self.runner.run(argv, user=self.run_as)
        except OSError as exc:
            raise error(f"{self.label}: {what}: {exc}") from None
        if res.returncode != 0:
            raise error(
                f"{self.label}: {what}: `{shlex.join(argv)}` {exit_text(res.returncode)}"
                f"{tail_text(res.stderr)}"
            )
        return res.stdout.decode("utf-8", "replace")

    def containers(self, error: type[Exception] = SourceError) -> list[dict[str, Any]]:
        """``docker inspect`` of every container of the project (running or not)."""
        label = f"label={PROJECT_LABEL}={self.config.project}"
        ids = self.docker(
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            label,
            what="listing the project's containers",
            error=error,
        ).split()
        if not ids:
            return []
        out = self.docker("inspect", *ids, what="inspecting the project's containers", error=error)
        found: list[dict[str, Any]] = json.loads(out)
        return found

    def volumes_root(self, error: type[Exception] = SourceError) -> str:
        root = self.docker(
            "info", "--format", "{{.DockerRootDir}}", what="docker info", error=error
        ).strip()
        if not root.startswith("/"):
            raise error(f"{self.label}: docker info gave no DockerRootDir ({root!r})")
        return posixpath.join(root, "volumes")

    def volume(self, name: str, error: type[Exception] = SourceError) -> dict[str, Any] | None:
        res = self.runner.run(
            ["docker", "volume", "inspect", "--format", "{{json .}}", name], user=self.run_as
        )
        if res.returncode != 0:
            if "no such volume" in res.stderr.lower():
                return None
            raise error(f"{self.label}: inspecting volume {name}{tail_text(res.stderr)}")
        record: dict[str, Any] = json.loads(res.stdout)
        return record

    def compose_argv(self, *args: str, files: list[str] | None = None) -> list[str]:
        """``docker compose`` (v2) when the host has it, else ``docker-compose`` (v1);
        ``files``: the compose files the project was started with (``-f`` each)."""
        v2 = self.runner.run(["docker", "compose", "version"], user=self.run_as).returncode == 0
        base = ["docker", "compose"] if v2 else ["docker-compose"]
        chosen = [a for f in files or [] for a in ("-f", f)]
        return [*base, "--project-name", self.config.project, *chosen, *args]

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        c = self.config
        warnings = self._left_stopped(self.state_file())
        found = self.containers()
        if not found:
            raise SourceError(
                f"{self.label}: no container has label {PROJECT_LABEL}={c.project}; is the "
                f"project up (docker compose ls), and is `project` its name?"
            )
        services = [_service(info) for info in found]
        unknown = sorted(set(c.dumps) - {s["service"] for s in services})
        if unknown:
            raise SourceError(
                f"{self.label}: dumps names service(s) {', '.join(unknown)}, which project "
                f"{c.project} does not run"
            )
        config_files = self._config_files(found)
        yield from self.tar_artifacts([c.dir], c.exclude)
        self.facts.update(self.listing_facts())

        skipped = {
            m["Name"]
            for info in found
            if _service(info)["service"] in c.dumps
            for m in info.get("Mounts", [])
            if m.get("Type") == "volume"
        }
        root = self.volumes_root()
        volumes = self._local_volumes(found, skipped, root)
        stop = {
            i["Id"]: i["Name"].lstrip("/")
            for i in found
            if i["State"].get("Running") and _service(i)["service"] not in c.dumps
        }
        stopped: list[str] = []
        if volumes:
            scanner = TarScanner()
            members = [f"{n}/_data" for n in volumes]
            argv = ["tar", "-C", root, "-c", "-f", "-", "--numeric-owner", "--", *members]
            yield Artifact(VOLUMES, lambda: self._stopped_while(stop, argv, stopped), scanner.feed)
            for name, info in volumes.items():
                mine = [m for m in scanner.members if m.path.startswith(f"/{name}/_data/")]
                files = [m for m in mine if m.type == "file"]
                info.update(files=len(files), bytes=sum(m.size for m in files))
        if c.images:
            images = sorted({info["Config"]["Image"] for info in found})
            yield Artifact(IMAGES, lambda: self.command_stream(["docker", "save", *images]))
            self.facts["images"] = images
        self.facts.update(
            project=c.project,
            config_files=config_files,
            services=services,
            volumes=volumes,
            skipped_volumes=sorted(skipped),
            stopped=sorted(stopped),
        )
        if warnings:  # after the files' own (listing_facts)
            self.facts["warnings"] = [*self.facts.get("warnings", []), *warnings]

    def _config_files(self, found: list[dict[str, Any]]) -> list[str]:
        """The compose files the project was started with; all must be under ``dir``."""
        c = self.config
        labels = found[0].get("Config", {}).get("Labels") or {}
        # compose v1 records them relative to the project's working directory.
        workdir = labels.get(WORKING_DIR_LABEL) or c.dir
        config_files = [
            posixpath.join(workdir, f) for f in labels.get(CONFIG_FILES_LABEL, "").split(",") if f
        ]
        outside = [f for f in config_files if not f.startswith(c.dir.rstrip("/") + "/")]
        if outside:
            raise SourceError(
                f"{self.label}: project {c.project} was started with compose file(s) "
                f"{', '.join(outside)} outside dir {c.dir}; set dir to the directory that "
                "holds them"
            )
        return config_files

    def _local_volumes(
        self, found: list[dict[str, Any]], skipped: set[str], root: str
    ) -> dict[str, dict[str, Any]]:
        """The project's named volumes but ``skipped``: name -> {"labels"}; each must be a
        local volume under ``root`` (one tar reads them all)."""
        names = sorted(
            {
                m["Name"]
                for info in found
                for m in info.get("Mounts", [])
                if m.get("Type") == "volume"
            }
            - skipped
        )
        volumes: dict[str, dict[str, Any]] = {}
        for name in names:
            record = self.volume(name) or {}
            mp = str(record.get("Mountpoint") or "")
            if mp != posixpath.join(root, name, "_data"):
                raise SourceError(
                    f"{self.label}: volume {name} (driver {record.get('Driver')}) is not at "
                    f"{root}/{name}/_data (mountpoint {mp or 'none'}): only local volumes "
                    "are read; back it up with its own source and list its service in dumps"
                )
            volumes[name] = {"labels": record.get("Labels") or {}}
        return volumes

    @contextmanager
    def _stopped_while(
        self, stop: dict[str, str], argv: list[str], stopped: list[str]
    ) -> Iterator[BinaryIO]:
        """``argv``'s output with ``stop``'s containers stopped, started again however it
        ends (one shell with an exit trap; drkit starts them again too, to report)."""
        if not stop:
            with self.command_stream(argv) as stream:
                yield stream
            return
        state = self.state_file()
        wrapped = stopped_while(state, stop, argv)
        try:
            with ShownStream(self, wrapped, argv) as stream:
                stopped.extend(stop.values())
                yield stream
        except BaseException as exc:
            self._start_again(stop, state, pending=exc)
            raise
        self._start_again(stop, state)

    def _start_again(
        self, stop: dict[str, str], state: str, pending: BaseException | None = None
    ) -> None:
        """``docker start`` (a no-op on a running container), then the state file goes; a
        failure to start keeps it (the next backup tries again) and names ``pending``, the
        error that ended the window, too."""
        try:
            self.docker("start", *stop, what=f"starting {', '.join(sorted(stop.values()))} again")
        except SourceError as exc:
            if pending is None:
                raise
            raise SourceError(f"{exc} (after: {pending})") from pending
        self.runner.run(["rm", "-f", "--", state], user=self.run_as)

    def state_file(self) -> str:
        return state_path(f"compose/{self.name}/{self.config.project}")

    def _left_stopped(self, state: str) -> list[str]:
        """Start the containers an interrupted backup left stopped (its state file names
        them) that are not running; warnings naming them."""
        recorded = read_state(self.runner, state, self.run_as)
        if not recorded:
            return []
        running = {i["Id"] for i in self.containers() if i["State"].get("Running")}
        left = {cid: name for cid, name in recorded.items() if cid not in running}
        if not left:
            self.runner.run(["rm", "-f", "--", state], user=self.run_as)
            return []
        names = ", ".join(sorted(left.values()))
        self.runner.check(
            ["sh", "-c", START_AGAIN, "sh", state, *left],
            what=f"{self.label}: starting container(s) {names} again",
            user=self.run_as,
        )
        return [
            f"container(s) {names} were still stopped: an earlier backup of project "
            f"{self.config.project} stopped them and was killed before it could start them "
            "again; started now"
        ]

    # ---- restore ------------------------------------------------------
    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        plan = super().describe(facts, opts)
        actions, blocked = list(plan.actions), plan.blocked
        if opts.dest:
            return StepPlan([*actions, "volumes, images and services: not with --dest"], blocked)
        if facts.get("images"):
            actions.append(
                f"docker load {len(facts['images'])} image(s): " + ", ".join(facts["images"])
            )
        running = [
            i["Name"].lstrip("/")
            for i in self.containers(RestoreError)
            if i["State"].get("Running")
        ]
        if running:
            actions.append(f"stop running container(s) {', '.join(running)} (--force-db)")
            if not opts.force_db and facts.get("volumes"):
                blocked = blocked or (
                    f"project {self.config.project} runs ({', '.join(running)}); stop it first "
                    "(docker compose down, without -v) or use --force-db"
                )
        for name, info in (facts.get("volumes") or {}).items():
            record = self.volume(name, RestoreError)
            if record is not None and self._has_files(str(record.get("Mountpoint"))):
                actions.append(f"EMPTY volume {name} (--force-db)")
                if not opts.force_db:
                    blocked = blocked or f"volume {name} holds files; use --force-db to replace"
            verb = "create and fill" if record is None else "fill"
            actions.append(f"{verb} volume {name} ({info.get('files', '?')} file(s))")
        up = self.compose_argv("up", "-d", "--no-build", files=facts.get("config_files"))
        actions.append(f"{shlex.join(up)} in {self.config.dir}")
        ports = [f"{s['service']} {p}" for s in facts.get("services", []) for p in s["ports"]]
        actions.append(
            "then check each service runs" + (f" and listens: {', '.join(ports)}" if ports else "")
        )
        return StepPlan(actions, blocked)

    def _has_files(self, directory: str) -> bool:
        script = 'test ! -d "$1" || find "$1" -mindepth 1 -maxdepth 1 -print -quit'
        argv = ["sh", "-c", script, "sh", directory]
        what = f"{self.label}: reading {directory}"
        out = self.runner.check(argv, what=what, user=self.run_as)
        return bool(out.strip())

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        plan = self.describe(facts, opts)
        if plan.blocked:
            raise RestoreError(f"{self.label}: {plan.blocked}")
        report = super().restore(feed, facts, opts)
        if opts.dest:
            return report
        if facts.get("images"):
            what = f"{self.label}: docker load"

            def load(stream: BinaryIO) -> None:
                pipe_into(self.runner, ["docker", "load"], stream, what=what, user=self.run_as)

            feed(IMAGES, load)
            report.actions.append(f"loaded image(s) {', '.join(facts['images'])}")
        running = {
            i["Id"]: i["Name"].lstrip("/")
            for i in self.containers(RestoreError)
            if i["State"].get("Running")
        }
        if running:
            self.docker("stop", *running, what="stopping the project", error=RestoreError)
            report.actions.append(f"stopped {', '.join(sorted(running.values()))} (--force-db)")
        volumes: dict[str, Any] = facts.get("volumes") or {}
        if volumes:
            self._restore_volumes(feed, volumes, report)
        argv = self.compose_argv("up", "-d", "--no-build", files=facts.get("config_files"))
        res = self.runner.run(
            ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", self.config.dir, *argv],
            user=self.run_as,
        )
        if res.returncode != 0:
            raise RestoreError(
                f"{self.label}: `{shlex.join(argv)}` in {self.config.dir} "
                f"{exit_text(res.returncode)}{tail_text(res.stderr)}; the files and volumes are "
                "restored: fix the cause (a missing image: restore with images = true, or "
                "build it) and run it by hand"
            )
        report.actions.append(f"{shlex.join(argv)} in {self.config.dir}")
        return report

    def _restore_volumes(self, feed: Feed, volumes: dict[str, Any], report: RestoreReport) -> None:
        root = self.volumes_root(RestoreError)
        for name, info in volumes.items():
            record = self.volume(name, RestoreError)
            if record is None:
                labels = info.get("labels") or {}
                args = [a for k, v in sorted(labels.items()) for a in ("--label", f"{k}={v}")]
                self.docker(
                    "volume",
                    "create",
                    *args,
                    name,
                    what=f"creating volume {name}",
                    error=RestoreError,
                )
                record = self.volume(name, RestoreError) or {}
            mp = str(record.get("Mountpoint") or "")
            if mp != posixpath.join(root, name, "_data"):
                raise RestoreError(f"{self.label}: volume {name} is not at {root}/{name}/_data")
            # Allowed by describe (--force-db): emptied, then filled with the backup's.
            self.runner.check(
                ["find", mp, "-mindepth", "1", "-delete"],
                what=f"{self.label}: emptying {mp}",
                user=self.run_as,
            )
        conf = confine(self.runner, root, ["/"], label=self.label, user=self.run_as)
        rules = MemberRules(
            tuple(f"/{n}" for n in volumes),
            self.config.allow_setid,
            conf.escapes,
            tuple(self.config.symlinks_to),
        )
        tar = ["tar", "-C", root, "-x", "-p", "--same-owner", "--numeric-owner", "-f", "-"]
        where = f"{self.label}: restoring volumes into {root}"

        def consume(stream: BinaryIO) -> None:
            checked = TarFilter(stream, rules, self.label)
            pipe_into(self.runner, tar, checked, what=where, user=self.run_as)  # type: ignore[arg-type]

        feed(VOLUMES, consume)
        report.actions.append(f"restored volume(s) {', '.join(volumes)}")

    # ---- check --------------------------------------------------------
    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        checks = super().check(facts, opts)
        if opts.dest:
            return checks
        deadline = time.monotonic() + parse_duration(self.config.start_timeout).total_seconds()
        services: list[dict[str, Any]] = facts.get("services") or []
        while True:
            problems = self._service_problems(services)
            if not any(problems.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        for s in services:
            bad = problems.get(s["service"])
            ports = ", ".join(s["ports"])
            detail = bad or ("running" + (f", listening on {ports}" if ports else ""))
            checks.append(
                Check(self.name, f"service {s['service']}", "fail" if bad else "pass", detail)
            )
        return checks

    def _service_problems(self, services: list[dict[str, Any]]) -> dict[str, str]:
        now = {_service(i)["service"]: _service(i) for i in self.containers(RestoreError)}
        out = self.runner.run(["sh", "-c", listening.SCRIPT, "sh"], user=self.run_as)
        net = listening.parse(out.stdout)
        listening_ports = net.ports() if net.readable else set()
        problems: dict[str, str] = {}
        for s in services:
            got = now.get(s["service"])
            if got is None:
                problems[s["service"]] = "no container"
            elif got["state"] != "running":
                problems[s["service"]] = f"container {got['container']} is {got['state']}"
            elif got["health"] not in ("", "healthy"):
                problems[s["service"]] = f"container {got['container']} is {got['health']}"
            else:
                down = [p for p in s["ports"] if int(p.rsplit(":", 1)[-1]) not in listening_ports]
                if down:
                    problems[s["service"]] = f"running, but nothing listens on {', '.join(down)}"
        return problems


def _service(info: dict[str, Any]) -> dict[str, Any]:
    """What the facts keep of one container: service, container, image, state, health
    and the host ports it publishes (``127.0.0.1:8080``)."""
    labels = info.get("Config", {}).get("Labels") or {}
    state = info.get("State") or {}
    ports = []
    for bindings in (info.get("NetworkSettings", {}).get("Ports") or {}).values():
        for b in bindings or []:
            if b.get("HostPort"):
                ports.append(f"{b.get('HostIp') or '0.0.0.0'}:{b['HostPort']}")  # noqa: S104 (what docker reports)
    return {
        "service": labels.get(SERVICE_LABEL, info.get("Name", "").lstrip("/")),
        "container": info.get("Name", "").lstrip("/"),
        "image": info.get("Config", {}).get("Image", ""),
        "state": state.get("Status", ""),
        "health": (state.get("Health") or {}).get("Status", ""),
        "ports": sorted(set(ports)),
    }
