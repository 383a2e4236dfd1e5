"""Benchmark results: collected per round, summarised, written as JSON, Markdown and a PNG.

``Results`` holds every run of every measurement (declared in display
order, recorded round by round), the ratios drkit/peer computed pair by pair
within a round, and the targets of issue 8. ``write_outputs`` writes
``<dir>/<stem>.json``, ``<stem>.md`` and ``<stem>.png`` and, if asked,
replaces the generated part of ``docs/benchmarks.md`` (between the
``bench:begin``/``bench:end`` markers; the notes around it are kept).

The chart needs matplotlib (``pip install matplotlib`` into the venv).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import Sample, Stat, pairwise_ratio

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
DASH, TIMES = "\u2013", "\u00d7"
PHASE_TITLES = {
    "a": "(a) full backup",
    "b": "(b) incremental backup after churn",
    "c": "(c) restore into a fresh database",
    "d": "(d) verify / check all data",
    "e": "(e) peak RSS at 1x and 10x data",
    "f": "(f) hosts backed up concurrently vs the slowest alone",
}
MIB = 1 << 20


@dataclass
class Measurement:
    phase: str
    key: str
    label: str
    role: str  # floor | drkit | peer | derived
    command: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.runs if r.get(name) is not None]

    def by_round(self, name: str) -> dict[int, float]:
        return {int(r["round"]): float(r[name]) for r in self.runs if r.get(name) is not None}

    def stat(self, name: str) -> Stat | None:
        vals = self.values(name)
        return Stat.of(vals) if vals else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("wall_s", "main_rss_mib", "children_rss_mib", "tree_cpu_s",
                     "machine_cpu_s", "server_cpu_s", "stored_bytes"):  # fmt: skip
            s = self.stat(name)
            if s is not None:
                out[name] = s.as_dict()
        return out


@dataclass(frozen=True)
class RatioSpec:
    """``num``/``den`` of ``field`` in the same round; ``limit`` is the target (≤)."""

    phase: str
    name: str
    num: str
    den: str
    field: str = "wall_s"
    limit: float | None = None
    target: str = ""


@dataclass(frozen=True)
class Ceiling:
    """A target on one measurement's worst run: ``field`` max ≤ ``limit``."""

    phase: str
    key: str
    field: str
    limit: float
    target: str


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    measurements: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    ratio_specs: list[RatioSpec] = field(default_factory=list)
    ceilings: list[Ceiling] = field(default_factory=list)
    profile: dict[str, Any] | None = None

    def declare(self, phase: str, key: str, label: str, role: str, command: str = "") -> None:
        m = self.measurements.setdefault(
            (phase, key), Measurement(phase, key, label, role, command)
        )
        if command and not m.command:
            m.command = command

    def record(
        self, phase: str, key: str, round_index: int, sample: Sample | None, **extra: Any
    ) -> None:
        figures: dict[str, Any] = {"round": round_index}
        if sample is not None:
            figures.update(sample.figures())
        figures.update(extra)
        self.measurements[(phase, key)].runs.append(figures)

    def get(self, phase: str, key: str) -> Measurement | None:
        return self.measurements.get((phase, key))

    # ---- derived figures -------------------------------------------------

    def ratios(self) -> list[dict[str, Any]]:
        out = []
        for spec in self.ratio_specs:
            num, den = self.get(spec.phase, spec.num), self.get(spec.phase, spec.den)
            if num is None or den is None:
                continue
            a, b = num.by_round(spec.field), den.by_round(spec.field)
            rounds = sorted(set(a) & set(b))
            if not rounds:
                continue
            stat = pairwise_ratio([a[r] for r in rounds], [b[r] for r in rounds])
            row: dict[str, Any] = {
                "phase": spec.phase,
                "name": spec.name,
                "field": spec.field,
                "values": [round(a[r] / b[r], 3) if b[r] else None for r in rounds],
                **stat.as_dict(),
            }
            if spec.limit is not None:
                row.update(target=spec.target, limit=spec.limit, met=stat.median <= spec.limit)
                row["by"] = round(stat.median / spec.limit, 3)
            out.append(row)
        return out

    def ceiling_checks(self) -> list[dict[str, Any]]:
        out = []
        for c in self.ceilings:
            m = self.get(c.phase, c.key)
            if m is None or not m.values(c.field):
                continue
            worst = max(m.values(c.field))
            out.append(
                {"phase": c.phase, "name": f"{m.label}: worst {c.field}", "target": c.target,
                 "value": round(worst, 1), "limit": c.limit, "met": worst <= c.limit,
                 "by": round(worst / c.limit, 3)}
            )  # fmt: skip
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            **self.meta,
            "measurements": [
                {
                    "phase": m.phase,
                    "key": m.key,
                    "label": m.label,
                    "role": m.role,
                    "command": m.command,
                    "runs": m.runs,
                    "summary": m.summary(),
                }
                for m in self.measurements.values()
                if m.runs
            ],
            "ratios": self.ratios(),
            "ceilings": self.ceiling_checks(),
            "profile": self.profile,
        }


# ---- what is measured, and the targets of issue 8 ----------------------------

FLOOR, DRKIT, PEER, DERIVED = "floor", "drkit", "peer", "derived"


def declare_all(
    res: Results, phases: str, factor: int = 10, hosts: int = 4, *, dedup: bool = False
) -> None:
    """Declare every measurement (display order), ratio and target of ``phases``;
    ``dedup``: (a), (b) and (d) also measure drkit with ``dedup = true``."""
    k = f"{factor}x"
    dd = "drkit (`dedup = true`)"
    rows = {
        "a": [
            ("floor-dump", "`pg_dump -Fp | wc -c`", FLOOR),
            ("floor-zstd", "`pg_dump | zstd -3 -T2`", FLOOR),
            ("floor-pipeline", "`pg_dump | zstd -3 | age -r KEY` (pipeline floor)", FLOOR),
            ("floor-pipeline-fc", "`pg_dump -Fc -Z0 | zstd -3 | age` (drkit's dump format)", FLOOR),
            ("drkit", "drkit → S3, full", DRKIT),
            ("drkit-local", "drkit → local directory, full (the embedded default)", DRKIT),
            *([("drkit-dedup", f"{dd} → S3, full", DRKIT)] if dedup else []),
            ("restic", "restic → S3, full", PEER),
            ("borg", "borg → local, full", PEER),
        ],
        "b": [
            ("floor-pipeline", "pipeline floor, after churn", FLOOR),
            ("drkit", "drkit → S3, incremental", DRKIT),
            *([("drkit-dedup", f"{dd} → S3, incremental", DRKIT)] if dedup else []),
            ("restic", "restic → S3, incremental", PEER),
            ("borg", "borg → local, incremental", PEER),
        ],
        "c": [
            (
                "floor-pg_restore",
                "`pg_restore -j2` custom dump into fresh DB (restore floor)",
                FLOOR,
            ),
            ("floor-psql", "`psql -f plain.sql` into fresh DB", FLOOR),
            ("drkit", "drkit S3 → fresh DB (`restore --database`)", DRKIT),
            *([("drkit-dedup", f"{dd} S3 → fresh DB", DRKIT)] if dedup else []),
            ("restic", "restic S3 → psql into fresh DB", PEER),
            ("borg", "borg → psql into fresh DB", PEER),
        ],
        "d": [
            ("drkit", "`drkit verify` (newest snapshot, S3)", DRKIT),
            *([("drkit-dedup", f"`drkit verify`, {dd}", DRKIT)] if dedup else []),
            ("restic", "`restic check --read-data` (S3)", PEER),
            ("borg", "`borg check --verify-data` (local)", PEER),
        ],
        "e": [
            ("backup-1x", "drkit backup, 1x stream (plain dump)", DRKIT),
            ("backup-kx", f"drkit backup, {k} stream", DRKIT),
            ("restore-1x", "drkit restore, 1x stream", DRKIT),
            ("restore-kx", f"drkit restore, {k} stream", DRKIT),
        ],
        "f": [
            *[
                (f"host-{i}", f"drkit backup, host fleet-{i} alone", DRKIT)
                for i in range(1, hosts + 1)
            ],
            ("slowest-alone", f"slowest host alone (max of the {hosts}, per round)", DERIVED),
            ("fleet", f"drkit backup --all --jobs {hosts} ({hosts} hosts at once)", DRKIT),
            ("cpu-bound", "fleet's CPU-bound limit: machine CPU-s / nproc", DERIVED),
        ],
    }
    for phase in phases:
        for key, label, role in rows.get(phase, []):
            res.declare(phase, key, label, role)
    ratios = [
        RatioSpec("a", "full: drkit / pipeline floor", "drkit", "floor-pipeline", limit=1.15,
                  target="≤ 1.15"),
        RatioSpec("a", "full: drkit / restic", "drkit", "restic", limit=0.65, target="≤ 0.65"),
        RatioSpec("a", "full: drkit / borg", "drkit", "borg"),
        RatioSpec("a", "full: drkit / `pg_dump | wc -c`", "drkit", "floor-dump"),
        RatioSpec("a", "full, local directory: drkit / pipeline floor", "drkit-local",
                  "floor-pipeline"),
        RatioSpec("b", "incremental: drkit / pipeline floor", "drkit", "floor-pipeline",
                  limit=1.0, target="≤ 1 (time ≤ the floor)"),
        RatioSpec("b", "incremental: drkit / restic", "drkit", "restic"),
        RatioSpec("b", "incremental: drkit / borg", "drkit", "borg"),
        RatioSpec("b", "incremental stored bytes: drkit / restic", "drkit", "restic",
                  field="stored_bytes", limit=1.0, target="≤ 1 (≤ restic's)"),
        RatioSpec("b", "incremental stored bytes: drkit / borg", "drkit", "borg",
                  field="stored_bytes"),
        RatioSpec("c", "restore: drkit / `pg_restore -j2`", "drkit", "floor-pg_restore",
                  limit=1.1, target="≤ 1.1"),
        RatioSpec("c", "restore: drkit / `psql -f`", "drkit", "floor-psql"),
        RatioSpec("c", "restore: drkit / restic", "drkit", "restic"),
        RatioSpec("c", "restore: drkit / borg", "drkit", "borg"),
        RatioSpec("d", "verify: drkit / borg", "drkit", "borg", limit=1.0, target="≤ 1"),
        RatioSpec("d", "verify: drkit / restic", "drkit", "restic"),
        RatioSpec("e", f"backup peak RSS: {k} / 1x", "backup-kx", "backup-1x",
                  field="main_rss_mib", limit=1.1, target="≤ 1.1 (flat)"),
        RatioSpec("e", f"restore peak RSS: {k} / 1x", "restore-kx", "restore-1x",
                  field="main_rss_mib", limit=1.1, target="≤ 1.1 (flat)"),
        RatioSpec("f", f"fleet of {hosts} / slowest alone", "fleet", "slowest-alone", limit=1.3,
                  target="≤ 1.3"),
        RatioSpec("f", "CPU-bound limit / slowest alone (no tool can beat this here)",
                  "cpu-bound", "slowest-alone"),
    ]  # fmt: skip
    if dedup:
        # drkit with dedup is held to the same targets as drkit in (a), (b), (d).
        ratios += [
            replace(r, name=r.name.replace(": drkit", ", dedup: drkit", 1), num="drkit-dedup")
            for r in ratios
            if r.num == "drkit" and r.limit is not None and r.phase in "abd"
        ]
        # Issue 20: dedup (packs) must cost nothing against whole artifacts.
        ratios += [
            RatioSpec("a", "full, dedup / whole artifacts (drkit)", "drkit-dedup", "drkit",
                      limit=1.02, target="≤ 1.02"),
            RatioSpec("a", "full, dedup: drkit / restic (issue 20)", "drkit-dedup", "restic",
                      limit=0.85, target="≤ 0.85"),
            RatioSpec("c", "restore, dedup / whole artifacts (drkit)", "drkit-dedup", "drkit",
                      limit=1.0, target="≤ 1"),
            RatioSpec("c", "restore, dedup: drkit / restic", "drkit-dedup", "restic"),
            RatioSpec("d", "verify, dedup: drkit / borg (issue 20)", "drkit-dedup", "borg",
                      limit=0.7, target="≤ 0.7"),
            RatioSpec("d", "verify, dedup / whole artifacts (drkit)", "drkit-dedup", "drkit"),
        ]  # fmt: skip
    res.ratio_specs += [r for r in ratios if r.phase in phases]
    ceilings = [("a", "drkit"), *([("a", "drkit-dedup"), ("c", "drkit-dedup")] if dedup else []),
                ("c", "drkit"),
                ("e", "backup-1x"), ("e", "backup-kx"), ("e", "restore-1x"),
                ("e", "restore-kx")]  # fmt: skip
    res.ceilings += [
        Ceiling(p, key, "main_rss_mib", 64.0, "≤ 64 MiB") for p, key in ceilings if p in phases
    ]


# ---- py-spy profile ------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``func (path:line)`` -> ``func (short/path)``; bare addresses -> their library."""
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif "/drkit/" in where:
        where = "drkit/" + where.split("/drkit/", 1)[1]
    elif re.search(r"/lib/python3\.\d+/", where):
        where = re.split(r"/lib/python3\.\d+/", where, maxsplit=1)[1]
    elif where.startswith("/"):
        where = where.rsplit("/", 1)[1]
    if name.startswith("0x"):
        return f"({where})"
    return f"{name} ({where})" if where else name


def _thread_of(frames: list[str]) -> str:
    """The function a thread was started with (after Thread.run / _WorkItem.run), else main."""
    label = "main thread"
    for i, f in enumerate(frames[:-1]):
        if f.startswith(("Thread.run ", "_WorkItem.run ")):
            label = _frame_name(frames[i + 1])
    return label


# Innermost frames where a thread sleeps: py-spy with --native samples them too.
_WAITING = ("read", "poll", "select", "epoll_wait", "recv", "accept", "wait4", "waitpid",
            "PyThread_acquire_lock_timed", "pthread_cond_timedwait", "pthread_cond_wait",
            "__futex_abstimed_wait_common", "sem_timedwait", "sem_wait", "clock_nanosleep",
            "nanosleep")  # fmt: skip
# Without native frames (py-spy's fallback) a thread blocked in C (a queue get, a
# sleep, a pipe or socket read) shows its innermost Python frame: these only wait.
_WAITING_PY = ("Condition.wait", "Event.wait", "Thread.join", "Thread._wait_for_tstate_lock",
               "SocketIO.readinto", "_worker", "LocalProcess._drain_stderr",
               "HostLock._beat")  # fmt: skip
# (category, substrings any frame may hold), checked in order after "waiting".
_CATEGORIES = (
    ("start-up: imports", ("_find_and_load", "<frozen importlib")),
    ("zstd compression", ("ZSTD_", "zstd.c", "compressionreader")),
    ("sha256 (content digests)", ("SHA256_", "sha256_")),
    ("md5 (S3 Content-MD5)", ("MD5_", "md5_")),
    ("age encryption (pyrage)", ("pyrage",)),
    ("S3 upload (botocore, http, TLS)", ("botocore", "urllib3", "http/client", "ssl", "send (")),
    ("pipe plumbing (ThreadPipe, readers)", ("drkit/pipeline/streams.py",)),
    ("garbage collector", ("gc_collect",)),
)


def _category(frames: list[str]) -> str:
    # The blocking call may sit under a few unnamed libc frames (futex waits).
    if any(f.rpartition(" (")[0] in _WAITING for f in frames[-3:]) or (
        frames[-1].rpartition(" (")[0] in _WAITING_PY
    ):
        return "waiting (blocked in read/poll/lock: not CPU)"
    for name, needles in _CATEGORIES:
        if any(n in f for f in frames for n in needles):
            return name
    return "other"


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Shares of samples per thread, per activity, per innermost function and per innermost
    drkit function, from py-spy's ``raw`` (collapsed stacks) output."""
    tables: dict[str, dict[str, int]] = {k: {} for k in ("threads", "categories", "self", "drkit")}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        total += n
        keys = {
            "threads": _thread_of(frames),
            "categories": _category(frames),
            "self": _frame_name(frames[-1]),
            "drkit": next((_frame_name(f) for f in reversed(frames) if "/drkit/" in f),
                          "(outside drkit)"),
        }  # fmt: skip
        for table, key in keys.items():
            tables[table][key] = tables[table].get(key, 0) + n

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        rows = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in rows]

    return {"samples": total, **{name: share(d) for name, d in tables.items()}}


# ---- machine and versions -------------------------------------------------


def machine_facts() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    os_name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "cpu": model,
        "os": os_name,
        "python": platform.python_version(),
    }


def git_revision(root: Path) -> str:
    """HEAD and whether the tree has changes (read-only git commands)."""

    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return res.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# ---- Markdown ---------------------------------------------------------------


def _mb(v: float) -> str:
    return f"{v / 1e6:.1f}"


def measurement_table(res: Results) -> str:
    lines = [
        "| measurement | wall s | tool RSS MiB | children RSS MiB | stored MB | CPU s (tree) "
        "| CPU s (S3 server) |",
        "|---|---|---|---|---|---|---|",
    ]
    phase = ""
    for m in res.measurements.values():
        if not m.runs:
            continue
        if m.phase != phase:
            phase = m.phase
            lines.append(f"| **{PHASE_TITLES.get(phase, phase)}** | | | | | | |")
        cells = [m.label if m.role != "drkit" else f"**{m.label}**"]
        for name, fmt in (("wall_s", "{:.2f}"), ("main_rss_mib", "{:.0f}"),
                          ("children_rss_mib", "{:.0f}")):  # fmt: skip
            s = m.stat(name)
            cells.append(s.text(fmt) if s else "")
        stored = m.stat("stored_bytes")
        if stored is None:
            cells.append("")
        else:
            sign = "+" if m.runs[0].get("stored_is_delta") else ""
            mb = Stat(stored.median / 1e6, stored.low / 1e6, stored.high / 1e6, stored.n)
            cells.append(sign + mb.text("{:.1f}"))
        cpu = m.stat("tree_cpu_s")
        cells.append(cpu.text("{:.1f}") if cpu else "")
        # The S3 server shares this machine's CPUs: its work is part of what a
        # run waits for (blank where the run does not talk to S3).
        server = m.stat("server_cpu_s")
        cells.append(server.text("{:.1f}") if server and server.high >= 0.05 else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(res: Results) -> str:
    lines = [f"| ratio (same round, pair by pair) | median (min{DASH}max) | target | met |",
             "|---|---|---|---|"]  # fmt: skip
    for r in res.ratios():
        span = f"{r['median']:.2f} ({r['min']:.2f}{DASH}{r['max']:.2f})" if r["n"] > 1 else (
            f"{r['median']:.2f}")  # fmt: skip
        met = (
            ""
            if "met" not in r
            else ("yes" if r["met"] else f"**no** ({r['by']:.2f}{TIMES} the limit)")
        )
        lines.append(f"| {r['name']} | {span} | {r.get('target', '')} | {met} |")
    for c in res.ceiling_checks():
        met = "yes" if c["met"] else f"**no** ({c['by']:.2f}{TIMES} the limit)"
        lines.append(f"| {c['name']} | {c['value']} | {c['target']} | {met} |")
    return "\n".join(lines)


def profile_section(profile: dict[str, Any] | None) -> str:
    if not profile:
        return ""
    lines = [f"### Where drkit's full backup spends CPU (py-spy, {profile['samples']} samples)", ""]
    lines.append(f"Command: `{profile['command']}`; flame graph: `{profile['svg']}`.")
    lines.append("Shares are of all samples, waiting threads included (see the first table).")
    lines += ["", "| activity | share of samples |", "|---|---|"]
    lines += [f"| {t} | {p:.1f}% |" for t, p in profile.get("categories", [])]
    lines += ["", "| thread (its start function) | share of samples |", "|---|---|"]
    lines += [f"| {t} | {p:.1f}% |" for t, p in profile["threads"]]
    lines += ["", "| innermost function (self time) | share of samples |", "|---|---|"]
    lines += [f"| `{f}` | {p:.1f}% |" for f, p in profile["self"]]
    lines += ["", "| innermost drkit function on the stack | share of samples |", "|---|---|"]
    lines += [f"| `{f}` | {p:.1f}% |" for f, p in profile["drkit"]]
    return "\n".join(lines)


def _short_version(text: str) -> str:
    """``restic 0.14.0 compiled with go1.19.8 ...`` -> ``0.14.0``."""
    m = re.search(r"\d+\.\d+(\.\d+)?", text)
    return m.group(0) if m else text


def _repositories_text(meta: dict[str, Any]) -> str:
    if meta.get("drkit_dedup"):  # runs before 2026-12-05 measured one configuration
        return "`dedup = true` (chunks)."
    if meta.get("dedup_variant"):
        return (
            "whole artifacts (`dedup = false`; the policy default until 2026-12-08); rows "
            "marked `dedup = true` (the default since) back up and verify with deduplicated "
            "chunks instead."
        )
    return "whole artifacts (`dedup = false`; the policy default until 2026-12-08)."


def restore_steps_section(steps: list[dict[str, Any]] | None) -> str:
    """The restore floor taken apart: each pg_restore step of the custom dump alone."""
    if not steps:
        return ""
    serial = sum(float(s["seconds"]) for s in steps)
    lines = [
        "### Where a restore spends its time (pg_restore of the custom dump, one step at a time)",
        "",
        "One fresh database, steps in order: schema, each table's data alone (`-L` with one "
        "TABLE DATA entry), then indexes and constraints with `-j2`. Whatever a tool does, "
        "table data cannot load faster than its largest table's COPY: one backend's work.",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {s['step']} | {float(s['seconds']):.2f} |" for s in steps],
        f"| all steps one after the other | {serial:.2f} |",
    ]
    return "\n".join(lines)


def requests_section(found: dict[str, dict[str, float]] | None) -> str:
    """(g): S3 requests per GB of plain dump, each tool's one counted run of each step."""
    if not found:
        return ""
    names = {"drkit": "drkit (whole artifacts)", "drkit-dedup": "drkit (`dedup = true`, packs)",
             "restic": "restic"}  # fmt: skip
    steps = ("full", "incremental", "restore")
    lines = [
        "### (g) S3 requests per GB of dump (one counted run each, through a counting proxy)",
        "",
        "| tool | full backup | incremental backup | restore |",
        "|---|---|---|---|",
    ]
    for key, row in found.items():
        cells = " | ".join(f"{row.get(s, 0):.1f}" for s in steps)
        lines.append(f"| {names.get(key, key)} | {cells} |")
    return "\n".join(lines)


def markdown(res: Results, chart: str | None) -> str:
    meta = res.meta
    mach = meta.get("machine", {})
    parts = [
        f"Run {meta.get('started', '')} on drkit {meta.get('git', '')}: "
        f"{meta.get('runs')} run(s) per figure, medians with (min{DASH}max); tools alternate "
        f"run by run. Workload: {meta.get('workload_text', '')}. drkit repositories: "
        + _repositories_text(meta),
        "",
        f"Machine: {mach.get('os')}, {mach.get('nproc')} CPUs ({mach.get('cpu')}), "
        f"{mach.get('mem_gib')} GiB, kernel {mach.get('kernel')}; load average "
        f"{meta.get('loadavg_start', '?')} at the start (other work on the machine slows "
        f"every tool alike, but adds noise).",
        "",
        "Versions: "
        + ", ".join(f"{k} {_short_version(v)}" for k, v in meta.get("versions", {}).items())
        + ".",
        "",
        measurement_table(res),
        "",
        ratio_table(res),
    ]
    if chart:
        parts += ["", f"![benchmark chart]({chart})"]
    prof = profile_section(res.profile)
    steps = restore_steps_section(res.meta.get("restore_steps"))
    if steps:
        parts += ["", steps]
    asked = requests_section(res.meta.get("s3_requests"))
    if asked:
        parts += ["", asked]
    if prof:
        parts += ["", prof]
    notes = meta.get("notes", [])
    if notes:
        parts += ["", *[f"- {n}" for n in notes]]
    parts += ["", "Commands (secrets are environment variables, never arguments):", ""]
    for m in res.measurements.values():
        if m.runs and m.command:
            parts.append(f"- {m.label}: `{m.command}`")
    return "\n".join(parts) + "\n"


# ---- chart ------------------------------------------------------------------

_COLORS = {"floor": "#9e9e9e", "drkit": "#1f77b4", "peer": "#ff7f0e", "derived": "#2ca02c"}


def chart(res: Results, path: Path) -> None:
    """Wall time (left) and the tool's peak RSS (right), median with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in res.measurements.values() if m.stat("wall_s") is not None]
    labels = [f"{m.phase}: {m.label}" for m in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.32 * len(rows) + 1.5), sharey=True)
    for ax, name, title in (
        (ax1, "wall_s", "wall time, s"),
        (ax2, "main_rss_mib", "tool peak RSS, MiB"),
    ):
        stats = [m.stat(name) for m in rows]
        med = [s.median if s else 0.0 for s in stats]
        err = [[s.median - s.low if s else 0.0 for s in stats],
               [s.high - s.median if s else 0.0 for s in stats]]  # fmt: skip
        ax.barh(range(len(rows)), med, xerr=err, color=[_COLORS.get(m.role, "#555") for m in rows])
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    ax2.axvline(64, color="red", linestyle="--", linewidth=1)
    ax1.set_yticks(range(len(rows)), labels, fontsize=8)
    ax1.invert_yaxis()
    fig.suptitle(f"drkit bench {res.meta.get('started', '')} ({res.meta.get('git', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- files ------------------------------------------------------------------


def output_stem(directory: Path, quick: bool) -> str:
    """``YYYY-MM-DD`` (``-quick``), with ``-2``, ``-3`` ... if that day already has one."""
    stem = dt.date.today().isoformat() + ("-quick" if quick else "")
    n, candidate = 1, stem
    while (directory / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


DOC_HEADER = """# Benchmarks

`make bench` (bench/run.py) measures drkit against restic, borg and the
pipeline floors on the bench-1G workload of issue 8, in one session, tools
alternating run by run. Figures below are regenerated by each full run
(between the markers); notes outside the markers are written by hand.
Run `make bench` (about 20 minutes), or `.venv/bin/python bench/run.py --help`.

"""


def update_docs(doc: Path, body: str) -> None:
    """Replace the generated block of ``doc`` (created with a header if missing)."""
    text = doc.read_text() if doc.exists() else DOC_HEADER + f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{head}{BEGIN}\n{body.rstrip()}\n{END}{tail}")


def write_outputs(
    res: Results, directory: Path, *, stem: str, docs: Path | None
) -> dict[str, Path]:
    """Write JSON, Markdown and PNG into ``directory`` (and the docs block); return paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    chart(res, paths["png"])
    paths["json"].write_text(json.dumps(res.as_json(), indent=1) + "\n")
    paths["md"].write_text(markdown(res, paths["png"].name))
    if docs is not None:
        rel = os.path.relpath(paths["png"], docs.parent)
        update_docs(docs, markdown(res, rel))
        paths["docs"] = docs
    return paths


def load(path: Path) -> Results:
    """Results as ``write_outputs`` saved them (labels and targets from this code)."""
    data = json.loads(path.read_text())
    skip = ("measurements", "ratios", "ceilings", "profile")
    res = Results(meta={k: v for k, v in data.items() if k not in skip})
    declare_all(
        res,
        str(data.get("phases", "abcdef")),
        int(data.get("rss_factor", 10)),
        int(data.get("fleet_hosts", 4)),
        dedup=bool(data.get("dedup_variant")),
    )
    for m in data["measurements"]:
        res.declare(m["phase"], m["key"], m["label"], m["role"], m["command"])
        res.measurements[(m["phase"], m["key"])].runs = list(m["runs"])
    res.profile = data.get("profile")
    raw = path.with_name(f"{path.stem}-backup-profile.txt.gz")
    if res.profile and raw.exists():
        res.profile.update(summarize_profile(gzip.decompress(raw.read_bytes()).decode()))
    return res


def main(argv: list[str] | None = None) -> int:
    """Re-render a saved run: ``python bench/report.py RESULTS.json [--docs FILE]``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("json", type=Path, help="bench/results/<date>.json")
    ap.add_argument("--docs", type=Path, help="also replace the generated block of this file")
    args = ap.parse_args(argv)
    res = load(args.json)
    for kind, out in write_outputs(
        res, args.json.parent, stem=args.json.stem, docs=args.docs
    ).items():
        print(f"wrote {kind}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
