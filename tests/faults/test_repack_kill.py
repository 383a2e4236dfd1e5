"""Repack crash-safety (#20 item 3): ``drkit prune`` repacking mostly-garbage packs
($DRKIT_REPACK), killed with SIGKILL (its process group) at a seeded moment,
``$DRKIT_FAULTS_ITERATIONS`` times (default 3), into a local directory and SeaweedFS.

Each iteration backs up a new generation of the data (so that the snapshot retention
drops leaves its own chunks as garbage in packs still partly live), then prunes with
``keep_last = 1`` and any garbage share repacked, killed at a seeded moment. After
each kill: every listed snapshot verifies, the kept one restores equal to its data;
the next prune succeeds and converges (read from the bucket directly, not through
drkit: every stored pack is one a kept index names, followed through the move
records, and every such pack is there; no move record is stale; no lock is left).
Rows go to ``$DRKIT_FAULTS_REPORT`` like the other loops (docs/reliability.md is
generated from them by ``make faults``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.pipeline.chunk_index import read_index
from tests.conftest import Keys
from tests.faults.campaign import HOST, Bench, MiB, Row, iterations, recorded, seeded
from tests.faults.crash import interrupted, kill_point, no_traceback, startup
from tests.servers.seaweed import SeaweedServer

pytestmark = pytest.mark.faults

KILL = "kill -9 (drkit's process group)"


@pytest.fixture(params=["local", "s3"])
def maybe_seaweed(request: pytest.FixtureRequest) -> Iterator[SeaweedServer | None]:
    yield request.getfixturevalue("seaweed") if request.param == "s3" else None


def needed(bench: Bench) -> tuple[set[str], set[str]]:
    """What the committed snapshots need, read from the bucket on its own: pack keys
    (each index line's pack and offset followed through the move records) and the move
    records followed."""
    records: dict[tuple[str, str, int], tuple[str, int, str]] = {}
    for key in bench.repo.keys(f"{HOST}/moves/"):
        doc = json.loads(bench.repo.read(key))
        for old, entries in doc["moves"].items():
            for offset, _length, new, to in entries:
                records[(doc["set"], old, offset)] = (new, to, key)
    packs: set[str] = set()
    used: set[str] = set()
    for key in bench.repo.keys(f"{HOST}/snapshots/"):
        if not key.endswith("/manifest.json"):
            continue
        reader, refs = read_index(bench.repo.read(key.replace("manifest.json", "db/dump")), key)
        rset = reader.rset
        for ref in refs:
            assert ref.at is not None
            pack, offset = ref.at.pack, ref.at.offset
            while (rset, pack, offset) in records:
                pack, offset, record = records[(rset, pack, offset)]
                used.add(record)
            packs.add(f"{HOST}/packs/{rset}/{pack[:2]}/{pack}")
    return packs, used


def converged(bench: Bench) -> list[str]:
    packs, used = needed(bench)
    stored = set(bench.repo.keys(f"{HOST}/packs/"))
    problems = bench.nothing_partial()
    if stored - packs:
        problems.append(f"packs nothing needs: {sorted(stored - packs)}")
    if packs - stored:
        problems.append(f"packs needed but gone: {sorted(packs - stored)}")
    stale = set(bench.repo.keys(f"{HOST}/moves/")) - used
    if stale:
        problems.append(f"move records nothing follows: {sorted(stale)}")
    return problems


def test_kill_prune_while_it_repacks(
    tmp_path: Path, keys: Keys, maybe_seaweed: SeaweedServer | None
) -> None:
    where = "SeaweedFS" if maybe_seaweed else "local directory"
    n = iterations(3)
    row = Row(
        f"prune repacking packs (dedup, {where})",
        KILL,
        "a seeded moment of prune with $DRKIT_REPACK=0.01",
        n,
        "killed or done; listed snapshots verify, the kept one restores; the next prune "
        "completes the repack or removes its leftovers",
    )
    with recorded(row) as outcomes:
        bench = Bench(
            tmp_path,
            keys,
            maybe_seaweed,
            None,
            dedup=True,
            size=4 * MiB,
            retention="keep_last = 1",
        )
        bench.repo.env["DRKIT_REPACK"] = "0.01"
        assert bench.backup().returncode == 0
        bench.change()
        assert bench.backup().returncode == 0
        t0 = time.monotonic()
        first = bench.run("prune", "--json")
        window = time.monotonic() - t0
        assert first.returncode == 0, first.output
        repacked = json.loads(first.stdout)["results"][0]["packs_repacked"]
        start = startup()
        for i in range(n):
            rnd = seeded("repack", i)
            bench.change()
            res = bench.backup()
            assert res.returncode == 0, res.output
            kept = json.loads(res.stdout)["results"][0]["snapshot"]
            argv, env = bench.argv("prune", "--json")
            at = kill_point(rnd, window, start)
            records = set(bench.repo.keys(f"{HOST}/moves/"))
            killed, res = interrupted(argv, env, at)
            # A repack the killed prune committed (its move record is written) counts too:
            # the next prune then only removes the old packs and reports none repacked.
            repacked += len(set(bench.repo.keys(f"{HOST}/moves/")) - records)
            what = f"kill {i + 1} at {at:.2f} s"
            no_traceback(res)
            if killed:
                outcomes["killed"] = outcomes.get("killed", 0) + 1
                row.injected += 1
            else:
                outcomes["done before the kill"] = outcomes.get("done before the kill", 0) + 1
                assert res.returncode == 0, res.output
            listed = bench.listed()
            if kept not in listed:
                row.lost += 1
            ok = verified(bench)
            if set(listed) - ok:
                row.bad += len(set(listed) - ok)
                row.observed.append(f"{what}: listed but does not verify: {set(listed) - ok}")
            restored = bench.restore(kept)
            if restored.returncode != 0 or bench.out.read_bytes() != bench.expected[kept]:
                row.lost += 1
                row.observed.append(f"{what}: the kept snapshot does not restore equal")
            assert row.lost == row.bad == 0, f"{what}: {row.observed}\n{restored.output}"
            again = bench.run("prune", "--json")
            no_traceback(again)
            if again.returncode != 0:
                row.recovered = False
            assert again.returncode == 0, f"{what}: the next prune failed:\n{again.output}"
            repacked += json.loads(again.stdout)["results"][0]["packs_repacked"]
            problems = converged(bench)
            if problems:
                row.recovered = False
            assert not problems, f"{what}: not converged: {problems}\n{again.output}"
            row.observed.append(f"{what}: {'killed' if killed else 'done'}, converged")
            bench.expected = {kept: bench.expected[kept]}
        assert repacked > 0, "no prune repacked anything: the loop tested nothing"
        bench.audit(row)


def verified(bench: Bench) -> set[str]:
    res = bench.run("verify", "--all-snapshots", "--json")
    no_traceback(res)
    try:
        return {r["snapshot"] for r in json.loads(res.stdout).get("results", []) if r["ok"]}
    except ValueError:
        return set()
