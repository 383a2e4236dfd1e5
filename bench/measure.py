"""Measure a command tree: wall time, peak RSS, CPU; and the statistics over runs.

A measured command is a pipeline of stages (``pg_dump | zstd | age > out``)
or a single command (``drkit backup``) that starts its own children. While it
runs, a sampler thread reads ``VmHWM`` (the kernel's resident high-water mark)
from ``/proc/<pid>/status`` of every process in the tree every 20 ms:

- ``main_rss_mib``: the peak of the *tool's own* process (the stage marked
  ``main``: drkit, restic, borg, age ...);
- ``children_rss_mib``: the largest peak among every other process of the
  tree (other stages and their descendants: pg_dump, psql, gen_dump.py ...).

VmHWM only grows, so a 20 ms sampling period misses at most the growth of a
process's last 20 ms. A child caught between fork and exec still shares its
parent's pages (its VmHWM is the parent's RSS): such a sample, recognised by
a command line equal to its parent's, is not counted. (``wait4``'s
``ru_maxrss`` is not used for the same reason: it keeps the pre-exec peak.)

CPU: ``tree_cpu_s`` is user+system time of the tree (``RUSAGE_CHILDREN``
delta: the harness runs one measured command at a time); ``machine_cpu_s``
is the busy time of every CPU of the machine over the run (``/proc/stat``),
which includes servers (PostgreSQL, SeaweedFS) and anyone else's load.
"""

from __future__ import annotations

import os
import resource
import shlex
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")
SAMPLE_PERIOD = 0.02


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message names it and ends with its stderr."""


@dataclass(frozen=True)
class Stage:
    """One process of a pipeline; ``env`` is added to the harness's environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """Stages connected stdout -> stdin. ``main`` is the index of the measured tool.

    The last stage's stdout goes to ``stdout_path`` if given, is captured if
    ``capture``, else is discarded. ``stdin_path`` feeds the first stage.
    """

    stages: tuple[Stage, ...]
    main: int = 0
    stdout_path: Path | None = None
    stdin_path: Path | None = None
    capture: bool = False

    @classmethod
    def one(cls, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> Command:
        return cls((Stage(argv, env or {}),), **kw)

    def shell(self, shorten: dict[str, str] | None = None) -> str:
        """The command as a shell line, for the docs (``shorten`` maps long strings to names)."""

        def word(w: str) -> str:
            for long, short in (shorten or {}).items():
                w = w.replace(long, short)
            return shlex.quote(w) if not w.startswith("$") else w

        text = " | ".join(
            " ".join(
                [*(f"{k}=…" for k in sorted(s.env) if k.isupper()), *(word(a) for a in s.argv)]
            )
            for s in self.stages
        )
        if self.stdin_path:
            text += f" < {word(str(self.stdin_path))}"
        if self.stdout_path:
            text += f" > {word(str(self.stdout_path))}"
        return text


@dataclass(frozen=True)
class Sample:
    """One run of one command."""

    wall_s: float
    main_rss_mib: float
    children_rss_mib: float
    tree_cpu_s: float
    machine_cpu_s: float
    loadavg_before: float
    stdout: str = ""

    def figures(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 3),
            "main_rss_mib": round(self.main_rss_mib, 1),
            "children_rss_mib": round(self.children_rss_mib, 1),
            "tree_cpu_s": round(self.tree_cpu_s, 2),
            "machine_cpu_s": round(self.machine_cpu_s, 2),
            "loadavg_before": round(self.loadavg_before, 2),
        }


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds ``pid`` has used so far (0 when it is gone or unknown):
    the S3 server's share of a run is its difference before and after."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command name start at field 3 (state): utime, stime are 14, 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _ppids() -> dict[int, int]:
    """pid -> parent pid for every process (the command name may hold spaces or ')')."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            out[int(name)] = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(roots: Iterable[int]) -> dict[int, int]:
    """Every live descendant of ``roots`` (not the roots themselves) -> its parent."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        parent = todo.pop()
        for child in children.get(parent, []):
            if child not in found:
                found[child] = parent
                todo.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _busy_cpu_s() -> float:
    """Seconds every CPU of the machine spent not idle, since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class _Sampler(threading.Thread):
    def __init__(self, main: int, others: list[int]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.main, self.roots = main, [main, *others]
        self.main_kib = 0
        self.child_kib: dict[int, int] = {}  # pid -> VmHWM of its exec'd program
        self.stop = threading.Event()

    @property
    def children_kib(self) -> int:
        return max(self.child_kib.values(), default=0)

    def run(self) -> None:
        while True:
            self.tick()
            if self.stop.wait(SAMPLE_PERIOD):
                return

    def tick(self) -> None:
        self.main_kib = max(self.main_kib, _hwm_kib(self.main))
        tree = descendants(self.roots)
        tree.update({pid: 0 for pid in self.roots[1:]})  # other stages: exec'd by Popen
        for pid, parent in tree.items():
            if parent and _cmdline(pid) == _cmdline(parent):
                continue  # forked, not yet exec'd: it still shows its parent's pages
            hwm = _hwm_kib(pid)
            if hwm:
                # The latest value: VmHWM restarts at exec and only grows after it.
                self.child_kib[pid] = hwm


def _open_out(cmd: Command) -> IO[bytes] | int:
    if cmd.stdout_path is not None:
        return open(cmd.stdout_path, "wb")  # closed by run()
    return subprocess.PIPE if cmd.capture else subprocess.DEVNULL


def run(cmd: Command, *, env: dict[str, str] | None = None, timeout: float = 3600) -> Sample:
    """Run ``cmd`` once, measured. Raises CommandFailed if any stage exits non-zero."""
    base_env = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen[bytes]] = []
    stdin: IO[bytes] | int | None = open(cmd.stdin_path, "rb") if cmd.stdin_path else None  # noqa: SIM115
    out = _open_out(cmd)
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = _busy_cpu_s()
    t0 = time.monotonic()
    try:
        for i, stage in enumerate(cmd.stages):
            last = i == len(cmd.stages) - 1
            procs.append(
                subprocess.Popen(
                    stage.argv,
                    stdin=stdin,
                    stdout=out if last else subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**base_env, **stage.env},
                )
            )
            if stdin is not None and not isinstance(stdin, int):
                stdin.close()  # the child holds its own copy now
            stdin = procs[-1].stdout if not last else None
        main = procs[cmd.main]
        sampler = _Sampler(main.pid, [p.pid for p in procs if p is not main])
        sampler.start()
        errs = {p.pid: _drain(p.stderr) for p in procs}
        stdout_data = _drain(procs[-1].stdout) if cmd.capture else None
        _wait_all(procs, timeout)
        wall = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    finally:
        if not isinstance(out, int):
            out.close()
    busy = _busy_cpu_s() - busy0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    failed = [(i, p) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        i, p = failed[0]
        err = b"".join(errs[p.pid]()).decode(errors="replace")[-3000:]
        raise CommandFailed(
            f"`{cmd.shell()}`: stage {i + 1} ({cmd.stages[i].argv[0]}) exited with status "
            f"{p.returncode}: {err}"
        )
    return Sample(
        wall_s=wall,
        main_rss_mib=sampler.main_kib / 1024,
        children_rss_mib=sampler.children_kib / 1024,
        tree_cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        machine_cpu_s=busy,
        loadavg_before=load,
        stdout=b"".join(stdout_data()).decode(errors="replace") if stdout_data else "",
    )


def _drain(stream: IO[bytes] | None) -> Any:
    """Read ``stream`` to its end in a thread (no pipe fills up); call the result to join."""
    chunks: list[bytes] = []
    if stream is None:
        return lambda: chunks

    def read() -> None:
        while data := stream.read(1 << 16):
            chunks.append(data)

    t = threading.Thread(target=read, daemon=True)
    t.start()

    def join() -> list[bytes]:
        t.join()
        return chunks

    return join


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for every stage (TimeoutExpired after ``timeout`` seconds in all)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))


# ---- statistics ---------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Median with min-max over ``n`` values."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self, digits: int = 3) -> dict[str, float]:
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
            "n": self.n,
        }

    def text(self, fmt: str = "{:.2f}") -> str:
        if self.n == 1:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} ({fmt.format(self.low)}\u2013{fmt.format(self.high)})"


def pairwise_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Stat:
    """Ratios of the same rounds' values (round i over round i), then their Stat."""
    if len(numerators) != len(denominators):
        raise ValueError("ratio of series with different numbers of rounds")
    return Stat.of([a / b for a, b in zip(numerators, denominators, strict=True) if b > 0])


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` started at a different place each round, so drift hits every tool alike."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]
