"""Prometheus metrics as a node_exporter textfile (``--collector.textfile.directory``).

One series per host and source (labels ``host``, ``source``):

- ``drkit_last_success_timestamp_seconds``: start time of the newest complete
  snapshot holding the source (0 if there is none yet, so ``time() - x`` is
  huge and an RPO alert fires for a source that was never backed up);
- ``drkit_snapshot_bytes``: bytes stored for the source in that snapshot;
- ``drkit_last_drill_success``: 1 if the newest drill passed, 0 if it failed
  (absent until a drill ran);
- ``drkit_rpo_seconds``: the policy's RPO (absent if none is set);
- ``drkit_source_warnings``: warnings the source filed in that snapshot (e.g. a
  NATS memory stream no snapshot can hold; 0 when none).

One series per host (label ``host`` only):

- ``drkit_discover_uncovered``: data-bearing things (volumes, databases, .env
  files, compose projects...) discovery found on the host at its newest backup
  that no source of its policy covers (absent when discovery did not run).
  Alert on ``> 0``; ``drkit discover --host H --suggest`` says what to add.

Alert when ``time() - drkit_last_success_timestamp_seconds > drkit_rpo_seconds``.

Several hosts (one cron run each, or ``--all``) may share one file: a write
replaces the series of the hosts it is given and keeps the others, under a
flock, and lands with a rename so the collector never reads half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from drkit.repository.manifest import Manifest, snapshot_time


@dataclass(frozen=True)
class SourceMetrics:
    """The metrics of one source of one host; None means "no sample"."""

    host: str
    source: str
    last_success: float | None = None  # unix seconds
    snapshot_bytes: int | None = None
    last_drill_success: bool | None = None
    rpo_seconds: float | None = None
    warnings: int | None = None  # filed by the source in its newest snapshot
    uncovered: int | None = None  # the host's, repeated on each of its rows (rendered once)


Getter = Callable[[SourceMetrics], float | None]


def _drill(r: SourceMetrics) -> float | None:
    return None if r.last_drill_success is None else float(r.last_drill_success)


def _num(v: float | int | None) -> float | None:
    return None if v is None else float(v)


# name, HELP text, value (None: no sample).
METRICS: tuple[tuple[str, str, Getter], ...] = (
    (
        "drkit_last_success_timestamp_seconds",
        "Start time of the newest complete snapshot holding this source (0: none yet).",
        lambda r: r.last_success if r.last_success is not None else 0.0,
    ),
    (
        "drkit_snapshot_bytes",
        "Bytes stored for this source in its newest complete snapshot.",
        lambda r: _num(r.snapshot_bytes),
    ),
    (
        "drkit_last_drill_success",
        "1 if the newest restore drill of this source passed, 0 if it failed.",
        _drill,
    ),
    (
        "drkit_rpo_seconds",
        "Recovery point objective of the host's policy, in seconds.",
        lambda r: _num(r.rpo_seconds),
    ),
    (
        "drkit_source_warnings",
        "Warnings this source filed in its newest complete snapshot (what they say: "
        "drkit restore --plan).",
        lambda r: _num(r.warnings),
    ),
)


# Families with one sample per host (label ``host`` only), from any of its rows.
HOST_METRICS: tuple[tuple[str, str, Getter], ...] = (
    (
        "drkit_discover_uncovered",
        "Data-bearing things on the host that no source of its policy backs up, as "
        "discovery found them at the newest backup (drkit discover --host H).",
        lambda r: _num(r.uncovered),
    ),
)


def escape_label(value: str) -> str:
    """A label value for the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render(rows: Iterable[SourceMetrics]) -> str:
    """The text exposition of ``rows``: each family's HELP and TYPE, then its samples."""
    ordered = sorted(
        {(r.host, r.source): r for r in rows}.values(), key=lambda r: (r.host, r.source)
    )
    out: list[str] = []
    for name, help_text, get in METRICS:
        out.append(f"# HELP {name} {escape_help(help_text)}")
        out.append(f"# TYPE {name} gauge")
        for r in ordered:
            value = get(r)
            if value is None:
                continue
            labels = f'host="{escape_label(r.host)}",source="{escape_label(r.source)}"'
            out.append(f"{name}{{{labels}}} {format_value(value)}")
    for name, help_text, get in HOST_METRICS:
        out.append(f"# HELP {name} {escape_help(help_text)}")
        out.append(f"# TYPE {name} gauge")
        per_host: dict[str, float] = {}
        for r in ordered:
            value = get(r)
            if value is not None:
                per_host.setdefault(r.host, value)
        for host, value in per_host.items():
            out.append(f'{name}{{host="{escape_label(host)}"}} {format_value(value)}')
    return "\n".join(out) + "\n"


def metrics_for_host(
    host: str,
    manifests: Iterable[Manifest],
    sources: Iterable[str],
    *,
    rpo_seconds: float | None = None,
    drill_success: Mapping[str, bool] | bool | None = None,
    uncovered: int | None = None,
) -> list[SourceMetrics]:
    """One row per source name in ``sources`` from the host's committed manifests.

    ``drill_success``: per source, or one verdict for the whole host, or None
    if no drill ran. ``uncovered``: the host's discovery count (None: not run).
    """
    newest: dict[str, Manifest] = {}
    for m in sorted(manifests, key=lambda m: m.snapshot):
        if m.status != "complete":
            continue
        for s in m.sources:
            newest[s.name] = m
    rows = []
    for name in sources:
        latest = newest.get(name)
        record = latest.source(name) if latest else None
        drill = drill_success.get(name) if isinstance(drill_success, Mapping) else drill_success
        rows.append(
            SourceMetrics(
                host=host,
                source=name,
                last_success=snapshot_time(latest.snapshot).timestamp() if latest else None,
                snapshot_bytes=sum(a.stored_size for a in record.artifacts) if record else None,
                last_drill_success=drill,
                rpo_seconds=rpo_seconds,
                warnings=record.warnings if record else None,
                uncovered=uncovered,
            )
        )
    return rows


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")


def read_rows(text: str) -> list[SourceMetrics]:
    """Rows back from a file this module wrote; lines it does not recognise are dropped."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    host_values: dict[str, dict[str, float]] = {}
    host_names = {name for name, _, _ in HOST_METRICS}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, label_text, raw = match.groups()
        labels = {
            k: _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), v)
            for k, v in _LABEL.findall(label_text)
        }
        if "host" in labels and "source" not in labels and name in host_names:
            with contextlib.suppress(ValueError):
                host_values.setdefault(labels["host"], {})[name] = float(raw)
            continue
        if "host" not in labels or "source" not in labels:
            continue
        try:
            values.setdefault((labels["host"], labels["source"]), {})[name] = float(raw)
        except ValueError:
            continue
    rows = []
    for (host, source), v in values.items():
        last = v.get("drkit_last_success_timestamp_seconds")
        drill = v.get("drkit_last_drill_success")
        size = v.get("drkit_snapshot_bytes")
        warned = v.get("drkit_source_warnings")
        uncovered = host_values.get(host, {}).get("drkit_discover_uncovered")
        rows.append(
            SourceMetrics(
                host=host,
                source=source,
                last_success=last if last else None,
                snapshot_bytes=int(size) if size is not None else None,
                last_drill_success=None if drill is None else drill >= 1,
                rpo_seconds=v.get("drkit_rpo_seconds"),
                warnings=int(warned) if warned is not None else None,
                uncovered=int(uncovered) if uncovered is not None else None,
            )
        )
    return rows


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_textfile(
    path: Path, rows: Iterable[SourceMetrics], *, replace_hosts: Iterable[str] | None = None
) -> None:
    """Write ``rows`` to ``path`` atomically, keeping other hosts' series already there.

    ``replace_hosts``: hosts whose old series are dropped (default: the hosts
    in ``rows``). Raises OSError if the directory is not writable.
    """
    new = list(rows)
    replace = set(replace_hosts) if replace_hosts is not None else {r.host for r in new}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _flock(path):
        try:
            old = read_rows(path.read_text())
        except FileNotFoundError:
            old = []
        kept = [r for r in old if r.host not in replace]
        text = render(kept + new)
        # A temp name the collector ignores (it reads *.prom only), same directory.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # node_exporter runs as its own user
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
