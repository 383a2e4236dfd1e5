"""Drills under kill -9 and SIGTERM (#19 item 2): ``drkit drill`` of a small host (a files
tree and an env file, a local repository) in a real container, signalled at a seeded
moment after its container appeared (starting, restoring or checking).

Invariants: SIGTERM is a clean stop (exit 143, naming the host and the next step; its
container and network removed at once); after either signal no report of the stopped
drill is recorded (the repository's signed reports are all status and prune read) and
the next drill runs and passes with no manual step; after it no drill container or
network of the host is left (the next drill removes a killed one's and says so).

Few and slow (each drill copies the image on vfs): two scenarios, one signal each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.faults.campaign import Row, iterations, recorded, seeded
from tests.faults.crash import Started, make_tree, no_traceback
from tests.helpers import CliResult, drkit, write_policy

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.timeout(1500)]

DRILL_HOST = "fltd"
IMAGE = "conversational-platform"  # any shipped host image: the drill file names it


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    from drkit.drills.engine import DockerError, ensure_engine, stop_engine

    try:
        running = ensure_engine()
    except DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the drill faults, but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine can be started here: {exc}")
    yield
    stop_engine(running)


def labelled(kind: str) -> list[str]:
    """Names of the drill containers (``kind`` "ps") or networks ("network") of the host."""
    argv = ["docker", "ps", "-a"] if kind == "ps" else ["docker", "network", "ls"]
    out = subprocess.run(
        [
            *argv,
            "--filter",
            "label=org.drkit.drill=1",
            "--filter",
            f"label=org.drkit.host={DRILL_HOST}",
            "--format",
            "{{.Names}}" if kind == "ps" else "{{.Name}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(out.split())


def left() -> list[str]:
    return [f"container {n}" for n in labelled("ps")] + [
        f"network {n}" for n in labelled("network")
    ]


class DrillHost:
    """A host with a files tree and an env file, backed up once into a local repository."""

    def __init__(self, tmp: Path, keys: Keys) -> None:
        self.tmp, self.keys = tmp, keys
        tree, app = tmp / "tree", tmp / "app"
        make_tree(tree, seeded("drill-host", 0), 30, 8 * 1024)
        app.mkdir()
        (app / "svc.env").write_text("PORT=3000\nTOKEN=drill-fault\n")
        self.repo = tmp / "repo"
        self.policy = write_policy(
            tmp / f"{DRILL_HOST}.toml",
            DRILL_HOST,
            {"url": self.repo.as_uri()},
            [keys.recipient],
            [
                {"kind": "files", "name": "tree", "paths": [str(tree)]},
                {"kind": "env", "name": "env", "paths": [f"{app}/*.env"]},
            ],
        )
        drills = tmp / "drills"
        drills.mkdir()
        (drills / f"{DRILL_HOST}.toml").write_text(
            f'host = "{DRILL_HOST}"\nimage = "{IMAGE}"\n\n[[file]]\npath = "{app}/svc.env"\n'
        )
        self.argv = [
            "drill",
            "--policy",
            str(self.policy),
            "--drills-dir",
            str(drills),
            "--identity",
            str(keys.identity_file),
            "--json",
        ]
        backup = drkit("backup", "--policy", str(self.policy))
        assert backup.returncode == 0, backup.output

    def reports(self) -> dict[str, str]:
        """The drill reports in the repository: id -> verdict."""
        out = {}
        for p in sorted((self.repo / DRILL_HOST / "drills").glob("*.json")):
            doc = json.loads(p.read_text())
            report = doc.get("report", doc)
            out[p.stem] = str(report.get("verdict", "?"))
        return out

    def drill(self) -> CliResult:
        res = drkit(*self.argv)
        no_traceback(res)
        return res


def signalled(host: DrillHost, sig: int, delay: float) -> tuple[str, CliResult]:
    """``drkit drill`` sent ``sig`` ``delay`` seconds after its container appeared:
    (when it came, its result)."""
    run = Started.run(host.argv, {})
    try:
        deadline = time.monotonic() + 600
        while not labelled("ps") and run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        appeared = time.monotonic() - run.t0
        sent = run.signal_at(appeared + delay, sig)
        when = f"{appeared + delay:.1f} s ({delay:.1f} s after its container appeared)"
        return (when if sent else "after it ended"), run.result(timeout=600)
    finally:
        run.reap()


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGKILL, id="kill9"), pytest.param(signal.SIGTERM, id="sigterm")]
)
def test_drill_signalled(sig: int, engine: None, tmp_path: Path, keys: Keys) -> None:
    term = sig == signal.SIGTERM
    n = iterations(1)
    row = Row(
        f"drill (files + env, local repository, image {IMAGE})",
        "SIGTERM to drkit" if term else "kill -9 (drkit's process group)",
        "a seeded moment after its container appeared",
        n,
        (
            "exit 143 naming host and next step, container and network removed at once; "
            if term
            else ""
        )
        + "no report of it recorded; the next drill passes; nothing of either left",
    )
    with recorded(row) as outcomes:
        stale = left()
        assert not stale, f"drill containers of {DRILL_HOST} before the test: {stale}"
        host = DrillHost(tmp_path, keys)
        for i in range(n):
            before = host.reports()
            delay = seeded(f"drill-{sig}", i).uniform(0.0, 3.0)
            when, res = signalled(host, sig, delay)
            no_traceback(res)
            if when == "after it ended":
                outcomes["done before the signal"] = outcomes.get("done before the signal", 0) + 1
                assert res.returncode == 0, res.output
                before = host.reports()
            else:
                row.injected += 1
                after = host.reports()
                new = {k: v for k, v in after.items() if k not in before}
                if new:
                    row.bad += len(new)
                assert not new, f"the stopped drill recorded a report: {new}\n{res.output}"
                if term:
                    assert res.returncode == 143, f"SIGTERM: exit {res.returncode}\n{res.output}"
                    for word in (
                        "SIGTERM",
                        f"host {DRILL_HOST}",
                        f"drkit drill --host {DRILL_HOST}",
                    ):
                        assert word in res.stderr, f"the stop does not say {word!r}:\n{res.output}"
                    row.excerpt = row.excerpt or res.stderr.strip().splitlines()[-1][:240]
                    at_once = left()
                    assert not at_once, f"SIGTERM left {at_once}\n{res.output}"
                    outcomes["stopped, exit 143"] = outcomes.get("stopped, exit 143", 0) + 1
                else:
                    outcomes["killed"] = outcomes.get("killed", 0) + 1
                row.observed.append(
                    f"signal {i + 1} at {when}: left {', '.join(left()) or 'nothing'}"
                )
            nxt = host.drill()
            if nxt.returncode != 0:
                row.recovered = False
            assert nxt.returncode == 0, f"the next drill failed:\n{nxt.output}"
            [report] = json.loads(nxt.stdout)["drills"]
            assert report["verdict"] == "pass", report
            swept = [c["detail"] for c in report["checks"] if c["name"].startswith("leftovers")]
            if swept:
                row.observed.append(f"the next drill removed: {swept[0][:160]}")
            after = left()
            if after:
                row.recovered = False
            assert not after, f"left after the next drill: {after}\n{nxt.output}"
            assert set(host.reports()) - set(before), "the next drill recorded no report"
