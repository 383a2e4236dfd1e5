"""Drill verdicts as JSON (stored in the repository and catalog), JUnit XML and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from drkit.sources.base import Check


@dataclass
class DrillReport:
    host: str
    drill_id: str
    snapshot: str
    started: str
    finished: str
    verdict: str
    rto_seconds: float  # container start -> all checks done
    rpo_seconds: float  # age of the oldest source snapshot used when the drill started
    image_build_seconds: float  # reported apart from the RTO
    image: str  # the tag, drkit-host-<image_name>:<hash>
    image_built: bool = False  # False: the image's Dockerfile was unchanged, nothing was built
    image_name: str = ""  # docker/hosts/<image_name>/
    image_from: str = ""  # what chose it: "--image", the drill file's path, "the host name"
    container: str = ""  # the container's name, drkit-drill-<host>-<snapshot>[-N]
    base_image: str = ""  # the base tag the image was built FROM (drkit-base:...)
    base_from: str = ""  # how the base was made and why: debootstrap or a registry image
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    # Every snapshot the restore took a source from (``snapshot`` is the newest):
    # a passing drill proves them all, so prune keeps them all.
    snapshots: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["format"] = "drkit-drill"
        data["version"] = 1
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def junit_xml(reports: list[DrillReport]) -> bytes:
    suites = ET.Element("testsuites", name="drkit drill")
    for r in reports:
        failures = sum(c.status == "fail" for c in r.checks) + (1 if r.error else 0)
        suite = ET.SubElement(
            suites, "testsuite", name=f"drill {r.host}", tests=str(len(r.checks) + bool(r.error)),
            failures=str(failures), time=f"{r.rto_seconds:.1f}",
        )  # fmt: skip
        props = ET.SubElement(suite, "properties")
        for k, v in (("snapshot", r.snapshot), ("rto_seconds", f"{r.rto_seconds:.1f}"),
                     ("rpo_seconds", f"{r.rpo_seconds:.0f}"), ("verdict", r.verdict),
                     ("image", r.image), ("image_name", r.image_name),
                     ("image_from", r.image_from), ("container", r.container),
                     ("image_build_seconds", f"{r.image_build_seconds:.1f}"),
                     ("image_built", str(r.image_built).lower()),
                     ("base_image", r.base_image), ("base_from", r.base_from)):  # fmt: skip
            ET.SubElement(props, "property", name=k, value=v)
        if r.error:
            case = ET.SubElement(suite, "testcase", classname=r.host, name="drill")
            ET.SubElement(case, "error", message=r.error)
        for c in r.checks:
            case = ET.SubElement(suite, "testcase", classname=f"{r.host}.{c.source}", name=c.name)
            if c.status == "fail":
                ET.SubElement(case, "failure", message=c.detail)
            elif c.status == "warn":
                ET.SubElement(case, "system-out").text = f"WARNING: {c.detail}"
    return bytes(ET.tostring(suites, encoding="utf-8", xml_declaration=True))


def markdown(reports: list[DrillReport]) -> str:
    lines = ["# drkit restore drills", ""]
    lines += [
        "| host | verdict | snapshot | RTO | RPO | image | image build |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.host} | **{r.verdict.upper()}** | {r.snapshot} | {r.rto_seconds:.1f} s | "
            f"{r.rpo_seconds / 3600:.1f} h | {r.image_name or '-'} | "
            f"{r.image_build_seconds:.1f} s ({'built' if r.image_built else 'cached'}) |"
        )
    for r in reports:
        lines += ["", f"## {r.host}: {r.verdict}", ""]
        if r.image_name:
            lines += [
                f"Image `{r.image_name}` ({r.image or 'not built'}; chosen by {r.image_from}), "
                f"container `{r.container or 'none'}`."
                + (f" Base `{r.base_image}`: {r.base_from}." if r.base_image else ""),
                "",
            ]
        if r.error:
            lines += [f"**Error:** {r.error}", ""]
        if not r.checks:
            continue
        lines += ["| status | source | check | evidence |", "|---|---|---|---|"]
        for c in r.checks:
            detail = c.detail.replace("|", "\\|")
            lines.append(f"| {c.status} | {c.source} | {c.name} | {detail} |")
    return "\n".join(lines) + "\n"
