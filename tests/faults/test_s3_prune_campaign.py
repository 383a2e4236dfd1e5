"""The prune part of the fault campaign (#19): ``drkit prune`` on whole artifacts and
prune with chunk GC (``[repository] dedup = true``) under S3 faults through the proxy
(tests/servers/s3faults.py): on the listings, on DELETE, on the manifest, index and
lock reads, and a kill -9 mid-run.

Every iteration backs up until retention (``keep_last = 2``) has two snapshots to
remove, prunes under the fault, checks ``PruneBench.check_after`` (nothing retention
keeps is gone or missing an object, every listed snapshot verifies, no lock left),
reruns prune without faults and checks ``PruneBench.check_converged``; at the end
every listed snapshot verifies and restores equal (tests/faults/campaign.py). All are
marked ``faults``: `make faults` runs them, `make test` does not.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.faults.campaign import (
    HOST,
    MiB,
    PruneBench,
    Row,
    check_failure,
    fault_words,
    faults_for,
    iterations,
    kill,
    recorded,
    seeded,
)
from tests.helpers import CliResult
from tests.servers.s3faults import Fault, S3FaultProxy, fault_proxy
from tests.servers.seaweed import SeaweedServer

# The host's snapshot listing (prune lists it twice: the directories, then read_host),
# not one snapshot directory's (``.../snapshots/<id>/``).
SNAP_LIST = r"list-type=2&prefix=drkit%2Fflt%2Fsnapshots%2F&"
# Chunks live in packs since #20 (``<host>/packs/``); one object per chunk before.
CHUNK_LIST = r"list-type=2&prefix=drkit%2Fflt%2F(chunks|packs)%2F&"
SNAP_OBJECT = r"/flt/snapshots/"
MANIFEST = r"/snapshots/[^/?]+/manifest\.json$"
KEPT = "{kept}"  # replaced by a snapshot retention keeps, chosen by the seed
INDEX = r"/snapshots/{kept}/db/dump$"
CHUNK = r"/flt/(chunks|packs)/"
LOCK = r"/flt/locks/"

EXPECTED = {
    "succeeds": "retried or ridden out: succeeds; rerun converges",
    "fails closed": "fails closed; rerun converges",
    "killed": "killed; rerun converges",
}


@dataclass(frozen=True)
class PruneScenario:
    name: str
    fault: Fault
    injection: str  # where, in words
    outcome: str  # succeeds | fails closed | killed (a key of EXPECTED)
    skip: int = 1  # the seeded injection point: after 0..skip-1 matching requests
    after: int = 1  # and, for body faults, after 0..after-1 bytes

    @property
    def dedup(self) -> bool:
        return self.name.startswith("pd-")

    @property
    def operation(self) -> str:
        return "prune + chunk GC (dedup)" if self.dedup else "prune"

    @property
    def words(self) -> str:
        return "kill -9 mid-run" if self.outcome == "killed" else fault_words(self.fault)


P = PruneScenario
STALL = 120.0  # a killed run's request: never answered while the test looks

SCENARIOS = [
    # -- whole artifacts ---------------------------------------------------------
    P(
        "p-500-list",
        Fault("status", "GET", SNAP_LIST),
        "one of the two snapshot listings",
        "succeeds",
        skip=2,
    ),
    P(
        "p-503-list-forever",
        Fault("status", "GET", SNAP_LIST, status=503, code="SlowDown", times=0),
        "every snapshot listing",
        "fails closed",
    ),
    P(
        "p-omit-kept-manifest",
        Fault("omit_key", "GET", SNAP_LIST, key=f"{KEPT}/manifest.json"),
        "a snapshot listing omits a kept snapshot's manifest",
        "succeeds",
        skip=2,
    ),
    P(
        "p-garble-list",
        Fault("garble", "GET", SNAP_LIST),
        "a snapshot listing page cut short",
        "fails closed",
        skip=2,
        after=600,
    ),
    P(
        "p-500-delete",
        Fault("status", "DELETE", SNAP_OBJECT),
        "a DELETE of a snapshot's object",
        "succeeds",
        skip=6,
    ),
    P(
        "p-lost-delete-answer",
        Fault("lose_answer", "DELETE", MANIFEST),
        "a manifest's DELETE applied, its answer lost",
        "succeeds",
        skip=2,
    ),
    P(
        "p-403-delete-manifest",
        Fault("status", "DELETE", MANIFEST, status=403, code="AccessDenied", times=0),
        "every manifest DELETE from the Nth on",
        "fails closed",
        skip=2,
    ),
    P(
        "p-403-get-kept-manifest",
        Fault(
            "status",
            "GET",
            f"/snapshots/{KEPT}/manifest\\.json$",
            status=403,
            code="AccessDenied",
            times=0,
        ),
        "every GET of a kept snapshot's manifest",
        "fails closed",
    ),
    P(
        "p-503-lock",
        Fault("status", None, LOCK, status=503, code="SlowDown", times=2),
        "the lock's reads and writes, twice in a row",
        "succeeds",
        skip=3,
    ),
    P(
        "p-kill-removal",
        Fault("stall", "DELETE", SNAP_OBJECT, seconds=STALL),
        "while removing snapshots (at the Nth DELETE)",
        "killed",
        skip=6,
    ),
    # -- dedup: prune, then chunk GC ------------------------------------------------
    # Since #20 chunk GC removes whole packs: a prune removes one or two, so the faults
    # on a pack DELETE are on the first.
    P(
        "pd-omit-kept-manifest",
        Fault("omit_key", "GET", SNAP_LIST, key=f"{KEPT}/manifest.json"),
        "a snapshot listing omits a kept snapshot's manifest",
        "succeeds",
        skip=2,
    ),
    P(
        "pd-404-kept-manifest",
        Fault("status", "GET", f"/snapshots/{KEPT}/manifest\\.json$", status=404, code="NoSuchKey"),
        "a kept snapshot's manifest, listed, answers 404 once",
        "succeeds",
    ),
    P(
        "pd-403-delete-manifest",
        Fault("status", "DELETE", MANIFEST, status=403, code="AccessDenied", times=0),
        "every manifest DELETE from the Nth on",
        "fails closed",
        skip=2,
    ),
    P(
        "pd-lost-chunk-delete-answer",
        Fault("lose_answer", "DELETE", CHUNK),
        "a chunk DELETE applied, its answer lost",
        "succeeds",
    ),
    P(
        "pd-403-delete-chunk",
        Fault("status", "DELETE", CHUNK, status=403, code="AccessDenied", times=0),
        "every chunk DELETE from the Nth on",
        "fails closed",
    ),
    P(
        "pd-503-chunk-list",
        Fault("status", "GET", CHUNK_LIST, status=503, code="SlowDown", times=3),
        "the chunk listing, three times in a row",
        "succeeds",
    ),
    P(
        "pd-omit-chunk-list",
        Fault("omit_key", "GET", CHUNK_LIST, key="/packs/"),
        "the chunk listing omits a chunk once",
        "succeeds",
    ),
    P(
        "pd-reset-index",
        Fault("reset_response", "GET", INDEX),
        "a kept snapshot's chunk index, reset after N bytes",
        "succeeds",
        after=300,
    ),
    P(
        "pd-403-get-index",
        Fault("status", "GET", INDEX, status=403, code="AccessDenied", times=0),
        "every GET of a kept snapshot's chunk index",
        "fails closed",
    ),
    P(
        "pd-kill-gc",
        Fault("stall", "DELETE", CHUNK, seconds=STALL),
        "while collecting chunks (at the Nth chunk DELETE)",
        "killed",
    ),
]


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[S3FaultProxy]:
    with fault_proxy(seaweed) as p:
        yield p


@pytest.mark.faults
@pytest.mark.parametrize("sc", [pytest.param(sc, id=sc.name) for sc in SCENARIOS])
def test_prune_fault(
    sc: PruneScenario, tmp_path: Path, keys: Keys, seaweed: SeaweedServer, proxy: S3FaultProxy
) -> None:
    # Two iterations where one injects a single fault at a seeded point that matters
    # (a kill; a fault that fails the run closed), one where the run rides it out.
    n = iterations(1 if sc.outcome == "succeeds" else 2)
    row = Row(sc.operation, sc.words, sc.injection, n, EXPECTED[sc.outcome])
    with recorded(row) as outcomes:
        bench = PruneBench(tmp_path, keys, seaweed, proxy, dedup=sc.dedup, size=2 * MiB)
        for i in range(n):
            prune_once(sc, bench, proxy, row, i, outcomes)
        bench.audit(row)


def prune_once(
    sc: PruneScenario,
    bench: PruneBench,
    proxy: S3FaultProxy,
    row: Row,
    i: int,
    outcomes: dict[str, int],
) -> None:
    bench.fill()
    rnd = seeded(sc.name, i)
    kept = rnd.choice(bench.kept())
    template = dataclasses.replace(
        sc.fault,
        target=sc.fault.target.replace(KEPT, re.escape(kept)),
        key=sc.fault.key.replace(KEPT, kept),
    )
    fault = faults_for(template, rnd, sc.skip, sc.after)
    what = f"{sc.name} iteration {i}"
    before = len(proxy.injected)
    proxy.add(fault)
    res: CliResult | None = None
    try:
        if sc.outcome == "killed":
            killed_mid_run(bench, proxy, before, what)
        else:
            res = bench.prune()
    finally:
        proxy.clear()
    hits = len(proxy.injected) - before
    row.injected += hits
    assert hits >= 1, f"{what}: the fault never fired ({fault})\n{res.output if res else ''}"
    if res is None:
        outcome = "killed"
        row.observed.append(f"kill {i + 1} left {left_by_kill(bench)}")
    elif res.returncode == 0:
        outcome = "succeeded"
    else:
        outcome = "failed closed"
        check_failure(bench, res, row, what)
        # One error line (stderr, not only --json's rows on stdout) says both.
        said = [ln for ln in res.stderr.splitlines() if ln.startswith(f"error: host {HOST}: ")]
        assert [ln for ln in said if f"s3://{bench.repo.bucket}/" in ln], (
            f"{what}: no error line names host {HOST} and the object:\n{res.stderr}"
        )
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if res is not None:
        assert "Traceback" not in res.output, res.output
    bench.check_after(row, res, what)  # what was kept, first: it is what matters most
    wanted = {"succeeds": "succeeded", "fails closed": "failed closed"}.get(sc.outcome, "killed")
    assert outcome == wanted, f"{what}: {outcome}, expected {wanted}:\n{res and res.output}"
    # The next ordinary prune, no manual step in between: it finishes the job.
    bench.check_converged(row, bench.prune(), what)


def killed_mid_run(bench: PruneBench, proxy: S3FaultProxy, before: int, what: str) -> None:
    """Start prune, SIGKILL it once the stall fault holds one of its requests."""
    proc = bench.start_prune()
    deadline = time.monotonic() + 300
    try:
        while len(proxy.injected) == before:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"{what}: prune ended before the kill point:\n{out}{err}")
            assert time.monotonic() < deadline, f"{what}: prune never reached the kill point"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            kill(proc)


def left_by_kill(bench: PruneBench) -> str:
    """What a killed prune left for the rerun, in words (for the report)."""
    keys = bench.repo.keys(f"{HOST}/")
    dirs = {k.split("/")[2] for k in keys if k.startswith(f"{HOST}/snapshots/")}
    partial = len(dirs - bench.committed())
    removed = len(set(bench.expected) - bench.committed())
    words = [f"{removed} snapshot(s) removed"]
    words += [f"{partial} without a manifest"] if partial else []
    words += ["the lock"] if any(k.startswith(f"{HOST}/locks/") for k in keys) else []
    return ", ".join(words)
