"""Pruning provider snapshots, on each provider's fake: only drkit's own are ever deleted."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from drkit.actions.provider_snapshot import (
    plan_retention,
    prune_provider_snapshots,
    source_rules,
)
from drkit.providers.base import Owner, ProviderSnapshot
from drkit.retention import Policy as RetentionRules
from tests.providers.conftest import (
    HOST,
    NOW,
    RESOURCE,
    SOURCE,
    EnvFactory,
    make_policy,
    snapshot_source,
)
from tests.providers.fake_digitalocean import FakeDigitalOcean
from tests.providers.fake_hetzner import FakeHetzner
from tests.providers.fake_http import FakeApi
from tests.providers.fake_vultr import FakeVultr

OWNER = Owner(HOST, SOURCE)


def seed(api: FakeApi, kind: str, name: str, age_days: float, labels: dict[str, str]) -> str:
    """One existing snapshot on the fake; ``labels`` only where the provider has them."""
    created = NOW - dt.timedelta(days=age_days)
    if isinstance(api, FakeDigitalOcean):
        return str(api.add_snapshot(int(RESOURCE[kind]), name, created))
    if isinstance(api, FakeVultr):
        return api.add_snapshot(name, created)
    assert isinstance(api, FakeHetzner)
    return str(api.add_image(int(RESOURCE[kind]), name, created, labels))


def own_name(age_days: float) -> str:
    return OWNER.snapshot_name(NOW - dt.timedelta(days=age_days))


def delete_path(kind: str, sid: str) -> str:
    return {"digitalocean": "/v2/snapshots/", "vultr": "/v2/snapshots/", "hetzner": "/v1/images/"}[
        kind
    ] + sid


@pytest.mark.parametrize(
    ("rules", "why_newest"),
    [
        ({"keep_last": 1}, "last 1 of 1"),
        ({"keep_within": "5d"}, "within 5d of the newest"),
    ],
)
def test_five_snapshots_two_not_drkits_those_two_untouched(
    kind: str,
    any_api: FakeApi,
    env_for: EnvFactory,
    rules: dict[str, Any],
    why_newest: str,
) -> None:
    own_labels = OWNER.labels()
    newest = seed(any_api, kind, own_name(1), 1, own_labels)
    older = seed(any_api, kind, own_name(10), 10, own_labels)
    oldest = seed(any_api, kind, own_name(20), 20, own_labels)
    # Not drkit's: one made by hand (oldest of all), one made by drkit for another host.
    by_hand = seed(any_api, kind, "backup-20240101", 400, {})
    other = Owner("other-host", SOURCE)
    other_host = seed(
        any_api, kind, other.snapshot_name(NOW - dt.timedelta(30)), 30, other.labels()
    )
    env = env_for(any_api, kind, retention=rules)
    rule = ", ".join(f"{k}={v}" for k, v in rules.items())

    report = prune_provider_snapshots(env.policy, env.source, now=NOW, connect=env.connect)

    assert report.ok
    assert sorted(d.snapshot.id for d in report.removed) == sorted([older, oldest])
    assert all(d.reasons == [f"matched no rule ({rule})"] for d in report.removed)
    kept = {d.snapshot.id: d.reasons for d in report.kept}
    assert kept == {
        newest: [why_newest, "newest complete snapshot"],
        by_hand: ["not made by drkit for this host and source"],
        other_host: ["not made by drkit for this host and source"],
    }
    deletes = any_api.calls("DELETE")
    assert sorted(r.path for r in deletes) == sorted(delete_path(kind, s) for s in (older, oldest))
    assert all(r.status == 204 for r in deletes)
    left = {s.id for s in env.provider().list_all()}
    assert {by_hand, other_host, newest} <= left and not {older, oldest} & left


def test_dry_run_deletes_nothing_and_says_what_it_would(
    kind: str, any_api: FakeApi, env_for: EnvFactory
) -> None:
    for age in (1, 3, 9):
        seed(any_api, kind, own_name(age), age, OWNER.labels())
    env = env_for(any_api, kind, retention={"keep_within": "7d"})
    lines: list[str] = []
    report = prune_provider_snapshots(
        env.policy, env.source, dry_run=True, now=NOW, connect=env.connect, log=lines.append
    )
    assert [d.snapshot.name for d in report.removed] == [own_name(9)]
    assert report.removed[0].reasons == ["matched no rule (keep_within=7d)"]
    assert any_api.calls("DELETE") == []
    assert len(lines) == 1 and "would delete snapshot" in lines[0]


def test_arguments_override_the_source_retention(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    ids = [seed(do_api, "digitalocean", own_name(a), a, {}) for a in (1, 2, 3)]
    env = env_for(do_api, "digitalocean", retention={"keep_last": 5})
    report = prune_provider_snapshots(
        env.policy, env.source, keep_last=2, now=NOW, connect=env.connect
    )
    assert [d.snapshot.id for d in report.removed] == [ids[2]]


def test_a_failed_delete_is_reported_and_the_rest_go_on(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    newest, middle, oldest = (seed(vultr_api, "vultr", own_name(a), a, {}) for a in (1, 2, 3))
    env = env_for(vultr_api, "vultr", retention={"keep_last": 1})
    refusal = {"error": "Snapshot is locked.", "status": 403}
    vultr_api.inject((403, {}, refusal), method="DELETE")

    report = prune_provider_snapshots(env.policy, env.source, now=NOW, connect=env.connect)

    assert not report.ok
    assert [d.snapshot.id for d in report.removed] == [oldest]
    [(failed, why)] = report.failed
    assert failed.snapshot.id == middle
    assert why == (
        f"host {HOST}: source {SOURCE}: vultr instance {RESOURCE['vultr']}: "
        f"delete snapshot {middle}: HTTP 403: Snapshot is locked."
    )
    assert set(vultr_api.snapshots) == {newest, middle}


def _snap(name: str, age_days: float, status: str = "complete") -> ProviderSnapshot:
    return ProviderSnapshot(
        id=name, name=name, size_gb=1.0, created=NOW - dt.timedelta(days=age_days), status=status
    )


def test_retention_rules_are_a_pure_function() -> None:
    snaps = [
        _snap(own_name(0.5), 0.5, status="pending"),
        _snap(own_name(1), 1),
        _snap(own_name(5), 5),
        _snap(own_name(30), 30),
        _snap("manual", 90),
    ]

    def plan(**rules: Any) -> dict[str, tuple[bool, list[str]]]:
        decisions = plan_retention(snaps, OWNER, RetentionRules(**rules), NOW)
        assert len(decisions) == len(snaps)
        return {d.snapshot.id: (d.keep, d.reasons) for d in decisions}

    nothing = plan()
    assert all(keep for keep, _ in nothing.values())
    assert nothing[own_name(5)] == (True, ["no retention rule set: keep everything"])
    assert nothing["manual"] == (True, ["not made by drkit for this host and source"])

    within = plan(keep_within="2d")
    assert [i for i, (keep, _) in within.items() if not keep] == [own_name(5), own_name(30)]
    assert within[own_name(0.5)][0]  # unfinished: never removed

    # A rule that matches nothing: the newest complete snapshot survives anyway.
    strict = plan(keep_within="1h")
    assert strict[own_name(1)] == (True, ["newest complete snapshot"])
    assert strict[own_name(0.5)][1][-1] == "not complete (pending)"
    assert sum(keep for keep, _ in strict.values()) == 3  # pending, newest, manual

    # Calendar rules apply as for data snapshots.
    assert plan(keep_daily=2)[own_name(5)][0] and not plan(keep_daily=2)[own_name(30)][0]


def test_arguments_and_source_retention_make_the_rules() -> None:
    policy = make_policy("vultr", retention={"keep_last": 4, "keep_weekly": 3})
    source = snapshot_source(policy)
    assert source_rules(source) == RetentionRules(keep_last=4, keep_weekly=3)
    assert source_rules(source, 1, "3d") == RetentionRules(
        keep_last=1, keep_weekly=3, keep_within="3d"
    )
    assert source_rules(snapshot_source(make_policy("vultr"))) == RetentionRules()


@pytest.mark.parametrize(
    "name",
    [
        "drkit:host=web:source=machine:20250301T040700Z-copy",
        "drkit:host=web:source=machine2:20250301T040700Z",
        "drkit:host=web2:source=machine:20250301T040700Z",
        "xdrkit:host=web:source=machine:20250301T040700Z",
        "drkit:host=web:source=machine:2025-03-01",
    ],
)
def test_look_alike_names_are_not_drkits(name: str) -> None:
    assert not OWNER.owns(_snap(name, 1))


def test_labels_must_match_where_the_provider_has_them() -> None:
    name = own_name(1)
    base = _snap(name, 1)
    assert OWNER.owns(base)  # no labels at all: DigitalOcean, Vultr
    labelled = ProviderSnapshot(base.id, name, 1.0, base.created, "complete", OWNER.labels())
    assert OWNER.owns(labelled)
    stripped = ProviderSnapshot(base.id, name, 1.0, base.created, "complete", {})
    assert not OWNER.owns(stripped)
