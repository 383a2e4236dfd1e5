"""pm2's process list as data: ``dump.pm2`` and ``pm2 jlist`` parsed, compared and judged.

No I/O here (drkit.sources.pm2 runs pm2 and reads the files): what the facts keep of a
dump (never an environment value), what a deploy changed while a dump was taken, what
the check after a restore says of each app and its ports.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from typing import Any

from drkit.errors import RestoreError, SourceError
from drkit.sources.listening import ProcNet, port_list
from drkit.sources.tarscan import Member

# Only these fields of a dump entry reach the facts: everything else may hold secrets.
APP_FIELDS = {
    "name": "name",
    "namespace": "namespace",
    "pm_cwd": "cwd",
    "pm_exec_path": "script",
    "exec_interpreter": "exec_interpreter",
    "exec_mode": "exec_mode",
    "status": "status",
}
# Seconds, from the start of the check, for each app's ports of backup time to listen again:
# node binds a moment after pm2 says "online" (seconds in a slow container).
LISTEN_WAIT = 30.0
_DOTENV = re.compile(rb"""require\(\s*['"]dotenv['"]\s*\)""")


def backup_states(facts: dict[str, Any]) -> dict[str, str]:
    """App name -> its state at backup time, in dump order: "online" when any instance
    was (cluster instances share a name), else the first instance's ("stopped", ...)."""
    states: dict[str, str] = {}
    for app in facts.get("apps", []):
        name, state = str(app.get("name")), str(app.get("status") or "online")
        if name not in states or state == "online":
            states[name] = state
    return states


def listen_ports(facts: dict[str, Any]) -> dict[str, list[int]]:
    """App name -> the TCP ports it listened on at backup time, for the apps that
    were online then and listened on any (in dump order)."""
    states = backup_states(facts)
    out: dict[str, list[int]] = {}
    for app in facts.get("apps", []):
        name, ports = str(app.get("name")), app.get("listen")
        if states.get(name) == "online" and isinstance(ports, list) and ports:
            out[name] = sorted({*out.get(name, []), *(int(p) for p in ports)})
    return out


def listen_verdict(
    ports: list[int], net: ProcNet, own: list[int] | None, unread: str
) -> tuple[str, str]:
    """(status, detail) of an online app that listened on ``ports`` at backup time.
    Any process listening on the port passes (the app's own socket is preferred when
    the app's processes could be read: the detail then says when it is not)."""
    if unread:
        return "warn", f"online; listening on {port_list(ports)} not checked: {unread}"
    absent = [p for p in ports if p not in net.ports()]
    if absent:
        return "fail", (
            f"online but not listening on {port_list(absent)} within {LISTEN_WAIT:g}s "
            "(it listened at backup)"
        )
    detail = f"online, listening on {port_list(ports)}"
    foreign = [p for p in ports if own is not None and p not in own]
    if foreign:
        detail += f" ({port_list(foreign)} by another process than the app's)"
    return "pass", detail


def running_apps(procs: list[dict[str, Any]]) -> dict[str, list[tuple[int, bool]]]:
    """App name -> (pid, cluster mode) of each of its online processes, from
    ``process_states``."""
    out: dict[str, list[tuple[int, bool]]] = {}
    for p in procs:
        if p["status"] == "online" and p["pid"] > 0:
            out.setdefault(p["name"], []).append((p["pid"], p["cluster"]))
    return out


def apps_of(facts: dict[str, Any]) -> list[str]:
    """App names in dump order, each once (cluster instances share a name)."""
    return list(dict.fromkeys(str(a.get("name")) for a in facts.get("apps", [])))


def app_facts(content: bytes, what: str) -> list[dict[str, Any]]:
    """Names, paths and modes of the apps in a ``dump.pm2``; never env values.

    Raises SourceError naming ``what`` (never quoting the content) if it is not
    the JSON array pm2 writes.
    """
    return [
        {out: e.get(key) for key, out in APP_FIELDS.items()} for e in dump_entries(content, what)
    ]


def dump_entries(content: bytes, what: str) -> list[dict[str, Any]]:
    """The entries (each a process's pm2_env, environment included) of a ``dump.pm2``.
    Raises SourceError naming ``what`` (never quoting the content) if it is not the JSON
    array pm2 writes: pm2 rewrites the file in place, so one read mid-write is cut short."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise SourceError(f"{what} is not valid JSON (line {line})") from None
    if not isinstance(data, list):
        raise SourceError(f"{what} is not a pm2 process list (JSON array)")
    return [entry for entry in data if isinstance(entry, dict)]


def dump_identity(entry: dict[str, Any]) -> tuple[str, str, str, int, int]:
    """What tells one started process from another, for a ``dump.pm2`` entry: name,
    namespace, status, restart count and start time (pm2 leaves ``pm_id`` out)."""
    return (
        str(entry.get("name")),
        str(entry.get("namespace") or "default"),
        str(entry.get("status") or "unknown"),
        _int(entry.get("restart_time")),
        _int(entry.get("pm_uptime")),
    )


def process_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """What a deploy changed between two ``process_states`` lists, one line per app:
    started, deleted, restarted (a new pid or start time) or a new status."""
    old = {p["pm_id"]: p for p in before}
    new = {p["pm_id"]: p for p in after}
    out: list[str] = []
    for pm_id, p in new.items():
        q = old.get(pm_id)
        if q is None:
            out.append(f"app {p['name']} started")
        elif (q["pid"], q["uptime"], q["restarts"]) != (p["pid"], p["uptime"], p["restarts"]):
            out.append(f"app {p['name']} restarted (pid {q['pid']} -> {p['pid']})")
        elif q["status"] != p["status"] or q["name"] != p["name"]:
            out.append(f"app {p['name']} went from {q['status']} to {p['status']}")
    out += [f"app {q['name']} deleted" for pm_id, q in old.items() if pm_id not in new]
    return list(dict.fromkeys(out))


def judge(
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    dumped: Counter[tuple[str, str, str, int, int]],
    dump: str,
) -> tuple[list[str], list[str]]:
    """What changed (``process_changes``, else ``dump_changes``), and, when all of it is
    apps restarting (the same processes by pm_id and name, the dump listing the same
    apps), their names; else no name."""
    # pm2 modules (pm2-logrotate, ...) are not in the dump: theirs are no changes.
    before = [p for p in before if not p["module"]]
    after = [p for p in after if not p["module"]]
    changes = process_changes(before, after) or dump_changes(dumped, after, dump)
    if not changes:
        return [], []
    old = {p["pm_id"]: p["name"] for p in before}
    same = old == {p["pm_id"]: p["name"] for p in after}
    names = Counter((p["name"], p["namespace"]) for p in after)
    if not same or names != Counter((k[0], k[1]) for k in dumped):
        return changes, []
    key = ("pid", "uptime", "restarts", "status")
    was = {p["pm_id"]: tuple(p[k] for k in key) for p in before}
    moved = {p["name"] for p in after if was[p["pm_id"]] != tuple(p[k] for k in key)}
    # Equal processes, a dump of other starts: the dump was written before the last restart.
    moved |= {
        k[0]
        for k in dumped
        - Counter(
            (p["name"], p["namespace"], p["status"], p["restarts"], p["uptime"]) for p in after
        )
    }
    return changes, sorted(moved)


def dump_changes(
    dumped: Counter[tuple[str, str, str, int, int]], now: list[dict[str, Any]], dump: str
) -> list[str]:
    """How the dump's processes differ from the running ones (``process_states``):
    a dump written by another ``pm2 save`` of an earlier moment."""
    running = Counter(
        (p["name"], p["namespace"], p["status"], p["restarts"], p["uptime"])
        for p in now
        if not p["module"]
    )
    if running == dumped:
        return []
    names = {k[0] for k in dumped}
    live = {k[0] for k in running}
    out = [f"{dump} lists app {n}, which pm2 no longer runs" for n in sorted(names - live)]
    out += [f"{dump} lacks app {n}, which pm2 runs" for n in sorted(live - names)]
    stale = {k[0] for k in (dumped - running) + (running - dumped)} & names & live
    out += [f"{dump} holds an earlier start of app {n}" for n in sorted(stale)]
    return out


def ecosystem_warnings(members: list[Member], ecosystem: list[str]) -> list[str]:
    """Ecosystem files that load dotenv at the top level (seed 000's outage: PM2 then
    hands those variables to every app it starts; use a per-app ``env_file``)."""
    wanted = {posixpath.normpath(p) for p in ecosystem}
    out = []
    for m in members:
        if m.path in wanted and m.content is not None:
            code = [ln for ln in m.content.splitlines() if not ln.lstrip().startswith(b"//")]
            if any(_DOTENV.search(ln) for ln in code):
                out.append(
                    f"{m.path} loads dotenv: its variables reach every app PM2 starts "
                    "(use env_file per app, or load dotenv in the app)"
                )
    return out


def process_states(jlist_output: bytes, label: str) -> list[dict[str, Any]]:
    """Name, status, restart count, pid (0 when not running), whether it runs in
    cluster mode, pm_id, namespace, start time (``uptime``, ms) and whether it is a pm2
    module, of each process in ``pm2 jlist`` output."""
    for line in jlist_output.splitlines():
        if line.startswith(b"["):  # "[PM2] ..." notices start with "[" too
            try:
                data = json.loads(line)
            except ValueError:
                continue
            out = []
            for p in data if isinstance(data, list) else []:
                env = p.get("pm2_env") or {}
                out.append(
                    {
                        "name": str(p.get("name")),
                        "status": str(env.get("status", "unknown")),
                        "restarts": int(env.get("restart_time") or 0),
                        "pid": _int(p.get("pid")),
                        "cluster": env.get("exec_mode") == "cluster_mode",
                        "pm_id": _int(p.get("pm_id", env.get("pm_id"))),
                        "namespace": str(env.get("namespace") or "default"),
                        "uptime": _int(env.get("pm_uptime")),
                        "module": bool(env.get("pmx_module")),
                    }
                )
            return out
    # The output holds environments: it is never quoted in the error.
    raise RestoreError(f"{label}: pm2 jlist printed no process list")


def describe_states(first: list[dict[str, Any]], later: list[dict[str, Any]]) -> dict[str, str]:
    """One line per app name: "online", "online (2 instances)", "errored", "restarting ..."."""
    before: dict[str, int] = {}
    for p in first:
        before[p["name"]] = before.get(p["name"], 0) + p["restarts"]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for p in later:
        grouped.setdefault(p["name"], []).append(p)
    states = {}
    for name, procs in grouped.items():
        statuses = sorted({p["status"] for p in procs})
        restarts = sum(p["restarts"] for p in procs)
        if restarts > before.get(name, restarts):
            states[name] = f"restarting ({restarts} restarts): it crashes on start, see pm2 logs"
        elif statuses == ["online"]:
            states[name] = "online" + (f" ({len(procs)} instances)" if len(procs) > 1 else "")
        else:
            states[name] = "/".join(statuses)
    return states


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
