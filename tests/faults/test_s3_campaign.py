"""The S3 part of the fault campaign (#19): backup, verify and restore, whole and dedup
repositories, under every fault the S3 proxy scripts (tests/servers/s3faults.py).

Each scenario runs ``$DRKIT_FAULTS_ITERATIONS`` times (default 2; 1 for the quick
ones, which `make test` runs) with seeded injection points ($DRKIT_FAULTS_SEED);
see tests/faults/campaign.py for the invariants. `make faults` runs them all and
writes docs/reliability.md from their rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.faults.campaign import (
    Bench,
    MiB,
    Row,
    check_failure,
    fault_words,
    faults_for,
    iterations,
    recorded,
    seeded,
)
from tests.servers.s3faults import Fault, S3FaultProxy, fault_proxy
from tests.servers.seaweed import SeaweedServer

ARTIFACT = r"/snapshots/[^/]+/db/dump"
# Chunks live in packs since #20 (``<host>/packs/``); one object per chunk before.
CHUNK = r"/(chunks|packs)/"


@dataclass(frozen=True)
class Scenario:
    name: str
    operation: str  # backup | verify | restore
    dedup: bool
    fault: Fault
    injection: str  # where, in words
    transient: bool | None  # True: retried, must succeed; False: must fail closed; None: either
    skip: int = 1  # the seeded injection point: after 0..skip-1 matching requests
    after: int = 1  # and, for body faults, after 0..after-1 bytes
    quick: bool = False  # also in `make test`

    @property
    def fault_words(self) -> str:
        return fault_words(self.fault)


def S(
    name: str, op: str, fault: Fault, where: str, transient: bool | None, **kw: object
) -> Scenario:
    return Scenario(name, op, name.startswith(("d-", "vd-", "rd-")), fault, where, transient, **kw)  # type: ignore[arg-type]


SCENARIOS = [
    # -- backup, whole artifacts (6 MiB: a two-part multipart upload) --------------
    S(
        "b-500-put",
        "backup",
        Fault("status", "PUT"),
        "any PUT (lock, parts, facts, manifest)",
        True,
        skip=6,
    ),
    S(
        "b-503-slowdown",
        "backup",
        Fault("status", "PUT", status=503, code="SlowDown", times=2),
        "any PUT, twice in a row",
        True,
        skip=6,
        quick=True,
    ),
    S(
        "b-500-part",
        "backup",
        Fault("status", "PUT", "partNumber="),
        "a multipart part",
        True,
        skip=2,
    ),
    S(
        "b-reset-part",
        "backup",
        Fault("reset_request", "PUT", "partNumber="),
        "a part's body, reset after N bytes",
        True,
        skip=2,
        after=5 * MiB,
    ),
    S(
        "b-reset-put-answer",
        "backup",
        Fault("reset_response", "PUT"),
        "any PUT's answer lost (the server did write)",
        True,
        skip=6,
    ),
    S(
        "b-reset-complete",
        "backup",
        Fault("reset_response", "POST", "uploadId="),
        "CompleteMultipartUpload's answer lost",
        True,
    ),
    S(
        "b-short-get",
        "backup",
        Fault("short_body", "GET", after=0),
        "any GET (marker, lock)",
        True,
        skip=2,
        after=40,
    ),
    S(
        "b-no-conditions",
        "backup",
        Fault("ignore_conditions", "PUT", times=0),
        "every conditional PUT (the lock)",
        True,
    ),
    S("b-latency", "backup", Fault("delay", "PUT", seconds=1.5), "any PUT", True, skip=6),
    S(
        "b-403-put",
        "backup",
        Fault("status", "PUT", status=403, code="AccessDenied", times=0),
        "every PUT from the Nth on",
        False,
        skip=6,
    ),
    S(
        "b-500-forever",
        "backup",
        Fault("status", "PUT", ARTIFACT, times=0),
        "every PUT of the artifact",
        False,
    ),
    S(
        "b-503-initiate",
        "backup",
        Fault("status", "POST", r"\?uploads", status=503, code="SlowDown"),
        "CreateMultipartUpload",
        True,
    ),
    S(
        "b-reset-manifest",
        "backup",
        Fault("reset_request", "PUT", "/manifest.json"),
        "the manifest's PUT (the commit), reset after N bytes",
        True,
        after=400,
    ),
    S(
        "b-403-manifest",
        "backup",
        Fault("status", "PUT", "/manifest.json", status=403, code="AccessDenied", times=0),
        "every PUT of the manifest (the commit)",
        False,
    ),
    # -- backup, dedup (chunks) ----------------------------------------------------
    # Since #20 chunks go into packs: a backup after the first writes its few new
    # chunks into one pack, so the fault is on the first pack PUT, within 4 KiB.
    S("d-500-chunk", "backup", Fault("status", "PUT", CHUNK), "a chunk PUT", True),
    S(
        "d-reset-chunk",
        "backup",
        Fault("reset_request", "PUT", CHUNK),
        "a chunk's body, reset after N bytes",
        True,
        after=4096,
    ),
    S(
        "d-reset-chunk-answer",
        "backup",
        Fault("reset_response", "PUT", CHUNK),
        "a chunk PUT's answer lost",
        True,
    ),
    S(
        "d-omit-chunk-list",
        "backup",
        Fault("omit_key", "GET", "list-type=2", key="/chunks/"),
        "the chunk listing omits a chunk once",
        True,
    ),
    S(
        "d-403-chunk",
        "backup",
        Fault("status", "PUT", CHUNK, status=403, code="AccessDenied", times=0),
        "every chunk PUT from the Nth on",
        False,
    ),
    # -- verify ----------------------------------------------------------------------
    S("v-500-get", "verify", Fault("status", "GET", ARTIFACT), "the artifact's GET", True),
    S(
        "v-503-get",
        "verify",
        Fault("status", "GET", status=503, code="SlowDown", times=3),
        "any GET, three in a row",
        True,
        skip=4,
    ),
    S(
        "v-reset-body",
        "verify",
        Fault("reset_response", "GET", ARTIFACT),
        "the artifact's body, reset after N bytes",
        True,
        after=6 * MiB,
    ),
    S(
        "v-short-body",
        "verify",
        Fault("short_body", "GET", ARTIFACT),
        "the artifact's body ends after N bytes",
        True,
        after=6 * MiB,
    ),
    S(
        "v-stall-body",
        "verify",
        Fault("stall_body", "GET", ARTIFACT, seconds=3),
        "the artifact's body stalls after N bytes",
        True,
        after=6 * MiB,
    ),
    S(
        "v-403-get",
        "verify",
        Fault("status", "GET", ARTIFACT, status=403, code="AccessDenied", times=0),
        "every GET of the artifact",
        False,
    ),
    S(
        "v-reset-forever",
        "verify",
        Fault("reset_response", "GET", ARTIFACT, times=0),
        "every GET of the artifact, reset mid-body",
        False,
        after=6 * MiB,
    ),
    S(
        "vd-reset-chunk",
        "verify",
        Fault("reset_response", "GET", CHUNK),
        "a chunk's body, reset after N bytes",
        True,
        skip=3,
        after=MiB,
    ),
    S(
        "vd-503-chunk",
        "verify",
        Fault("status", "GET", CHUNK, status=503, code="SlowDown"),
        "a chunk GET",
        True,
        skip=3,
    ),
    S(
        "vd-short-chunk",
        "verify",
        Fault("short_body", "GET", CHUNK),
        "a chunk's body ends after N bytes",
        True,
        skip=3,
        after=MiB,
    ),
    S(
        "v-omit-list",
        "verify",
        Fault("omit_key", "GET", "list-type=2", key="manifest.json"),
        "a listing omits a manifest once",
        None,
    ),
    # -- restore -----------------------------------------------------------------------
    S(
        "r-stall-body",
        "restore",
        Fault("stall_body", "GET", ARTIFACT, seconds=3),
        "the artifact's body stalls after N bytes",
        True,
        after=6 * MiB,
    ),
    S(
        "rd-short-chunk",
        "restore",
        Fault("short_body", "GET", CHUNK),
        "a chunk's body ends after N bytes",
        True,
        skip=3,
        after=MiB,
    ),
    S("r-500-get", "restore", Fault("status", "GET", ARTIFACT), "the artifact's GET", True),
    S(
        "r-reset-body",
        "restore",
        Fault("reset_response", "GET", ARTIFACT),
        "the artifact's body, reset after N bytes",
        True,
        after=6 * MiB,
        quick=True,
    ),
    S(
        "r-short-body",
        "restore",
        Fault("short_body", "GET", ARTIFACT),
        "the artifact's body ends after N bytes",
        True,
        after=6 * MiB,
    ),
    S(
        "r-omit-list",
        "restore",
        Fault("omit_key", "GET", "list-type=2", key="manifest.json"),
        "a listing omits a manifest once",
        None,
    ),
    S(
        "r-403-get",
        "restore",
        Fault("status", "GET", ARTIFACT, status=403, code="AccessDenied", times=0),
        "every GET of the artifact",
        False,
    ),
    S(
        "rd-reset-chunk",
        "restore",
        Fault("reset_response", "GET", CHUNK),
        "a chunk's body, reset after N bytes",
        True,
        skip=3,
        after=MiB,
    ),
    S("rd-500-chunk", "restore", Fault("status", "GET", CHUNK), "a chunk GET", True, skip=3),
    S(
        "rd-403-chunk",
        "restore",
        Fault("status", "GET", CHUNK, status=403, code="AccessDenied", times=0),
        "every chunk GET from the Nth on",
        False,
        skip=3,
    ),
]


def _param(sc: Scenario) -> object:
    return pytest.param(sc, id=sc.name, marks=() if sc.quick else (pytest.mark.faults,))


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[S3FaultProxy]:
    with fault_proxy(seaweed) as p:
        yield p


@pytest.mark.parametrize("sc", [_param(sc) for sc in SCENARIOS])
def test_s3_fault(
    sc: Scenario, tmp_path: Path, keys: Keys, seaweed: SeaweedServer, proxy: S3FaultProxy
) -> None:
    n = iterations(1 if sc.quick else 2)
    expected = {
        True: "retried: succeeds",
        False: "fails closed; next run succeeds",
        None: "succeeds, or fails closed; next run succeeds",
    }[sc.transient]
    row = Row(
        sc.operation + (" (dedup)" if sc.dedup else ""), sc.fault_words, sc.injection, n, expected
    )
    with recorded(row) as outcomes:
        size = (3 if sc.dedup else 6) * MiB
        bench = Bench(tmp_path, keys, seaweed, proxy, dedup=sc.dedup, size=size)
        if sc.operation != "backup":
            first = bench.backup()
            assert first.returncode == 0, first.output
        for i in range(n):
            run_once(sc, bench, proxy, row, i, outcomes)
        bench.audit(row)


def run_once(
    sc: Scenario, bench: Bench, proxy: S3FaultProxy, row: Row, i: int, outcomes: dict[str, int]
) -> None:
    rnd = seeded(sc.name, i)
    before = len(proxy.injected)
    snap = rnd.choice(sorted(bench.expected)) if bench.expected else ""
    fault = faults_for(sc.fault, rnd, sc.skip, sc.after)
    proxy.add(fault)
    try:
        if sc.operation == "backup":
            bench.change()
            res = bench.backup()
        elif sc.operation == "verify":
            res = bench.run("verify", "--snapshot", snap)
        else:
            res = bench.restore(snap)
            if res.returncode == 0:
                assert bench.out.read_bytes() == bench.expected[snap], "restored data differs"
    finally:
        proxy.clear()
    hits = len(proxy.injected) - before
    row.injected += hits
    assert hits >= 1, f"iteration {i}: the fault never fired ({fault})\n{res.output}"
    assert "Traceback" not in res.output, res.output
    if res.returncode == 0:
        outcomes["succeeded"] = outcomes.get("succeeded", 0) + 1
    else:
        outcomes["failed closed"] = outcomes.get("failed closed", 0) + 1
        check_failure(bench, res, row, f"{sc.name} iteration {i}")
    if sc.transient:  # (None: either outcome, checked above)
        assert res.returncode == 0, (
            f"{sc.name} iteration {i}: a transient fault failed the run:\n{res.output}"
        )
    elif sc.transient is False:
        assert res.returncode == 1, (
            f"{sc.name} iteration {i}: expected to fail closed:\n{res.output}"
        )
    left = bench.nothing_partial()
    assert not left, left
    # The next ordinary run, no manual step in between.
    if sc.operation == "backup":
        bench.change()
        again = bench.backup()
    elif sc.operation == "verify":
        again = bench.run("verify", "--snapshot", snap)
    else:
        again = bench.restore(snap)
    if again.returncode != 0:
        row.recovered = False
    assert again.returncode == 0, again.output
    if sc.operation == "restore":
        assert bench.out.read_bytes() == bench.expected[snap]
