"""The fleet report as one static HTML page (``drkit report --html``).

Self-contained: CSS and SVG charts inline, no script at all and a Content Security
Policy that allows none and no network, so the page works offline and as a CI
artifact. Every string that comes from a repository (snapshot ids of untrusted
snapshots, check details a restored application printed, error texts) goes
through ``esc``: a hostile bucket writer cannot inject markup. The CSP is the
second line of defence, not the first.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from drkit.actions.report import DrillRow, FleetReport, HostReport, SnapshotRow
from drkit.durations import format_duration

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
# Chart geometry (SVG user units; the SVG scales to the column's width).
W, H, PAD = 320, 96, 8
AXIS = 14  # below the plot: the first and last points' dates
TOP = 16  # above the plot: the scale's top value
T = TypeVar("T")

CSS = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;
--card:#f6f8fa;--ok:#1a7f37;--late:#9a6700;--bad:#cf222e;--accent:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9da7b3;
--line:#30363d;--card:#161b22;--ok:#3fb950;--late:#d29922;--bad:#f85149;--accent:#58a6ff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif}
header,main{max-width:72rem;margin:0 auto;padding:0 1rem}
h1{font-size:1.5rem;margin:1rem 0 .25rem}h2{font-size:1.25rem;margin:2rem 0 .5rem;
border-bottom:1px solid var(--line);padding-bottom:.25rem}
h3{font-size:1.05rem;margin:1.25rem 0 .5rem}
a{color:var(--accent)}
.muted{color:var(--muted)}
p,li,dd,figcaption,h3{overflow-wrap:anywhere}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;margin:.25rem 0 1rem}
caption{text-align:left;color:var(--muted);padding:.25rem 0}
th,td{border-bottom:1px solid var(--line);padding:.35rem .5rem;text-align:left;vertical-align:top}
thead th{background:var(--card);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{white-space:pre-wrap;word-break:break-word;background:var(--card);padding:.5rem;
border-radius:6px;margin:.25rem 0}
.badge{display:inline-block;padding:0 .45rem;border-radius:1rem;font-weight:600;
font-size:.85em;border:1px solid currentColor;white-space:nowrap}
.ok,.pass{color:var(--ok)}.late,.warn{color:var(--late)}.breach,.fail,.error,.unknown{color:var(--bad)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(17rem,1fr));gap:1rem}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.5rem}
figcaption{font-size:.9em;color:var(--muted)}
svg.chart{width:100%;height:auto;display:block}
svg.chart .axis{stroke:var(--line)}svg.chart text{fill:var(--muted);font-size:9px}
svg.chart .ref{stroke:var(--bad);stroke-dasharray:4 3}
svg.chart polyline{fill:none;stroke:var(--accent);stroke-width:2}
svg.chart circle{fill:var(--accent)}svg.chart circle.fail{fill:var(--bad)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.5rem 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;overflow-wrap:anywhere}
.failed{border-left:4px solid var(--bad);padding-left:.75rem;margin:.75rem 0}
footer{max-width:72rem;margin:2rem auto;padding:0 1rem;color:var(--muted);font-size:.85em}
@media (max-width:40rem){body{font-size:14px}th,td{padding:.3rem}
#fleet+.scroll table{min-width:40rem}
#fleet+.scroll th[scope=row]{position:sticky;left:0;background:var(--bg)}}
"""


PAGE = "index.html"


def write_page(report: FleetReport, directory: str | Path) -> Path:
    """The page as DIRECTORY/index.html (the directory made if missing), replaced
    whole: a reader never sees half a page."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PAGE
    tmp = folder / f".{PAGE}.tmp"
    tmp.write_text(render(report), encoding="utf-8")
    tmp.replace(path)
    return path


def esc(value: object) -> str:
    """Text for HTML content and quoted attributes: every string from a repository."""
    return html.escape(str(value), quote=True)


def when(t: dt.datetime | None) -> str:
    if t is None:
        return "never"
    return f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return format_duration(dt.timedelta(seconds=round(value)))


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def badge(state: str) -> str:
    # The state is in the text, not only in the colour.
    return f'<span class="badge {esc(state)}" data-state="{esc(state)}">{esc(state)}</span>'


def render(report: FleetReport) -> str:
    """The whole page."""
    ids = _anchors(h.host for h in report.hosts)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>drkit fleet report, {esc(when(report.generated))}</title>",
        f"<style>{CSS}</style></head><body>",
        _header(report),
        "<main>",
        _fleet_table(report, ids),
        _failed_checks(report, ids),
    ]
    parts += [_host_section(h, ids[h.host]) for h in report.hosts]
    parts += [
        "</main>",
        f"<footer>drkit {esc(report.version)}. Counted: trusted (signed) snapshots and drill "
        "reports only; untrusted ones are listed, never counted.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _anchors(hosts: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, host in enumerate(hosts):
        out[host] = f"host-{i}-" + re.sub(r"[^A-Za-z0-9_-]", "-", host)[:40]
    return out


def _header(report: FleetReport) -> str:
    failed = sum(1 for h in report.hosts if h.last_drill and h.last_drill.verdict == "fail")
    counts = ", ".join(
        f"{report.count(state)} {state}"
        for state in ("ok", "late", "breach", "unknown")
        if report.count(state) or state == "ok"
    )
    return (
        "<header><h1>drkit fleet report</h1>"
        f'<p class="muted">Generated {esc(when(report.generated))}. '
        f"{len(report.hosts)} host(s): {esc(counts)}; "
        f"{failed} with a failed newest drill.</p></header>"
    )


def _fleet_table(report: FleetReport, ids: dict[str, str]) -> str:
    rows = []
    for h in report.hosts:
        d = h.last_drill
        drill = (
            f"{badge(d.verdict)} {esc(when(d.started))}, RTO {esc(seconds(d.rto_seconds))}"
            if d
            else '<span class="muted">never drilled</span>'
        )
        age = seconds(h.age_seconds) if h.age_seconds is not None else "never"
        state = h.freshness if not h.error else "unknown"
        why = h.error or h.why
        rows.append(
            f'<tr data-host="{esc(h.host)}"><th scope="row"><a href="#{ids[h.host]}">'
            f"{esc(h.host)}</a></th><td>{badge(state)} <span class=muted>{esc(why)}</span></td>"
            f'<td class="num">{esc(age)}</td><td>{esc(h.rpo or "-")}</td><td>{drill}</td>'
            f"<td>{esc(_lock_text(h))}</td></tr>"
        )
    columns = ("Host", "Freshness", "Age", "RPO", "Newest drill", "Object Lock")
    caption = (
        "Each host's freshness against its RPO (ok; late: a scheduled backup is overdue; "
        "breach: older than the RPO) and its newest drill"
    )
    return (
        '<section aria-labelledby="fleet"><h2 id="fleet">Fleet</h2>'
        + _table(columns, "".join(rows), caption)
        + "</section>"
    )


def _lock_text(h: HostReport) -> str:
    if h.error:
        return "-"
    wanted = f"{h.object_lock_days} days required" if h.object_lock_days else "not required"
    return f"{wanted}; bucket: {h.object_lock or 'unknown'}"


UNSTORED = (
    "this run's drill, not in the repository (no signing key the policy trusts for drill "
    "reports, or it stopped before its report was stored): shown, not counted"
)


def _failed(d: DrillRow) -> bool:
    return d.verdict in ("fail", "error") or bool(d.failed_checks)


def _failed_checks(report: FleetReport, ids: dict[str, str]) -> str:
    """The newest drill's failed checks (and error) of each host, in full; and those of
    this run's drills the repository does not hold, said so."""
    blocks = []
    for h in report.hosts:
        shown = [(d, "") for d in h.drills[-1:] if _failed(d)]
        shown += [(d, UNSTORED) for d in h.unstored if _failed(d)]
        blocks += [_failed_block(h.host, ids[h.host], d, note) for d, note in shown]
    body = "".join(blocks) or "<p>No host's newest drill failed.</p>"
    return (
        '<section aria-labelledby="failed"><h2 id="failed">Failed checks of the newest '
        f"drills</h2>{body}</section>"
    )


def _failed_block(host: str, anchor: str, d: DrillRow, note: str) -> str:
    items = "".join(
        f"<li><strong>{esc(c.source)}: {esc(c.name)}</strong><pre>{esc(c.detail)}</pre></li>"
        for c in d.failed_checks
    )
    error = f"<p>Error:</p><pre>{esc(d.error)}</pre>" if d.error else ""
    kind = "unstored" if note else "stored"
    return (
        f'<div class="failed" data-host="{esc(host)}" data-drill="{kind}"><h3>'
        f'<a href="#{anchor}">{esc(host)}</a>: drill {esc(d.drill_id)} {badge(d.verdict)}</h3>'
        + (f"<p><strong>{esc(note)}</strong></p>" if note else "")
        + f'<p class="muted">Snapshot {esc(d.snapshot or "none")}, started '
        f"{esc(when(d.started))}; {len(d.failed_checks)} of {len(d.checks)} checks failed.</p>"
        f"{error}<ul>{items}</ul></div>"
    )


def _host_section(h: HostReport, anchor: str) -> str:
    head = f'<section aria-labelledby="{anchor}"><h2 id="{anchor}">{esc(h.host)}</h2>'
    if h.error:
        return (
            head
            + f"<p>{badge('unknown')} Could not be read:</p><pre>{esc(h.error)}</pre></section>"
        )
    facts = [
        ("Freshness", f"{badge(h.freshness)} {esc(h.why)}"),
        ("Newest snapshot", esc(h.last_snapshot or "none")),
        ("Repository", f"<code>{esc(h.repository)}</code>"),
        ("Object Lock", esc(_lock_text(h))),
    ]
    if h.last_error:
        facts.append(("Last run failed", f"<pre>{esc(h.last_error)}</pre>"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return "".join(
        [
            head,
            f'<dl class="facts">{dl}</dl>',
            _sources(h),
            _drills(h),
            _storage(h),
            _retention(h),
            _untrusted(h),
            "</section>",
        ]
    )


def _table(columns: Sequence[str], rows: str, caption: str = "") -> str:
    """A table in its own horizontal scroll box (a phone scrolls the table, not the
    page); ``columns`` and ``caption`` are the renderer's own words, ``rows`` escaped."""
    head = "".join(f'<th scope="col">{c}</th>' for c in columns)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _sources(h: HostReport) -> str:
    rows = "".join(
        f'<tr><th scope="row">{esc(s.name)}</th><td>{esc(s.kind)}</td>'
        f"<td>{esc(s.schedule or '-')}</td><td>{esc(when(s.last_time))}"
        f"{' ' + badge('late') if s.due and s.last_time is not None else ''}</td>"
        f'<td class="num">{esc(size(s.stored_bytes))}</td></tr>'
        for s in h.sources
    )
    columns = ("Source", "Kind", "Schedule", "Last backup", "Stored")
    return "<h3>Last backup per source</h3>" + _table(columns, rows)


def _drills(h: HostReport) -> str:
    d = h.last_drill
    out = ["<h3>Restore drills</h3>"]
    if d is None:
        out.append("<p>Never drilled (no trusted drill report in the repository).</p>")
    else:
        out.append(
            f"<p>Newest: drill {esc(d.drill_id)} {badge(d.verdict)} of snapshot "
            f"{esc(d.snapshot)}, {esc(when(d.started))}; RTO {esc(seconds(d.rto_seconds))}, "
            f"RPO {esc(seconds(d.rpo_seconds))}.</p>"
        )
        if d.error:
            out.append(f"<pre>{esc(d.error)}</pre>")
        out.append(_checks_table(d))
        out.append('<div class="cards">')
        out.append(
            _chart_figure(
                "rto", f"RTO of {h.host}'s drills", h.drills, lambda r: r.rto_seconds, seconds, None
            )
        )
        out.append(
            _chart_figure(
                "rpo",
                f"RPO at {h.host}'s drills",
                h.drills,
                lambda r: r.rpo_seconds,
                seconds,
                h.rpo_seconds,
            )
        )
        out.append("</div>")
        out.append(_drill_history(h.drills))
    for u in h.unstored:
        out.append(
            f"<p>Drill {esc(u.drill_id)} {badge(u.verdict)}: {esc(UNSTORED)}.</p>"
            + (f"<pre>{esc(u.error)}</pre>" if u.error else "")
            + (_checks_table(u, f"Checks of drill {esc(u.drill_id)}") if u.checks else "")
        )
    if h.refused_drills:
        items = "".join(
            f"<li><code>{esc(n)}</code>: {esc(why)}</li>" for n, why in h.refused_drills
        )
        out.append(f"<p>Drill reports refused (not counted):</p><ul>{items}</ul>")
    return "".join(out)


def _checks_table(d: DrillRow, caption: str = "Checks of the newest drill") -> str:
    if not d.checks:
        return "<p>No checks recorded.</p>"
    rows = "".join(
        f"<tr><td>{badge(c.status)}</td><td>{esc(c.source)}</td><td>{esc(c.name)}</td>"
        f"<td>{esc(c.detail)}</td></tr>"
        for c in d.checks
    )
    columns = ("Status", "Source", "Check", "Evidence")
    return _table(columns, rows, caption)


def _drill_history(drills: Sequence[DrillRow]) -> str:
    rows = "".join(
        f"<tr><td>{esc(when(d.started))}</td><td>{esc(d.drill_id)}</td><td>{badge(d.verdict)}</td>"
        f'<td class="num">{esc(seconds(d.rto_seconds))}</td>'
        f'<td class="num">{esc(seconds(d.rpo_seconds))}</td></tr>'
        for d in reversed(drills)
    )
    columns = ("Started", "Drill", "Verdict", "RTO", "RPO")
    return (
        "<details><summary>Drill history (the charts' data)</summary>"
        + _table(columns, rows)
        + "</details>"
    )


def _storage(h: HostReport) -> str:
    snaps = h.snapshots
    out = ["<h3>Stored bytes</h3>"]
    if not snaps:
        return out[0] + "<p>No trusted snapshot.</p>"
    out.append('<div class="cards">')
    out.append(
        _chart_figure(
            "stored",
            f"Stored bytes per snapshot of {h.host}",
            snaps,
            lambda s: s.stored_bytes,
            size,
            None,
        )
    )
    for src in h.sources:
        holding = [s for s in snaps if src.name in s.by_source]
        if holding:
            out.append(
                _chart_figure(
                    f"stored-source-{src.name}",
                    f"Stored bytes of source {src.name}",
                    holding,
                    _bytes_of(src.name),
                    size,
                    None,
                )
            )
    out.append("</div>")
    return "".join(out)


def _bytes_of(source: str) -> Callable[[SnapshotRow], float | None]:
    return lambda s: s.by_source.get(source)


def _retention(h: HostReport) -> str:
    out = [f"<h3>Retention</h3><p>Rules: {esc(h.retention)}.</p>"]
    if h.retention_error:
        out.append(
            f"<p>{badge('error')} What prune keeps could not be read:</p>"
            f"<pre>{esc(h.retention_error)}</pre>"
        )
    if not h.snapshots:
        return "".join(out)
    kept = sum(1 for s in h.snapshots if s.keep)
    gone = sum(1 for s in h.snapshots if s.keep is False)
    out.append(
        f"<p>{len(h.snapshots)} trusted snapshot(s); a prune now would keep {kept} and "
        f"remove {gone}.</p>"
    )
    rows = "".join(_snapshot_tr(s) for s in reversed(h.snapshots))
    columns = ("Snapshot", "Stored", "Prune", "Why")
    out.append(
        "<details><summary>Every snapshot, kept or not, and why</summary>"
        + _table(columns, rows)
        + "</details>"
    )
    return "".join(out)


def _snapshot_tr(s: SnapshotRow) -> str:
    verdict = "-" if s.keep is None else "keep" if s.keep else "remove"
    return (
        f'<tr><td><code>{esc(s.snapshot)}</code></td><td class="num">{esc(size(s.stored_bytes))}'
        f"</td><td>{esc(verdict)}</td><td>{esc('; '.join(s.reasons))}</td></tr>"
    )


def _untrusted(h: HostReport) -> str:
    if not h.untrusted:
        return ""
    items = "".join(f"<li><code>{esc(sid)}</code>: {esc(why)}</li>" for sid, why in h.untrusted)
    return (
        f"<h3>Untrusted snapshots ({len(h.untrusted)}, not counted)</h3>"
        f'<ul class="untrusted">{items}</ul>'
    )


def _chart_figure(
    kind: str,
    title: str,
    rows: Sequence[T],
    value: Callable[[T], float | None],
    fmt: Callable[[float], str],
    ref: float | None,
) -> str:
    """A line chart of ``value`` over ``rows`` (oldest first) with one dot per point; its
    text alternative says how many points, the range and the newest value (the data
    itself is in the page's tables)."""
    points = [(r, v) for r in rows if (v := value(r)) is not None]
    if not points:
        return f"<figure><figcaption>{esc(title)}: no data</figcaption></figure>"
    values = [v for _, v in points]
    top = max(values + ([ref] if ref is not None else [])) or 1.0
    n = len(points)

    def x(i: int) -> float:
        return PAD + (W - 2 * PAD) * (i / (n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return H - PAD - (H - PAD - TOP) * (v / top)

    first, last = _date(points[0][0]), _date(points[-1][0])
    labels = (
        f'<text x="{PAD}" y="{TOP - 6}">{esc(fmt(top))}</text>'
        f'<text x="{PAD}" y="{H + AXIS - 3}">{esc(first)}</text>'
        f'<text x="{W - PAD}" y="{H + AXIS - 3}" text-anchor="end">{esc(last)}</text>'
    )

    summary = (
        f"{title}: {n} point(s), lowest {fmt(min(values))}, highest {fmt(max(values))}, "
        f"newest {fmt(values[-1])}" + (f"; the line marks the RPO, {fmt(ref)}" if ref else "")
    )
    coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
    dots = "".join(
        f'<circle class="pt{_fail_class(r)}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5">'
        f"<title>{esc(_label(r))}: {esc(fmt(v))}</title></circle>"
        for i, (r, v) in enumerate(points)
    )
    ref_line = (
        f'<line class="ref" x1="{PAD}" x2="{W - PAD}" y1="{y(ref):.1f}" y2="{y(ref):.1f}"/>'
        if ref
        else ""
    )
    return (
        f'<figure><svg class="chart" data-chart="{esc(kind)}" viewBox="0 0 {W} {H + AXIS}" '
        f'role="img" aria-label="{esc(summary)}"><title>{esc(summary)}</title>'
        f'<line class="axis" x1="{PAD}" x2="{W - PAD}" y1="{H - PAD}" y2="{H - PAD}"/>'
        f'{ref_line}{labels}<polyline points="{coords}"/>{dots}</svg>'
        f"<figcaption>{esc(title)}: newest {esc(fmt(values[-1]))}, {n} point(s)</figcaption>"
        "</figure>"
    )


def _label(row: object) -> str:
    if isinstance(row, DrillRow):
        return f"{when(row.started)} drill {row.drill_id} {row.verdict}"
    if isinstance(row, SnapshotRow):
        return row.snapshot
    return ""


def _date(row: object) -> str:
    if isinstance(row, DrillRow):
        return f"{row.started.astimezone(dt.UTC):%Y-%m-%d}"
    if isinstance(row, SnapshotRow):
        return f"{row.time.astimezone(dt.UTC):%Y-%m-%d}"
    return ""


def _fail_class(row: object) -> str:
    return " fail" if isinstance(row, DrillRow) and row.verdict == "fail" else ""
